"""Search-space parameters: float, int and categorical, each optionally conditional."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.spec.errors import describe, field_error

Choice = bool | int | float | str
"""A categorical choice. bool comes first so YAML ``true`` stays a bool, not 1."""

ConditionValue = Choice | list[Choice]


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    when: dict[str, ConditionValue] | None = Field(
        default=None,
        description=(
            "Only sample this parameter when every named parameter has the given value "
            "(or one of the listed values)."
        ),
    )
    mutable: bool = Field(
        default=False,
        description=(
            "Population-based training (sampler pbt): this parameter may change between a "
            "member's segments; the others stay as the member's checkpoint has them."
        ),
    )

    def active_given(self, params: dict[str, Choice]) -> bool:
        """Whether this parameter applies, given the values chosen so far."""
        if not self.when:
            return True
        for name, wanted in self.when.items():
            if name not in params:
                return False
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if not any(same_choice(params[name], a) for a in allowed):
                return False
        return True


def same_choice(a: Choice, b: Choice) -> bool:
    """Equality of choices where ``True`` is not ``1`` (as it is in Python)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    return a == b


class FloatParam(_Param):
    """A real-valued parameter in ``[low, high]``, optionally log-scaled or stepped."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_range(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise field_error("low", "low and high must be finite numbers")
        if self.low > self.high:
            raise field_error("high", f"high ({self.high}) must be greater than or equal to low ({self.low})")
        if self.log and self.low <= 0:
            raise field_error("low", f"a log-scaled range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise field_error("step", "step cannot be combined with log: true; use one of them")
        return self

    def grid_points(self) -> int | None:
        """How many values a grid over this parameter has, or None if it is continuous."""
        if self.step is None:
            return None
        return math.floor((self.high - self.low) / self.step + 1e-9) + 1


class IntParam(_Param):
    """An integer parameter in ``[low, high]``, optionally log-scaled or stepped."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check_range(self) -> IntParam:
        if self.low > self.high:
            raise field_error("high", f"high ({self.high}) must be greater than or equal to low ({self.low})")
        if self.log and self.low < 1:
            raise field_error("low", f"a log-scaled int range needs low >= 1, got {self.low}")
        if self.log and self.step != 1:
            raise field_error("step", "step cannot be combined with log: true; use one of them")
        return self

    def grid_points(self) -> int:
        return (self.high - self.low) // self.step + 1


class CategoricalParam(_Param):
    """A parameter chosen from a list of values (strings, numbers or booleans)."""

    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_choices(self) -> CategoricalParam:
        seen: list[Choice] = []
        for choice in self.choices:
            if any(same_choice(choice, s) for s in seen):
                raise field_error("choices", f"choice {describe(choice)} is listed twice")
            if isinstance(choice, float) and not math.isfinite(choice):
                raise field_error("choices", f"choice {choice} is not a finite number")
            seen.append(choice)
        return self

    def grid_points(self) -> int:
        return len(self.choices)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
PARAM_TYPES = ("float", "int", "categorical")
