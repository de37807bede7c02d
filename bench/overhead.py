"""Per-trial overhead of tunefleet's local runner against plain Optuna, on the same storage type.

    .venv/bin/python bench/overhead.py [--trials 200] [--parallel 2]

Both run the same ~0.5 s objective with TPE, the same number of trials and processes, on an
embedded SQLite file, each timed from the study's creation to the last process's end. Slot time
is wall time x processes; overhead is slot time outside the objective, per trial. The target:
tunefleet's overhead at most 1.5x Optuna's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.objectives import half_second_training  # noqa: E402


def _optuna_process(storage_url: str, trials: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="bench", storage=storage_url)
    study.optimize(half_second_training, n_trials=trials)


def run_plain_optuna(
    directory: Path, trials: int, parallel: int
) -> tuple[float, list[optuna.trial.FrozenTrial]]:
    storage_url = f"sqlite:///{directory / 'optuna.db'}"
    # Timed from the study's creation, as ``tunefleet run`` is (it creates the study itself).
    started = time.perf_counter()
    optuna.create_study(study_name="bench", storage=storage_url, sampler=optuna.samplers.TPESampler(seed=1))
    shares = [trials // parallel + (1 if i < trials % parallel else 0) for i in range(parallel)]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_optuna_process, args=(storage_url, n)) for n in shares]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    wall = time.perf_counter() - started
    return wall, optuna.load_study(study_name="bench", storage=storage_url).get_trials()


def run_tunefleet(
    directory: Path, trials: int, parallel: int
) -> tuple[float, list[optuna.trial.FrozenTrial]]:
    from controller.local.runner import LocalRunner, RunOptions
    from controller.spec import parse_study_text

    document = {
        "apiVersion": "tunefleet.dev/v1alpha1",
        "kind": "Study",
        "metadata": {"name": "bench"},
        "spec": {
            "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
            "searchSpace": {
                "x": {"type": "float", "low": -5.0, "high": 5.0},
                "width": {"type": "int", "low": 8, "high": 64},
            },
            # Optuna's default TPE, so both sides sample alike.
            "strategy": {
                "sampler": "tpe",
                "pruner": "none",
                "seed": 1,
                "settings": {"multivariate": False, "group": False, "constant_liar": False},
            },
            "budget": {"maxTrials": trials},
            "parallelism": parallel,
            "trial": {"python": "bench.objectives:half_second_training", "maxDuration": "1m"},
        },
    }
    manifest = parse_study_text(yaml.safe_dump(document))
    storage_url = f"sqlite:///{directory / 'tunefleet.db'}"
    options = RunOptions(
        storage_url=storage_url, workdir=str(REPO_ROOT), log_dir=directory / "logs", show_progress=False
    )
    started = time.perf_counter()
    LocalRunner(manifest, options).run()
    wall = time.perf_counter() - started
    return wall, optuna.load_study(study_name="bench", storage=storage_url).get_trials()


def figures(wall: float, trials: list[optuna.trial.FrozenTrial], parallel: int) -> tuple[float, float, int]:
    inside = sum(float(t.user_attrs.get("objective_s", 0.0)) for t in trials)
    slot = wall * parallel
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    return (slot - inside) / max(done, 1), inside / slot, done


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunefleet-bench-") as tmp:
        directory = Path(tmp)
        print(
            f"{args.trials} trials of a ~0.5 s objective, {args.parallel} processes, SQLite storage",
            flush=True,
        )
        optuna_wall, optuna_trials = run_plain_optuna(directory, args.trials, args.parallel)
        tunefleet_wall, tunefleet_trials = run_tunefleet(directory, args.trials, args.parallel)
    rows = [
        ("optuna study.optimize", optuna_wall, *figures(optuna_wall, optuna_trials, args.parallel)),
        ("tunefleet run (warm)", tunefleet_wall, *figures(tunefleet_wall, tunefleet_trials, args.parallel)),
    ]
    print(f"{'system':<24}{'trials':>8}{'wall s':>10}{'overhead/trial s':>18}{'inside objective':>18}")
    for name, wall, overhead, inside, done in rows:
        print(f"{name:<24}{done:>8}{wall:>10.1f}{overhead:>18.3f}{inside:>17.1%}")
    ratio = rows[1][2] / rows[0][2] if rows[0][2] > 0 else float("inf")
    verdict = "meets" if ratio <= 1.5 else "misses"
    print(f"overhead ratio tunefleet/optuna: {ratio:.2f} ({verdict} the 1.5x target)")


if __name__ == "__main__":
    main()
