"""Spec rules that the models check in code, each with the way the API server makes the same check.

A pydantic model's JSON schema says what OpenAPI can say (types, enums, bounds, patterns); it
becomes the CRD's schema. Everything a validator checks in code is a :class:`Rule`, declared once
and used twice: the model raises ``RULE.error(...)``, and the generated CRD carries the rule's CEL
(``x-kubernetes-validations``) so ``kubectl apply`` refuses the same spec with the same words.
A rule CEL cannot express says why (``condition_time``); the controller then reports it as the
``Invalid`` condition and Event, as it does for every rule. ``tests/unit/test_spec_rules.py``
fails when a validator raises anything that is not a registered rule.

Adding a cross-field rule (say ``budget.maxFailedTrials`` <= ``budget.maxTrials``)::

    FAILED_TRIALS_WITHIN_TRIALS = Rule(
        "budget-failed-trials-within-trials",
        field="maxFailedTrials",
        message="maxFailedTrials cannot exceed maxTrials",
        cel="!has(self.maxFailedTrials) || !has(self.maxTrials) || self.maxFailedTrials <= self.maxTrials",
    )

    class Budget(SpecModel):
        spec_rules: ClassVar[Rules] = (FAILED_TRIALS_WITHIN_TRIALS,)

        @model_validator(mode="after")
        def _check(self) -> Budget:
            if ...:
                raise FAILED_TRIALS_WITHIN_TRIALS.error()
            return self

CEL sees the object as the API server stores it: no defaults filled in (guard optional fields
with ``has()``), ``number`` fields as doubles, and neither untyped values (categorical choices,
condition values) nor maps of them. Messages never print numbers from the spec (CEL's and
Python's number formatting differ); they may print names.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from controller.spec.errors import field_error

VALIDATIONS = "x-kubernetes-validations"

RULES: dict[str, Rule] = {}
"""Every rule declared so far, by id (the models' modules declare theirs on import)."""


@dataclass(frozen=True)
class Rule:
    """One check a model makes in code, and how (or why not) the API server makes it too.

    Args:
        id: a stable name, listed in docs/validation.md.
        field: the field the error names, dotted and relative to the model ("" for the model).
        message: what ``tunefleet validate`` says; ``{key}`` placeholders are filled by
            :meth:`error` (and by ``message_expression`` in CEL).
        cel: a CEL expression, true when the object is valid; ``self`` is the model's node.
        message_expression: CEL that builds ``message`` when it names something from the spec.
        field_path: where the API server reports the error, relative to the node; defaults to
            ``field``. Must be static: a map key chosen by the user cannot be named.
        condition_time: why the API server cannot check this (then ``cel`` is None).
        by_schema: the OpenAPI keyword that already refuses what this check refuses.
    """

    id: str
    field: str
    message: str
    cel: str | None = None
    message_expression: str | None = None
    field_path: str | None = None
    condition_time: str | None = None
    by_schema: str | None = None

    def __post_init__(self) -> None:
        kinds = [self.cel, self.condition_time, self.by_schema]
        if sum(kind is not None for kind in kinds) != 1:
            raise ValueError(f"rule {self.id}: give exactly one of cel, condition_time or by_schema")
        if self.placeholders and self.cel is not None and self.message_expression is None:
            raise ValueError(f"rule {self.id}: a message naming values needs a message_expression")
        if self.id in RULES and RULES[self.id] != self:
            raise ValueError(f"rule {self.id} is declared twice")
        RULES[self.id] = self

    @property
    def placeholders(self) -> list[str]:
        return [name for _, name, _, _ in string.Formatter().parse(self.message) if name]

    @property
    def at_admission(self) -> bool:
        """Whether ``kubectl apply`` refuses what this rule refuses."""
        return self.condition_time is None

    def text(self, **values: Any) -> str:
        return self.message.format(**values)

    def error(self, *, at: str | None = None, **values: Any) -> PydanticCustomError:
        """The pydantic error a validator raises; it names ``field`` (or ``at``) inside the model."""
        return field_error(self.field if at is None else at, self.text(**values))

    def validation(self) -> dict[str, Any]:
        """The rule as an ``x-kubernetes-validations`` entry."""
        assert self.cel is not None, self.id
        entry: dict[str, Any] = {"rule": self.cel}
        if self.message_expression is not None:
            entry["messageExpression"] = self.message_expression
            # Kept if the expression fails at run time; placeholders read as <name>.
            entry["message"] = self.message.format(**{name: f"<{name}>" for name in self.placeholders})
        else:
            entry["message"] = self.text()  # braces written doubled in the message are single here
        path = self.field_path if self.field_path is not None else self.field
        if path:
            entry["fieldPath"] = path if path.startswith((".", "[")) else "." + path
        return entry


Rules = tuple[Rule, ...]


def admission_rules(rules: Rules) -> list[dict[str, Any]]:
    """The ``x-kubernetes-validations`` entries of the rules the API server can check."""
    return [rule.validation() for rule in rules if rule.cel is not None]


def _add_validations(schema: dict[str, Any], model: type[Any]) -> None:
    entries = admission_rules(getattr(model, "spec_rules", ()))
    if entries:
        schema[VALIDATIONS] = entries


class SpecModel(BaseModel):
    """Base of every spec model: unknown fields are errors, and ``spec_rules`` reach the CRD."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra=_add_validations)

    spec_rules: ClassVar[Rules] = ()
    """The rules this model's validators raise (checked by tests/unit/test_spec_rules.py)."""
