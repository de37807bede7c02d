"""Search-space parameters: float, int and categorical, each optionally conditional."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from controller.spec.errors import describe
from controller.spec.rules import Rule, Rules, SpecModel

Choice = bool | int | float | str
"""A categorical choice. bool comes first so YAML ``true`` stays a bool, not 1."""

ConditionValue = Choice | list[Choice]


UNTYPED_CHOICES = (
    "choices may be booleans, numbers or strings: a CRD schema cannot type such a list, and CEL "
    "cannot see a field without a type (the API server reports \"undefined field 'choices'\")"
)

BOUNDS_FINITE = Rule(
    "float-bounds-finite",
    field="low",
    message="low and high must be finite numbers",
    by_schema="JSON, which the API server reads, has no infinity or NaN",
)
LOW_NOT_ABOVE_HIGH = Rule(
    "param-low-not-above-high",
    field="high",
    message="high must be greater than or equal to low",
    cel="self.low <= self.high",
)
FLOAT_LOG_LOW = Rule(
    "float-log-low-positive",
    field="low",
    message="a log-scaled range needs low > 0",
    cel="!has(self.log) || !self.log || self.low > 0.0",
)
FLOAT_LOG_WITHOUT_STEP = Rule(
    "float-log-without-step",
    field="step",
    message="step cannot be combined with log: true; use one of them",
    cel="!has(self.log) || !self.log || !has(self.step)",
)
INT_LOG_LOW = Rule(
    "int-log-low-at-least-one",
    field="low",
    message="a log-scaled int range needs low >= 1",
    cel="!has(self.log) || !self.log || self.low >= 1.0",
)
INT_LOG_WITHOUT_STEP = Rule(
    "int-log-without-step",
    field="step",
    message="step cannot be combined with log: true; use one of them",
    cel="!has(self.log) || !self.log || !has(self.step) || self.step == 1.0",
)
CHOICES_UNIQUE = Rule(
    "categorical-choices-unique",
    field="choices",
    message="choice {choice} is listed twice",
    condition_time=UNTYPED_CHOICES,
)
CHOICES_FINITE = Rule(
    "categorical-choices-finite",
    field="choices",
    message="choice {choice} is not a finite number",
    by_schema="JSON, which the API server reads, has no infinity or NaN",
)


class _Param(SpecModel):
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

    spec_rules: ClassVar[Rules] = (BOUNDS_FINITE, LOW_NOT_ABOVE_HIGH, FLOAT_LOG_LOW, FLOAT_LOG_WITHOUT_STEP)

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_range(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise BOUNDS_FINITE.error()
        if self.low > self.high:
            raise LOW_NOT_ABOVE_HIGH.error()
        if self.log and self.low <= 0:
            raise FLOAT_LOG_LOW.error()
        if self.log and self.step is not None:
            raise FLOAT_LOG_WITHOUT_STEP.error()
        return self

    def grid_points(self) -> int | None:
        """How many values a grid over this parameter has, or None if it is continuous."""
        if self.step is None:
            return None
        return math.floor((self.high - self.low) / self.step + 1e-9) + 1


class IntParam(_Param):
    """An integer parameter in ``[low, high]``, optionally log-scaled or stepped."""

    spec_rules: ClassVar[Rules] = (LOW_NOT_ABOVE_HIGH, INT_LOG_LOW, INT_LOG_WITHOUT_STEP)

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check_range(self) -> IntParam:
        if self.low > self.high:
            raise LOW_NOT_ABOVE_HIGH.error()
        if self.log and self.low < 1:
            raise INT_LOG_LOW.error()
        if self.log and self.step != 1:
            raise INT_LOG_WITHOUT_STEP.error()
        return self

    def grid_points(self) -> int:
        return (self.high - self.low) // self.step + 1


class CategoricalParam(_Param):
    """A parameter chosen from a list of values (strings, numbers or booleans)."""

    spec_rules: ClassVar[Rules] = (CHOICES_UNIQUE, CHOICES_FINITE)

    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_choices(self) -> CategoricalParam:
        seen: list[Choice] = []
        for choice in self.choices:
            if any(same_choice(choice, s) for s in seen):
                raise CHOICES_UNIQUE.error(choice=describe(choice))
            if isinstance(choice, float) and not math.isfinite(choice):
                raise CHOICES_FINITE.error(choice=choice)
            seen.append(choice)
        return self

    def grid_points(self) -> int:
        return len(self.choices)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
PARAM_TYPES = ("float", "int", "categorical")
