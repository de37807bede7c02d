"""Population-based training in the spec: the ``pbt`` sampler's settings and the rules it needs.

``strategy.sampler: pbt`` (or ``auto`` with parameters marked ``mutable: true``) trains a
population of members in segments of ``interval`` steps up to ``objective.steps``; weak members
copy strong ones and perturb their mutable parameters. The decisions themselves are the
planner's (:mod:`controller.planner.population`); this module says what a valid PBT spec is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from controller.spec.errors import field_error
from trial_worker.contract import SEGMENT_PLACEHOLDERS

if TYPE_CHECKING:
    from controller.spec.study import StudySpec

DEFAULT_SEGMENTS = 10
"""Without ``interval``, a member trains ``objective.steps`` in about this many segments."""

_KEYS = {
    "population": "population",
    "interval": "interval",
    "quantile": "quantile",
    "resampleProbability": "resampleProbability",
    "resample_probability": "resampleProbability",
    "perturbFactors": "perturbFactors",
    "perturb_factors": "perturbFactors",
}


class PopulationSettings(BaseModel):
    """``strategy.settings`` of the pbt sampler (camelCase or snake_case keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    population: int = Field(default=8, ge=2, le=1000, description="Members trained side by side.")
    interval: int | None = Field(
        default=None, ge=1, description="Steps per segment: how often a member is compared with the rest."
    )
    quantile: float = Field(
        default=0.25, gt=0, le=0.5, description="The bottom fraction copies the top fraction."
    )
    resampleProbability: float = Field(
        default=0.25, ge=0, le=1, description="Chance that explore draws a mutable value afresh."
    )
    perturbFactors: list[float] = Field(
        default_factory=lambda: [0.8, 1.2],
        min_length=1,
        description="Explore multiplies a numeric mutable value by one of these.",
    )

    @field_validator("perturbFactors")
    @classmethod
    def _positive(cls, factors: list[float]) -> list[float]:
        for factor in factors:
            if not (math.isfinite(factor) and factor > 0):
                raise ValueError(f"every factor must be a positive number, got {factor}")
        return factors

    def interval_for(self, steps: int) -> int:
        """Steps per segment: ``interval``, or ``objective.steps`` split in about ten segments."""
        return self.interval or max(1, math.ceil(steps / DEFAULT_SEGMENTS))


class BadSetting(ValueError):
    """One bad pbt setting: ``key`` as the spec wrote it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def parse_population_settings(settings: dict[str, Any]) -> PopulationSettings:
    """The pbt settings, or :class:`BadSetting` naming the first unknown or bad option."""
    renamed: dict[str, Any] = {}
    written: dict[str, str] = {}
    for key, value in settings.items():
        name = _KEYS.get(str(key))
        if name is None:
            options = ", ".join(sorted({v for v in _KEYS.values()}))
            raise BadSetting(str(key), f"{key!r} is not an option of the pbt sampler. Options: {options}")
        if name in renamed:
            raise BadSetting(str(key), f"{key!r} is given twice (as {written[name]!r} too)")
        fraction = name in ("quantile", "resampleProbability")
        renamed[name] = float(value) if fraction and _is_int(value) else value
        written[name] = str(key)
    try:
        return PopulationSettings.model_validate(renamed)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        key = written.get(name, name)
        raise BadSetting(key, f"{key!r}: {error['msg']}, got {settings.get(key)!r}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_population_based(spec: StudySpec) -> bool:
    """``sampler: pbt``, or ``auto`` where the spec marks mutable parameters (auto never picks
    PBT otherwise)."""
    sampler = spec.strategy.sampler
    return sampler == "pbt" or (sampler == "auto" and any(p.mutable for p in spec.searchSpace.values()))


def population_settings(spec: StudySpec) -> PopulationSettings:
    """The pbt settings of a valid spec (the defaults when ``auto`` chose pbt)."""
    if spec.strategy.sampler != "pbt":
        return PopulationSettings()
    return parse_population_settings(spec.strategy.settings)


def mutable_parameters(spec: StudySpec) -> list[str]:
    return [name for name, param in spec.searchSpace.items() if param.mutable]


def segment_placeholder(spec: StudySpec, name: str) -> bool:
    """Whether ``{{name}}`` in a command is one a PBT segment fills (checkpoint dirs, steps)."""
    return name in SEGMENT_PLACEHOLDERS and is_population_based(spec)


def check_population(spec: StudySpec) -> None:
    """The rules of a PBT spec, each error naming its field."""
    mutable = mutable_parameters(spec)
    if not is_population_based(spec):
        if mutable:
            raise field_error(
                f"searchSpace.{mutable[0]}.mutable",
                "only population-based training changes parameters during training: set "
                "strategy.sampler to pbt (or auto), or remove mutable",
            )
        return
    if not mutable:
        raise field_error(
            "searchSpace",
            "pbt needs at least one parameter marked mutable: true (what explore may change "
            "between a member's segments)",
        )
    if spec.is_multi_objective:
        raise field_error("objective.metrics", "pbt ranks members by one metric; list exactly one")
    steps = spec.objective.steps
    if steps is None:
        raise field_error(
            "objective.steps",
            "pbt needs intermediate values: set objective.steps to the number of steps (e.g. epochs) "
            "each member trains, and report each with trial.report(value, step)",
        )
    interval = population_settings(spec).interval
    if interval is not None and interval > steps:
        raise field_error(
            "strategy.settings.interval", f"the interval ({interval}) exceeds objective.steps ({steps})"
        )
    for name in mutable:
        if spec.searchSpace[name].when:
            raise field_error(f"searchSpace.{name}.mutable", "a conditional parameter cannot be mutable")
        dependents = [other for other, p in spec.searchSpace.items() if name in (p.when or {})]
        if dependents:
            raise field_error(
                f"searchSpace.{name}.mutable",
                f"{dependents[0]!r} depends on it; a parameter others depend on cannot change "
                "during training",
            )
    for name in spec.searchSpace:
        if name in SEGMENT_PLACEHOLDERS:
            raise field_error(f"searchSpace.{name}", f"{name!r} is a placeholder of pbt segments; rename it")
    if spec.strategy.pruner not in ("auto", "none"):
        raise field_error(
            "strategy.pruner", "pbt replaces pruning (weak members copy strong ones); use none or auto"
        )
    for field, why in (
        ("warmStart", "a PBT member starts from sampled parameters; warm start is not supported with pbt"),
        ("confirm", "a PBT result is a schedule with its weights, not a configuration to rerun"),
    ):
        if getattr(spec, field) is not None:
            raise field_error(field, why)
    if spec.strategy.terminator:
        raise field_error("strategy.terminator", "the terminator judges independent trials, not PBT segments")
