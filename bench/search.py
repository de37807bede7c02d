"""Which search reaches a good configuration first: Optuna's own loop against ``tunefleet run``.

    .venv/bin/python bench/search.py [--seeds 8] [--budget 45] [--methods NAME ...]

Every method tunes the task of ``bench/search_task.py`` (a numpy MLP, 9 hyperparameters, 30
epochs reported, trials from ~0.05 s to several seconds) with 2 worker processes on an embedded
SQLite file, for the same wall budget counted from the launch of its first process. Optuna's side
is ``study.optimize`` in 2 processes (a fresh interpreter creates the study, then forks the
second; each process seeds its sampler differently, as Optuna's docs advise); tunefleet's side is
``tunefleet run`` on a Study spec. At the budget the Optuna processes are killed and tunefleet is
interrupted (it stops its trials); only trials finished by then count.

Per seed the methods run one after the other, in an order rotated per seed, so the load of this
shared machine falls on all of them alike; the load average is printed with the figures. Printed
per method: the final best value (median and interquartile range over seeds), the median time to
two quality thresholds (with how many seeds reached them; a seed that did not counts as the whole
budget), epochs trained (intermediate values reported), and trials completed and pruned.

With the defaults (8 seeds, 45 s, 5 methods) a run takes about 33 minutes on 2 cores. ``--seeds 2
--budget 20`` gives a rough picture in 4 minutes while iterating; ``--methods`` picks methods
(``--list`` shows them all, including variants that isolate one cause).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.search_task import EPOCHS, METRIC, SEARCH_SPACE  # noqa: E402

THRESHOLDS = (0.7, 0.8)
STUDY = "search-bench"
MAX_DURATION = "60s"  # what a user would write for trials that take up to ~10 s
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STOP_GRACE_S = 15.0


@dataclass(frozen=True)
class Method:
    """One way to search: Optuna's loop with a sampler and pruner, or a tunefleet strategy."""

    name: str
    system: str  # "optuna" or "tunefleet"
    sampler: str
    pruner: str
    strategy: dict[str, Any] = field(default_factory=dict)  # tunefleet: extra strategy fields
    objective: dict[str, Any] = field(default_factory=dict)  # tunefleet: extra objective fields
    default: bool = True


METHODS = [
    Method("optuna tpe+hyperband", "optuna", "tpe", "hyperband"),
    Method("optuna tpe", "optuna", "tpe", "none"),
    Method("optuna random", "optuna", "random", "none"),
    Method("tunefleet tpe+hyperband", "tunefleet", "tpe", "hyperband", objective={"steps": EPOCHS}),
    Method("tunefleet auto", "tunefleet", "auto", "auto", objective={"steps": EPOCHS}),
    # Variants that isolate one cause (not run by default).
    Method("tunefleet auto, no steps", "tunefleet", "auto", "auto", default=False),
    Method(
        "tunefleet tpe, no pruning", "tunefleet", "tpe", "none", objective={"steps": EPOCHS}, default=False
    ),
    Method("tunefleet tpe+hyperband, no steps", "tunefleet", "tpe", "hyperband", default=False),
    Method(
        "tunefleet auto, cost-aware off",
        "tunefleet",
        "auto",
        "auto",
        strategy={"costAware": False},
        objective={"steps": EPOCHS},
        default=False,
    ),
    Method(
        "tunefleet tpe+hyperband, cost-aware",
        "tunefleet",
        "tpe",
        "hyperband",
        strategy={"costAware": True},
        objective={"steps": EPOCHS},
        default=False,
    ),
    Method(
        "tunefleet tpe+hyperband, Optuna's TPE",
        "tunefleet",
        "tpe",
        "hyperband",
        # TPESampler's own defaults, in place of tunefleet's (multivariate, group, constant liar).
        strategy={"settings": {"multivariate": False, "group": False, "constant_liar": False}},
        objective={"steps": EPOCHS},
        default=False,
    ),
]
BY_NAME = {m.name: m for m in METHODS}


@dataclass(frozen=True)
class Outcome:
    best: float | None
    to_threshold: tuple[float | None, ...]
    first_start: float | None  # seconds from launch to the first trial's start: start-up cost
    epochs: int
    completed: int
    pruned: int
    strategy: str


# -- Optuna's own loop ---------------------------------------------------------------------------


def _optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """The same SQLite settings tunefleet uses (lock timeout, write-ahead log)."""
    from controller.studies.storage import use_write_ahead_log

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    use_write_ahead_log(storage.engine)
    return storage


def _optuna_worker(sampler: str, pruner: str, seed: int, url: str, deadline: float) -> None:
    from bench.search_task import objective

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    pruners = {"hyperband": optuna.pruners.HyperbandPruner, "none": optuna.pruners.NopPruner}
    study = optuna.load_study(
        study_name=STUDY,
        storage=_optuna_storage(url),
        sampler=samplers[sampler](seed=seed),
        pruner=pruners[pruner](),
    )
    study.optimize(objective, timeout=max(0.0, deadline - time.time()))


def optuna_loop(sampler: str, pruner: str, seed: int, url: str, deadline: float) -> None:
    """What a user of Optuna runs: create the study, then ``study.optimize`` in 2 processes."""
    storage = _optuna_storage(url)
    optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    storage.engine.dispose()
    context = multiprocessing.get_context("fork")
    other = context.Process(target=_optuna_worker, args=(sampler, pruner, seed * 1000 + 1, url, deadline))
    other.start()
    _optuna_worker(sampler, pruner, seed * 1000, url, deadline)
    other.join()


# -- tunefleet -----------------------------------------------------------------------------------


def study_document(method: Method, seed: int, budget_s: float) -> dict[str, Any]:
    return {
        "apiVersion": "tunefleet.dev/v1alpha1",
        "kind": "Study",
        "metadata": {"name": STUDY},
        "spec": {
            "objective": {"metrics": [{"name": METRIC, "direction": "maximize"}], **method.objective},
            "searchSpace": SEARCH_SPACE,
            "strategy": {"sampler": method.sampler, "pruner": method.pruner, "seed": seed, **method.strategy},
            # Counted from the study's creation, a little after the process started; the bench
            # interrupts it at the budget counted from the launch.
            "budget": {"deadline": f"{round(budget_s)}s"},
            "parallelism": 2,
            "trial": {"python": "bench.search_task:objective", "maxDuration": MAX_DURATION, "maxRetries": 0},
        },
    }


# -- one run -------------------------------------------------------------------------------------


def run_once(method: Method, seed: int, budget_s: float, directory: Path) -> Outcome:
    url = f"sqlite:///{directory / 'study.db'}"
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    began = time.time()
    if method.system == "optuna":
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--optuna-loop",
            json.dumps([method.sampler, method.pruner, seed, url, began + budget_s]),
        ]
        stop = signal.SIGKILL
    else:
        spec = directory / "study.yaml"
        spec.write_text(yaml.safe_dump(study_document(method, seed, budget_s)), encoding="utf-8")
        tunefleet = Path(sys.executable).with_name("tunefleet")
        argv = [str(tunefleet), "run", str(spec), "--storage", url, "--quiet", "--workdir", str(REPO)]
        stop = signal.SIGINT  # tunefleet stops its running trials, then exits
    with open(directory / "run.log", "wb") as log:
        process = subprocess.Popen(
            argv, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, began + budget_s - time.time()))
        if process.poll() is None:
            os.killpg(process.pid, stop)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return _outcome(url, began, budget_s)


def _outcome(url: str, began: float, budget_s: float) -> Outcome:
    study = optuna.load_study(study_name=STUDY, storage=url)
    trials = study.get_trials(deepcopy=False)
    in_time = [
        t
        for t in trials
        if t.datetime_complete is not None and t.datetime_complete.timestamp() - began <= budget_s
    ]
    complete = sorted(
        (t for t in in_time if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None),
        key=lambda t: t.datetime_complete,  # type: ignore[arg-type, return-value]
    )
    to_threshold: list[float | None] = []
    for threshold in THRESHOLDS:
        first = next((t for t in complete if (t.value or 0.0) >= threshold), None)
        to_threshold.append(None if first is None else first.datetime_complete.timestamp() - began)  # type: ignore[union-attr]
    starts = [t.datetime_start.timestamp() - began for t in trials if t.datetime_start is not None]
    revisions = study.user_attrs.get("tunefleet.strategy_revisions") or []
    used = revisions[-1] if revisions else study.user_attrs.get("tunefleet.strategy") or {}
    strategy = f"{used.get('sampler')}/{used.get('pruner')}" if used else ""
    if used.get("costAware"):
        strategy += " cost-aware"
    return Outcome(
        best=max((t.value for t in complete if t.value is not None), default=None),
        to_threshold=tuple(to_threshold),
        first_start=min(starts, default=None),
        # Every epoch reported was trained before the stop (trials cut off at it included).
        epochs=sum(len(t.intermediate_values) for t in trials),
        completed=len(complete),
        pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in in_time),
        strategy=strategy,
    )


# -- the table -----------------------------------------------------------------------------------


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def print_table(rows: dict[str, list[Outcome]], budget_s: float, seeds: int, loads: list[float]) -> None:
    print(
        f"bench/search.py: {seeds} seeds, {budget_s:.0f} s wall budget per run from process start, "
        f"2 worker processes, SQLite; load average during the runs {min(loads):.1f}-{max(loads):.1f} "
        f"(mean {statistics.mean(loads):.1f}) on {os.cpu_count()} cores"
    )
    t1, t2 = THRESHOLDS
    header = (
        f"{'method':38} {'final best: median [IQR]':>26} {f'to {t1}: median':>15} {'reached':>7} "
        f"{f'to {t2}: median':>15} {'reached':>7} {'1st start':>9} {'epochs':>7} {'done':>5} "
        f"{'pruned':>6}  strategy"
    )
    print(header)
    print("-" * len(header))
    for name, outcomes in rows.items():
        bests = [o.best if o.best is not None else -1.0 for o in outcomes]
        q1, median, q3 = _quartiles(bests)
        cells = []
        for i in range(len(THRESHOLDS)):
            times = [o.to_threshold[i] for o in outcomes]
            reached = sum(t is not None for t in times)
            middle = statistics.median([t if t is not None else budget_s for t in times])
            shown = f"{middle:.1f} s" if reached * 2 > len(times) else f">{budget_s:.0f} s"
            cells.append(f"{shown:>15} {reached:>3}/{len(times):<3}")
        starts = [o.first_start for o in outcomes if o.first_start is not None]
        first_start = f"{statistics.median(starts):.1f} s" if starts else "-"
        epochs = statistics.mean(o.epochs for o in outcomes)
        completed = statistics.mean(o.completed for o in outcomes)
        pruned = statistics.mean(o.pruned for o in outcomes)
        used = ",".join(sorted({o.strategy for o in outcomes if o.strategy}))
        print(
            f"{name:38} {median:>9.3f} [{q1:.3f}, {q3:.3f}] {cells[0]} {cells[1]} "
            f"{first_start:>9} {epochs:>7.0f} {completed:>5.0f} {pruned:>6.0f}  {used}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=45.0, help="wall seconds per run")
    parser.add_argument(
        "--methods", nargs="+", metavar="NAME", help="methods to run (default: the main five)"
    )
    parser.add_argument("--list", action="store_true", help="list the methods and exit")
    parser.add_argument("--keep", type=Path, help="keep each run's directory (study, logs) under this one")
    parser.add_argument("--optuna-loop", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.optuna_loop:
        optuna_loop(*json.loads(args.optuna_loop))
        return 0
    if args.list:
        for method in METHODS:
            print(f"{method.name}{'' if method.default else '  (variant)'}")
        return 0
    unknown = [n for n in args.methods or [] if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; --list shows them")
    methods = [BY_NAME[n] for n in args.methods] if args.methods else [m for m in METHODS if m.default]
    # A bench started in the background inherits SIGINT ignored, and so would tunefleet: restore it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows: dict[str, list[Outcome]] = {m.name: [] for m in methods}
    loads: list[float] = []
    started = time.monotonic()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        shift = seed % len(methods)
        for method in methods[shift:] + methods[:shift]:
            loads.append(os.getloadavg()[0])
            if args.keep:
                directory = args.keep / f"seed{seed}-{method.name.replace(' ', '_').replace(',', '')}"
                directory.mkdir(parents=True, exist_ok=True)
                outcome = run_once(method, seed, args.budget, directory)
            else:
                with tempfile.TemporaryDirectory(prefix="tunefleet-search-") as tmp:
                    outcome = run_once(method, seed, args.budget, Path(tmp))
            rows[method.name].append(outcome)
            reached = ", ".join("-" if t is None else f"{t:.1f}" for t in outcome.to_threshold)
            best = outcome.best if outcome.best is not None else float("nan")
            print(
                f"  seed {seed} {method.name:38} best {best:.3f}"
                f"  to thresholds {reached}  epochs {outcome.epochs}  load {loads[-1]:.1f}"
                f"  ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    print_table(rows, args.budget, args.seeds, loads)
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
