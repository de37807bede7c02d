"""The ``pbt`` sampler's ``strategy.settings``: free-form as written, parsed into a model.

Machinery rather than a spec rule: a bad setting surfaces through the registered rule
``strategy-settings-match-optuna`` (``controller.strategies.settings.check_sampler_settings``).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
