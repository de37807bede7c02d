"""Conditional parameters and fixed parameter values, checked against the search space.

These rules stay with the controller (``Invalid`` condition and Event): a condition's values and a
warm start's values may be booleans, numbers or strings, which a CRD schema cannot type, and CEL
sees no field without a type. See docs/validation.md.
"""

from __future__ import annotations

from controller.spec.errors import describe
from controller.spec.params import CategoricalParam, Choice, FloatParam, IntParam, same_choice
from controller.spec.rules import Rule

UNTYPED_CONDITIONS = (
    "a condition's values may be booleans, numbers, strings or lists of them: a CRD schema cannot "
    "type such a field, and CEL cannot see a field without a type (the API server reports "
    "\"undefined field 'when'\")"
)
UNTYPED_WARM_START = (
    "warmStart.params values may be booleans, numbers or strings: a CRD schema cannot type them, "
    "and CEL cannot see a field without a type"
)
CONDITION_NOT_ON_ITSELF = Rule(
    "condition-not-on-itself",
    field="searchSpace",
    message="a parameter cannot depend on itself",
    condition_time=UNTYPED_CONDITIONS,
)
CONDITION_NAMES_A_PARAMETER = Rule(
    "condition-names-a-parameter",
    field="searchSpace",
    message="'{parent}' is not a parameter of searchSpace",
    condition_time=UNTYPED_CONDITIONS,
)
CONDITION_VALUE_IS_A_CHOICE = Rule(
    "condition-value-is-a-choice",
    field="searchSpace",
    message="{value} is not one of {parent}'s choices {choices}",
    condition_time=UNTYPED_CONDITIONS,
)
CONDITION_VALUE_IN_INT_RANGE = Rule(
    "condition-value-in-int-range",
    field="searchSpace",
    message="{value} is not an integer in {parent}'s range [{low}, {high}]",
    condition_time=UNTYPED_CONDITIONS,
)
CONDITION_NOT_ON_A_FLOAT = Rule(
    "condition-not-on-a-float",
    field="searchSpace",
    message="'{parent}' is a float; conditions need a categorical or int",
    condition_time=UNTYPED_CONDITIONS,
)
CONDITIONS_ACYCLIC = Rule(
    "conditions-acyclic",
    field="searchSpace",
    message="conditions form a cycle: {cycle}",
    condition_time=UNTYPED_CONDITIONS + "; finding a cycle also needs a graph walk, which CEL cannot do",
)
WARM_START_NAMES_A_PARAMETER = Rule(
    "warm-start-names-a-parameter",
    field="warmStart.params",
    message="names no parameter of searchSpace",
    condition_time=UNTYPED_WARM_START,
)
WARM_START_VALUE_IS_A_CHOICE = Rule(
    "warm-start-value-is-a-choice",
    field="warmStart.params",
    message="{value} is not one of {choices}",
    condition_time=UNTYPED_WARM_START,
)
WARM_START_VALUE_IS_A_NUMBER = Rule(
    "warm-start-value-is-a-number",
    field="warmStart.params",
    message="{value} is not a number",
    condition_time=UNTYPED_WARM_START,
)
WARM_START_VALUE_IN_RANGE = Rule(
    "warm-start-value-in-range",
    field="warmStart.params",
    message="{value} is outside [{low}, {high}]",
    condition_time=UNTYPED_WARM_START,
)


def check_conditions(space: dict[str, FloatParam | IntParam | CategoricalParam]) -> None:
    """Each condition names another parameter, with values that parameter can take; no cycles."""
    for name, param in space.items():
        for parent, wanted in (param.when or {}).items():
            where = f"searchSpace.{name}.when.{parent}"
            if parent == name:
                raise CONDITION_NOT_ON_ITSELF.error(at=where)
            if parent not in space:
                raise CONDITION_NAMES_A_PARAMETER.error(at=where, parent=parent)
            target = space[parent]
            for value in wanted if isinstance(wanted, list) else [wanted]:
                if isinstance(target, CategoricalParam):
                    if not any(same_choice(value, c) for c in target.choices):
                        raise CONDITION_VALUE_IS_A_CHOICE.error(
                            at=where, value=describe(value), parent=parent, choices=target.choices
                        )
                elif isinstance(target, IntParam):
                    if not isinstance(value, int) or not target.low <= value <= target.high:
                        raise CONDITION_VALUE_IN_INT_RANGE.error(
                            at=where, value=describe(value), parent=parent, low=target.low, high=target.high
                        )
                else:
                    raise CONDITION_NOT_ON_A_FLOAT.error(at=where, parent=parent)
    _check_acyclic(space)


def _check_acyclic(space: dict[str, FloatParam | IntParam | CategoricalParam]) -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*trail[trail.index(name) :], name])
            raise CONDITIONS_ACYCLIC.error(at=f"searchSpace.{name}.when", cycle=cycle)
        visiting.add(name)
        for parent in space[name].when or {}:
            visit(parent, [*trail, name])
        visiting.discard(name)
        done.add(name)

    for name in space:
        visit(name, [])


def check_fixed_params(
    space: dict[str, FloatParam | IntParam | CategoricalParam], params: dict[str, Choice], where: str
) -> None:
    """Fixed values (warm start) name parameters of the space and lie in their ranges."""
    for name, value in params.items():
        at = f"{where}.{name}"
        if name not in space:
            raise WARM_START_NAMES_A_PARAMETER.error(at=at)
        param = space[name]
        if isinstance(param, CategoricalParam):
            if not any(same_choice(value, c) for c in param.choices):
                raise WARM_START_VALUE_IS_A_CHOICE.error(at=at, value=describe(value), choices=param.choices)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WARM_START_VALUE_IS_A_NUMBER.error(at=at, value=describe(value))
        elif not param.low <= value <= param.high:
            raise WARM_START_VALUE_IN_RANGE.error(at=at, value=value, low=param.low, high=param.high)
