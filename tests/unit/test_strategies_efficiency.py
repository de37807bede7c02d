"""Sample efficiency on Branin: TPE and GP beat random search at equal trial counts.

Fixed seeds make it deterministic; the figures are the mean best value over the seeds (Branin's
global minimum is 0.397887).
"""

from __future__ import annotations

import math
import statistics
import warnings

import optuna
import pytest
import yaml

from controller.spec import StudySpec, parse_study_text
from controller.strategies import build_sampler
from tests.support.specs import study_document

SEEDS = (0, 1, 2)
TRIALS = 30
BRANIN_MINIMUM = 0.397887


def branin(x: float, y: float) -> float:
    a, b, c = 1.0, 5.1 / (4 * math.pi**2), 5.0 / math.pi
    r, s, t = 6.0, 10.0, 1.0 / (8 * math.pi)
    return a * (y - b * x**2 + c * x - r) ** 2 + s * (1 - t) * math.cos(x) + s


def branin_spec(sampler: str) -> StudySpec:
    document = study_document(strategy={"sampler": sampler, "pruner": "none"}, parallelism=1)
    document["spec"]["searchSpace"] = {
        "x": {"type": "float", "low": -5.0, "high": 10.0},
        "y": {"type": "float", "low": 0.0, "high": 15.0},
    }
    return parse_study_text(yaml.safe_dump(document)).spec


def mean_best(sampler: str) -> float:
    spec = branin_spec(sampler)
    bests = []
    for seed in SEEDS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(sampler=build_sampler(sampler, spec, seed))
            study.optimize(
                lambda t: branin(t.suggest_float("x", -5, 10), t.suggest_float("y", 0, 15)), TRIALS
            )
        bests.append(study.best_value)
    return statistics.mean(bests)


@pytest.fixture(scope="module")
def random_best() -> float:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return mean_best("random")


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_model_based_samplers_beat_random_search(sampler: str, random_best: float) -> None:
    model_best = mean_best(sampler)
    assert model_best < random_best, f"{sampler}: {model_best:.4f} vs random {random_best:.4f}"
    assert model_best >= BRANIN_MINIMUM - 1e-6
