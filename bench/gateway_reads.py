"""Reading a study's trials on PostgreSQL: one statement against six queries.

    .venv/bin/python -m bench.gateway_reads [--trials 5000] [--steps 20] [--running 20] [--repeats 200]

Starts a throwaway PostgreSQL 15 (as the tests do), builds a study of ``--trials`` finished
trials (three parameters, one a categorical; ``--steps`` intermediate values and a user attribute
each), then times in one run the two readers of ``trial_worker.trial_reads``, each read encoded
into Optuna's gRPC messages as the trial gateway encodes it (``controller.gateway.trial_rows``):

- one statement (``read_stored_aggregated``, what every reader uses on PostgreSQL): each trial
  one row, its children aggregated into arrays;
- six queries (``read_stored_by_table``, what readers use on other databases, and on PostgreSQL
  before): the trials, then each child table by id.

For the whole study (what the export Job's first read and a new worker's first read ask) and for
a snapshot refresh (the last ``--running`` trials, as a busy study's unfinished ones). Printed:
the best wall-clock milliseconds of three whole-study reads, and the mean of ``--repeats``
refreshes, with the CPU milliseconds of this process per refresh.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _build(url: str, trials: int, steps: int) -> int:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study = optuna.create_study(storage=url, study_name="gateway-reads")
    distributions = {
        "x": FloatDistribution(0.0, 1.0),
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
        "kind": CategoricalDistribution(["a", "b", None]),
    }
    study.add_trials([
        optuna.trial.create_trial(
            params={"x": i / trials, "lr": 1e-3, "kind": "a"},
            distributions=distributions,
            value=float(i),
            intermediate_values={step: float(step) for step in range(steps)},
            user_attrs={"seed": i},
        )
        for i in range(trials)
    ])
    return int(study._study_id)


def _timed_once(read: Callable[[], Any]) -> float:
    began = time.perf_counter()
    read()
    return time.perf_counter() - began


def _timed(read: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(mean wall seconds, mean CPU seconds) per read, after one read to warm up."""
    read()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        read()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def main() -> int:
    import optuna
    from optuna.storages import RDBStorage

    from controller.gateway.trial_rows import message
    from tests.support.postgres import remove_server, start_server
    from trial_worker.trial_reads import read_stored_aggregated, read_stored_by_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--running", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    if min(args.trials, args.steps, args.running, args.repeats) < 1 or args.running > args.trials:
        parser.error("every count must be at least 1, and --running at most --trials")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    server = start_server()
    try:
        storage = RDBStorage(server.create_database())
        print(f"building a study of {args.trials} trials x {args.steps} steps ...", flush=True)
        study_id = _build(storage.engine.url.render_as_string(hide_password=False), args.trials, args.steps)
        engine = storage.engine
        ids = [t._trial_id for t in storage._get_trials(study_id, None, set(), -1)]
        # a refresh: the unfinished trials by id (here the newest), and any newer than the watermark
        refresh = set(ids[-args.running:]), ids[-1]

        readers = {"one statement": read_stored_aggregated, "six queries": read_stored_by_table}

        def as_messages(read: Callable[..., Any], included: set[int], greater_than: int) -> Any:
            return [message(t) for t in read(engine, study_id, None, included, greater_than)]

        print(f"\nthe whole study ({args.trials} trials), best of 3:")
        for name, read in readers.items():
            as_messages(read, set(), -1)  # warm
            best = min(_timed_once(lambda read=read: as_messages(read, set(), -1)) for _ in range(3))
            print(f"  {name:14} {1000 * best:8.1f} ms")
        print(f"\na snapshot refresh ({args.running} trials), mean of {args.repeats}:")
        for name, read in readers.items():
            wall, cpu = _timed(lambda read=read: as_messages(read, *refresh), args.repeats)
            print(f"  {name:14} {1000 * wall:8.2f} ms   CPU {1000 * cpu:6.2f} ms")
    finally:
        remove_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
