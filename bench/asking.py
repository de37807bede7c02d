"""What asking one trial costs the process that asks, and what reading trials costs anyone.

    .venv/bin/python -m bench.asking [--trials 500] [--asks 60]

Builds a study like the ones ``bench/search.py`` leaves behind (the search task's 9 parameters,
one conditional, each trial with 30 intermediate values, most pruned), on an SQLite file, then
times in one run:

- asking one trial as the local runner and the operator ask it (``ask_new_trial``, tunefleet's
  TPE: multivariate, grouped, constant liar), through Optuna's own storage stack
  (``_CachedStorage`` over ``RDBStorage``), with one read per ask (``AskingStorage``), and with
  reads done in SQL Core as well (``CoreReadStorage``, what tunefleet opens); two trials are
  kept running, as with parallelism 2;
- one read of the trials through ``RDBStorage._get_trials`` (the ORM) and through
  ``trial_reads.read_trials``: the whole study, and the incremental read Optuna's cache makes
  (the unfinished trials and any newer), which every sampler call and every ``should_prune``
  makes.

Printed: median and mean milliseconds per ask or read, and CPU milliseconds per ask.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.search_task import EPOCHS, SEARCH_SPACE  # noqa: E402
from controller.spec import parse_study_text  # noqa: E402
from controller.strategies.samplers import build_sampler  # noqa: E402
from controller.studies.asking import ask_new_trial  # noqa: E402
from controller.studies.reading import AskingStorage  # noqa: E402
from controller.studies.storage import use_write_ahead_log  # noqa: E402
from trial_worker.trial_reads import CoreReadStorage, read_trials  # noqa: E402

STUDY = "asking-bench"


def _spec() -> Any:
    import yaml

    document = {
        "apiVersion": "tunefleet.dev/v1alpha1",
        "kind": "Study",
        "metadata": {"name": STUDY},
        "spec": {
            "objective": {"metrics": [{"name": "val_r2", "direction": "maximize"}], "steps": EPOCHS},
            "searchSpace": SEARCH_SPACE,
            "strategy": {"sampler": "tpe", "pruner": "hyperband", "seed": 0},
            "parallelism": 2,
            "trial": {"python": "bench.search_task:objective", "maxDuration": "60s"},
        },
    }
    return parse_study_text(yaml.safe_dump(document)).spec


def build_study(url: str, trials: int, seed: int = 0) -> None:
    """``trials`` finished trials (one in seven completes, the others pruned after a few steps)."""
    rng = random.Random(seed)
    storage = RDBStorage(url)
    use_write_ahead_log(storage.engine)
    study = optuna.create_study(
        study_name=STUDY, storage=storage, direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=seed),
    )
    from bench.search_task import suggest

    for number in range(trials):
        trial = study.ask()
        suggest(trial)
        trial.set_user_attr("tunefleet.seed", number)
        complete = number % 7 == 0
        steps = EPOCHS if complete else rng.choice([1, 3, 9])
        for step in range(steps):
            trial.report(rng.random() * (step + 1) / EPOCHS, step)
        if complete:
            study.tell(trial, rng.random())
        else:
            study.tell(trial, state=TrialState.PRUNED)
    storage.engine.dispose()


def time_asks(
    url: str, wrap: Callable[[RDBStorage], Any], backend: type[RDBStorage], asks: int
) -> tuple[list[float], float]:
    spec = _spec()
    storage = wrap(backend(url, engine_kwargs={"connect_args": {"timeout": 60}}))
    study = optuna.load_study(study_name=STUDY, storage=storage, sampler=build_sampler("tpe", spec, 0))
    times: list[float] = []
    cpu = time.process_time()
    for index in range(asks):
        began = time.perf_counter()
        trial = ask_new_trial(study, spec.searchSpace, 0)
        times.append(time.perf_counter() - began)
        if index % 2:  # two stay running at any time, as with parallelism 2
            study._storage.set_trial_state_values(trial._trial_id, TrialState.PRUNED)
    return times, (time.process_time() - cpu) / asks


def time_reads(url: str, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    storage = RDBStorage(url)
    study_id = storage.get_study_id_from_name(STUDY)
    ids = [t._trial_id for t in storage._get_trials(study_id, None, set(), -1)]
    cases = {
        "whole study": (set[int](), -1, max(3, repeats // 50)),
        "incremental (2 unfinished, 1 newer)": ({ids[-10], ids[-5]}, ids[-2], repeats),
    }
    results: dict[str, tuple[list[float], list[float]]] = {}
    for name, (included, greater_than, count) in cases.items():
        orm, core = [], []
        for _ in range(count):
            began = time.perf_counter()
            storage._get_trials(study_id, None, set(included), greater_than)
            orm.append(time.perf_counter() - began)
            began = time.perf_counter()
            read_trials(storage.engine, study_id, None, included, greater_than)
            core.append(time.perf_counter() - began)
        results[name] = (orm, core)
    return results


def _ms(values: list[float]) -> str:
    return f"median {1000 * statistics.median(values):7.2f} ms  mean {1000 * statistics.mean(values):7.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500, help="finished trials in the study")
    parser.add_argument("--asks", type=int, default=60, help="asks timed per storage stack")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="tunefleet-asking-") as tmp:
        built = Path(tmp) / "built.db"
        print(f"building a study of {args.trials} finished trials ...", flush=True)
        build_study(f"sqlite:///{built}", args.trials)
        stacks: list[tuple[str, Callable[[RDBStorage], Any], type[RDBStorage]]] = [
            ("Optuna's stack (_CachedStorage, ORM reads)", _CachedStorage, RDBStorage),
            ("one read per ask (AskingStorage, ORM reads)", AskingStorage, RDBStorage),
            ("tunefleet (AskingStorage, Core reads)", AskingStorage, CoreReadStorage),
        ]
        print(f"\nask_new_trial, tunefleet's TPE, {args.asks} asks per stack:")
        for index, (name, wrap, backend) in enumerate(stacks):
            copy = Path(tmp) / f"asks-{index}.db"  # a fresh file: no write-ahead log of another
            shutil.copy(built, copy)
            times, cpu = time_asks(f"sqlite:///{copy}", wrap, backend, args.asks)
            print(f"  {name:46} {_ms(times)}  CPU {1000 * cpu:6.1f} ms/ask")
        print("\none read of the trials (RDBStorage._get_trials vs trial_reads.read_trials):")
        for name, (orm, core) in time_reads(f"sqlite:///{built}", 200).items():
            print(f"  {name:38} ORM  {_ms(orm)}")
            print(f"  {'':38} Core {_ms(core)}   (x{statistics.median(orm) / statistics.median(core):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
