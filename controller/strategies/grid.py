"""The grid: every distinct configuration of a finite space, conditions respected, each run once.

Optuna's ``GridSampler`` takes the full cross product, so with ``momentum: {when: {optimizer:
sgd}}`` it would visit ``adam`` once per momentum value: the same configuration several times.
Here the grid is the set of *effective* configurations (a conditional parameter only varies where
it is active), so its size is exactly what the planner counts before ending the study with
``SpaceExhausted``.

The controller asks trials one at a time (the runner or the operator, never the workers), and the
sampler treats every configuration already started (running or finished, in this study) as taken,
so no point runs twice under any parallelism.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from controller.spec import CategoricalParam, Choice, FloatParam, IntParam, ordered_parameters

Space = dict[str, FloatParam | IntParam | CategoricalParam]

MAX_GRID_POINTS = 1_000_000
ATTR_GRID_INDEX = "tunefleet.grid_index"


def grid_values(param: FloatParam | IntParam | CategoricalParam) -> list[Any]:
    """Every value a grid visits for one parameter (floats need a step)."""
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if isinstance(param, IntParam):
        return list(range(param.low, param.high + 1, param.step))
    if param.step is None:
        raise ValueError("a float needs a step to be part of a grid")
    count = param.grid_points() or 0
    return [round(param.low + i * param.step, 12) for i in range(count)]


def is_finite(space: Space) -> bool:
    return all(p.grid_points() is not None for p in space.values())


def product_size(space: Space) -> int | None:
    """The cross product's size (an upper bound on configurations), or None if continuous."""
    size = 1
    for param in space.values():
        points = param.grid_points()
        if points is None:
            return None
        size *= points
    return size


def count_configurations(space: Space, limit: int = MAX_GRID_POINTS) -> int | None:
    """Distinct effective configurations, or None if the space is continuous.

    Exact for conditional spaces. Parameters no condition refers to only multiply the count, so
    enumeration runs over the parents alone; past ``limit`` parent combinations the cross
    product (an upper bound) is returned instead.
    """
    if not is_finite(space):
        return None
    parents = {parent for param in space.values() for parent in (param.when or {})}
    if not parents:
        return product_size(space)
    order = [name for name in ordered_parameters(space) if name in parents]
    leaves = [name for name in space if name not in parents]
    total = 0
    for visited, assignment in enumerate(_assignments(space, order)):
        if visited >= limit:
            return product_size(space)
        multiplier = 1
        for name in leaves:
            if space[name].active_given(assignment):
                multiplier *= space[name].grid_points() or 1
        total += multiplier
    return total


def enumerate_configurations(space: Space) -> list[dict[str, Choice]]:
    """Every effective configuration, in a stable order (parents first, values ascending)."""
    return list(_assignments(space, ordered_parameters(space)))


def _assignments(space: Space, order: list[str]) -> Iterator[dict[str, Choice]]:
    def extend(index: int, chosen: dict[str, Choice]) -> Iterator[dict[str, Choice]]:
        if index == len(order):
            yield dict(chosen)
            return
        name = order[index]
        param = space[name]
        if not param.active_given(chosen):
            yield from extend(index + 1, chosen)
            return
        for value in grid_values(param):
            chosen[name] = value
            yield from extend(index + 1, chosen)
        del chosen[name]

    yield from extend(0, {})


def configuration_key(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable identity for a configuration; floats compared at 12 significant digits."""
    def canonical(value: Any) -> str:
        if isinstance(value, float) and not isinstance(value, bool) and math.isfinite(value):
            return repr(float(f"{value:.12g}"))
        return f"{type(value).__name__}:{value!r}"

    return tuple(sorted((name, canonical(value)) for name, value in params.items()))


class ConfigurationGridSampler(BaseSampler):
    """Visits each effective configuration of a finite space once, in a seeded random order.

    Args:
        space: the study's declared search space (every float needs a step).
        seed: orders the visit; the same seed visits the same configurations in the same order.
    """

    def __init__(self, space: Space, seed: int | None = None) -> None:
        size = product_size(space)
        if size is None:
            raise ValueError("the grid sampler needs a finite space: give every float a step")
        if size > MAX_GRID_POINTS:
            raise ValueError(f"the grid has {size} points; at most {MAX_GRID_POINTS} are supported")
        self._configurations = enumerate_configurations(space)
        self._order = np.random.RandomState(seed).permutation(len(self._configurations)).tolist()
        self._keys = [configuration_key(c) for c in self._configurations]
        self._names = frozenset(space)
        self._rng = np.random.RandomState(seed)

    @property
    def size(self) -> int:
        return len(self._configurations)

    def reseed_rng(self) -> None:
        self._rng.seed()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if ATTR_GRID_INDEX in trial.system_attrs:
            return
        fixed: dict[str, Any] = trial.system_attrs.get("fixed_params") or {}
        taken = self._taken(study, trial.number)
        candidates = [
            i for i in self._order if all(self._configurations[i].get(k) == v for k, v in fixed.items())
        ] or list(self._order)
        fresh = [i for i in candidates if self._keys[i] not in taken]
        index = (fresh or candidates)[0]
        study._storage.set_trial_system_attr(trial._trial_id, ATTR_GRID_INDEX, index)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        index = trial.system_attrs.get(ATTR_GRID_INDEX)
        configuration = self._configurations[int(index)] if index is not None else {}
        if param_name not in configuration:
            # Not declared in the spec (a define-by-run extra) or inactive here: any value will do.
            return optuna.samplers.RandomSampler(seed=trial.number).sample_independent(
                study, trial, param_name, param_distribution
            )
        return configuration[param_name]

    def _taken(self, study: Study, current: int) -> set[tuple[tuple[str, str], ...]]:
        taken: set[tuple[tuple[str, str], ...]] = set()
        for other in study._storage.get_all_trials(study._study_id, deepcopy=False):
            if other.number == current or (other.state == TrialState.WAITING and not other.params):
                continue  # an enqueued (warm-start) trial not yet taken; a queued one has params
            index = other.system_attrs.get(ATTR_GRID_INDEX)
            if index is not None and other.state == TrialState.RUNNING and not other.params:
                taken.add(self._keys[int(index)])  # asked, its params not yet written
            elif other.params:
                taken.add(configuration_key({k: v for k, v in other.params.items() if k in self._names}))
        return taken
