"""Sampler randomness comes from (study seed, trial number), not from the process that asks."""

from __future__ import annotations

import optuna
import pytest

from controller.spec import validate_spec
from controller.strategies.reseeding import derived_seed, reseed_for_trial
from controller.strategies.samplers import build_sampler

SAMPLERS = ["random", "tpe", "gp", "cmaes", "qmc", "nsga2", "nsga3", "motpe", "grid"]


def spec_for(sampler: str) -> object:
    metrics = [{"name": "a", "direction": "minimize"}]
    if sampler in ("nsga2", "nsga3", "motpe"):
        metrics.append({"name": "b", "direction": "minimize"})
    return validate_spec(
        {
            "objective": {"metrics": metrics},
            "searchSpace": {"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.1}},
            "strategy": {"sampler": sampler, "pruner": "none", "seed": 3},
            "trial": {"python": "m:f"},
        }
    )


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_has_its_random_states_reseeded(sampler: str) -> None:
    """An Optuna upgrade that moved a sampler's random state would make reseeding a silent no-op."""
    built = build_sampler(sampler, spec_for(sampler), 3)  # type: ignore[arg-type]
    assert reseed_for_trial(built, 3, 0) >= 1


def test_the_same_trial_draws_the_same_values_in_any_process_another_trial_others() -> None:
    distribution = optuna.distributions.FloatDistribution(0.0, 1.0)
    study = optuna.create_study()
    frozen = study.ask()._cached_frozen_trial

    def draw(trial_number: int, earlier_draws: int) -> float:
        sampler = optuna.samplers.RandomSampler(seed=3)  # a process's own sampler, same seed
        for _ in range(earlier_draws):  # what that process asked before: its state moved on
            sampler.sample_independent(study, frozen, "x", distribution)
        reseed_for_trial(sampler, 3, trial_number)
        return float(sampler.sample_independent(study, frozen, "x", distribution))

    assert draw(5, earlier_draws=0) == draw(5, earlier_draws=4)
    assert draw(5, earlier_draws=0) != draw(6, earlier_draws=0)
    assert derived_seed(3, 5) != derived_seed(4, 5)
