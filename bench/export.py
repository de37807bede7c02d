"""Time the export of a 10,000-trial study stored in PostgreSQL, part by part.

    .venv/bin/python bench/export.py [--trials 10000] [--steps 10] [--keep DIR]

Starts its own throwaway PostgreSQL (tests/support/postgres.py), records a study the way the
runner does (spec, seed, strategy), writes the trials with bulk inserts into Optuna's tables (so
building the study takes seconds, not the hours a real search would), settles one ledger charge per
trial, then runs ``write_export`` and prints the seconds each part took. The target is under 60 s
in all on the project's machines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.storages._rdb import models
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.budget.ledger import Ledger, settlements
from controller.export import write_export
from controller.spec import StudySpec
from controller.strategies import build_sampler, choose_strategy
from controller.studies.asking import trial_seed
from controller.studies.record import record_study
from controller.studies.storage import create_or_load_study, open_storage
from tests.support.postgres import remove_server, start_server
from trial_worker.contract import ATTR_SEED

STUDY = "bench-export"
SPEC: dict[str, Any] = {
    "objective": {"metrics": [{"name": "val_loss", "direction": "minimize"}]},
    "searchSpace": {
        "lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True},
        "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
        "n_layers": {"type": "int", "low": 1, "high": 6},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    },
    "strategy": {"sampler": "tpe", "pruner": "median", "seed": 1},
    "budget": {"maxTrials": 10000, "gpuHours": 5000},
    "parallelism": 16,
    "trial": {"python": "examples.quickstart.train:objective", "gpus": 1},
}
FINITE_STEP = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
DISTRIBUTIONS = {
    "lr": FloatDistribution(1.0e-5, 1.0e-1, log=True),
    "batch_size": CategoricalDistribution([32, 64, 128, 256]),
    "optimizer": CategoricalDistribution(["adam", "sgd"]),
    "momentum": FloatDistribution(0.8, 0.99),
    "n_layers": IntDistribution(1, 6),
    "dropout": FloatDistribution(0.0, 0.5),
}


def sample(rng: random.Random) -> dict[str, Any]:
    params: dict[str, Any] = {
        "lr": math.exp(rng.uniform(math.log(1e-5), math.log(1e-1))),
        "batch_size": rng.choice([32, 64, 128, 256]),
        "optimizer": rng.choice(["adam", "sgd"]),
        "n_layers": rng.randint(1, 6),
        "dropout": rng.uniform(0.0, 0.5),
    }
    if params["optimizer"] == "sgd":
        params["momentum"] = rng.uniform(0.8, 0.99)
    return params


def loss_of(params: dict[str, Any], rng: random.Random) -> float:
    lr_term = (math.log10(params["lr"]) + 3.0) ** 2 / 4
    return lr_term + 0.05 * abs(params["n_layers"] - 3) + 0.2 * params["dropout"] + rng.gauss(0, 0.02)


def build(url: str, trials: int, steps: int) -> None:
    """The study as the runner records it, then ``trials`` trials written in bulk."""
    spec = StudySpec.model_validate(SPEC)
    choice = choose_strategy(spec)
    study = create_or_load_study(
        open_storage(url), STUDY, spec.objective.directions, sampler=build_sampler(choice.sampler, spec, 1)
    )
    record_study(study, spec, 1, choice, time.time())
    study_id = study._study_id
    rng = random.Random(0)
    start = datetime.datetime(2026, 1, 1)
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in ("trials", "params", "values", "steps", "attrs")}
    charges: list[dict[str, Any]] = []
    for number in range(trials):
        trial_id = number + 1
        params = sample(rng)
        loss = loss_of(params, rng)
        roll = rng.random()
        state = TrialState.COMPLETE if roll < 0.7 else TrialState.PRUNED if roll < 0.95 else TrialState.FAIL
        began = start + datetime.timedelta(seconds=30 * number / 16)
        reported = steps if state == TrialState.COMPLETE else max(1, steps // 3)
        seconds = 60.0 * reported / steps + rng.uniform(0, 5)
        rows["trials"].append(
            {
                "trial_id": trial_id,
                "number": number,
                "study_id": study_id,
                "state": state,
                "datetime_start": began,
                "datetime_complete": began + datetime.timedelta(seconds=seconds),
            }
        )
        for name, value in params.items():
            distribution = DISTRIBUTIONS[name]
            rows["params"].append(
                {
                    "trial_id": trial_id,
                    "param_name": name,
                    "param_value": distribution.to_internal_repr(value),
                    "distribution_json": distribution_to_json(distribution),
                }
            )
        if state == TrialState.COMPLETE:
            rows["values"].append(
                {
                    "trial_id": trial_id,
                    "objective": 0,
                    "value": loss,
                    "value_type": models.TrialValueModel.TrialValueType.FINITE,
                }
            )
        for step in range(reported):
            rows["steps"].append(
                {
                    "trial_id": trial_id,
                    "step": step,
                    "intermediate_value": loss + (steps - step) * 0.05,
                    "intermediate_value_type": FINITE_STEP,
                }
            )
        rows["attrs"].append(
            {"trial_id": trial_id, "key": ATTR_SEED, "value_json": json.dumps(trial_seed(1, number))}
        )
        charges.append(
            {
                "key": f"bench:{number}",
                "reservation_key": f"{STUDY}/{number}",
                "study": STUDY,
                "trial_number": number,
                "gpu_seconds": math.ceil(seconds),
                "cpu_seconds": math.ceil(seconds),
                "wall_seconds": seconds,
                "settled_at": began,
            }
        )
    ledger = Ledger(url)  # creates the ledger tables
    ledger.set_study_limits(STUDY, gpu_seconds=5000 * 3600, cpu_seconds=None)
    ledger.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(models.TrialModel.__table__.insert(), rows["trials"])
        conn.execute(models.TrialParamModel.__table__.insert(), rows["params"])
        conn.execute(models.TrialValueModel.__table__.insert(), rows["values"])
        conn.execute(models.TrialIntermediateValueModel.__table__.insert(), rows["steps"])
        conn.execute(models.TrialUserAttributeModel.__table__.insert(), rows["attrs"])
        conn.execute(settlements.insert(), charges)
        # The trials were inserted with explicit ids: move the sequence past them.
        conn.exec_driver_sql("SELECT setval('trials_trial_id_seq', (SELECT max(trial_id) FROM trials))")
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=10, help="intermediate values per complete trial")
    parser.add_argument("--keep", type=Path, help="write the export here (default: a temporary directory)")
    args = parser.parse_args()

    server = start_server()
    try:
        url = server.create_database()
        began = time.perf_counter()
        build(url, args.trials, args.steps)
        print(f"built a {args.trials}-trial study in PostgreSQL in {time.perf_counter() - began:.1f} s")
        out = args.keep or Path(tempfile.mkdtemp(prefix="tunefleet-bench-export-"))
        began = time.perf_counter()
        result = write_export(url, STUDY, out)
        total = time.perf_counter() - began
    finally:
        remove_server(server)
    print(f"export of {args.trials} trials: {total:.1f} s in all (target: under 60 s)")
    for part, seconds in result.timings.items():
        print(f"  {part:<28} {seconds:7.2f} s")
    for name in result.files:
        print(f"  {name:<28} {(out / name).stat().st_size / 1e6:7.2f} MB")
    return 0 if total < 60 else 1


if __name__ == "__main__":
    sys.exit(main())
