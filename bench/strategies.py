"""Strategies compared on the quickstart task under an equal CPU-second budget.

The quickstart objective (a PyTorch MLP on scikit-learn's digits, 20 epochs reported as
intermediate values, so epochs are the fidelity Hyperband prunes on) runs as a real local study
(``LocalRunner``, parallelism 2, an embedded SQLite file per run) for each strategy and seed, all
with the same ``budget.cpuHours``. It prints, per strategy, the best validation accuracy reached
(mean and standard deviation over seeds) and the CPU-seconds spent when a trial first reached
0.97 (mean over the seeds that reached it).

Run: ``.venv/bin/python bench/strategies.py [--seeds 3] [--cpu-seconds 120]`` (about 8 minutes on
2 cores with the defaults).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.budget.ledger import Ledger  # noqa: E402
from controller.local.runner import LocalRunner, RunOptions  # noqa: E402
from controller.spec import parse_study_text  # noqa: E402

TARGET = 0.97
STRATEGIES: dict[str, dict[str, Any]] = {
    "auto": {"sampler": "auto", "pruner": "auto"},
    "random": {"sampler": "random", "pruner": "none"},
    "tpe (Optuna default, no pruning)": {
        "sampler": "tpe",
        "pruner": "none",
        "settings": {"multivariate": False, "group": False},
    },
    "tpe + hyperband": {"sampler": "tpe", "pruner": "hyperband"},
}


@dataclass(frozen=True)
class Outcome:
    best: float
    cpu_seconds_to_target: float | None
    trials: int
    pruned: int
    strategy_used: str


def study_document(strategy: dict[str, Any], seed: int, cpu_seconds: int) -> dict[str, Any]:
    source = yaml.safe_load((REPO / "examples/quickstart/study.yaml").read_text(encoding="utf-8"))
    spec = source["spec"]
    spec["strategy"] = {**strategy, "seed": seed}
    spec["budget"] = {"cpuHours": cpu_seconds / 3600}
    spec["parallelism"] = 2
    spec["trial"]["maxDuration"] = "20s"  # the worst case each trial reserves (+5 s grace)
    spec["trial"]["maxRetries"] = 0
    return source


def run_once(strategy: dict[str, Any], seed: int, cpu_seconds: int, workdir: Path) -> Outcome:
    manifest = parse_study_text(yaml.safe_dump(study_document(strategy, seed, cpu_seconds)))
    url = f"sqlite:///{workdir / 'study.db'}"
    options = RunOptions(storage_url=url, workdir=str(REPO), log_dir=workdir / "logs", show_progress=False)
    LocalRunner(manifest, options).run()
    study = optuna.load_study(study_name=manifest.metadata.name, storage=url)
    ledger = Ledger(url)
    try:
        charges = ledger.charges_by_trial(manifest.metadata.name)
    finally:
        ledger.close()
    finished = sorted(
        (t for t in study.get_trials() if t.datetime_complete is not None),
        key=lambda t: (t.datetime_complete, t.number),
    )
    spent = 0.0
    to_target: float | None = None
    for trial in finished:
        spent += charges[trial.number].cpu_seconds if trial.number in charges else 0
        if to_target is None and trial.state.name == "COMPLETE" and (trial.value or 0.0) >= TARGET:
            to_target = spent
    complete = [t.value for t in finished if t.state.name == "COMPLETE" and t.value is not None]
    revisions = study.user_attrs.get("tunefleet.strategy_revisions") or []
    used = revisions[-1] if revisions else study.user_attrs.get("tunefleet.strategy", {})
    return Outcome(
        best=max(complete, default=0.0),
        cpu_seconds_to_target=to_target,
        trials=len(finished),
        pruned=sum(t.state.name == "PRUNED" for t in finished),
        strategy_used=f"{used.get('sampler')}/{used.get('pruner')}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cpu-seconds", type=int, default=120)
    parser.add_argument("--only", choices=list(STRATEGIES), help="run one strategy")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    began = time.monotonic()
    rows = []
    for name, strategy in STRATEGIES.items():
        if args.only and name != args.only:
            continue
        outcomes = []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory(prefix="tunefleet-bench-") as tmp:
                outcomes.append(run_once(strategy, seed, args.cpu_seconds, Path(tmp)))
        rows.append((name, outcomes))
        print(f"  done: {name} ({time.monotonic() - began:.0f} s)", file=sys.stderr)
    print(
        f"quickstart digits MLP, {args.cpu_seconds} CPU-seconds per study, parallelism 2, "
        f"seeds 0..{args.seeds - 1}"
    )
    header = (
        f"{'strategy':34} {'best val acc':>16} {'CPU-s to 0.97':>16} {'reached':>8} "
        f"{'trials':>7} {'pruned':>7}  used"
    )
    print(header)
    print("-" * len(header))
    for name, outcomes in rows:
        bests = [o.best for o in outcomes]
        spread = statistics.stdev(bests) if len(bests) > 1 else 0.0
        reached = [o.cpu_seconds_to_target for o in outcomes if o.cpu_seconds_to_target is not None]
        to_target = f"{statistics.mean(reached):.0f}" if reached else "-"
        trials = statistics.mean(o.trials for o in outcomes)
        pruned = statistics.mean(o.pruned for o in outcomes)
        used = ",".join(sorted({o.strategy_used for o in outcomes}))
        print(
            f"{name:34} {statistics.mean(bests):>9.4f} ± {spread:.4f} {to_target:>16} "
            f"{len(reached):>4}/{len(outcomes):<3} {trials:>7.1f} {pruned:>7.1f}  {used}"
        )
    print(f"total {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
