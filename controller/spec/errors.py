"""Spec errors that name the field, for people and for Kubernetes status conditions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class SpecError:
    """One thing wrong with a spec: where (dotted field path), what, and the YAML line if known."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}" if self.path else "(document)"
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.message}"


class SpecInvalid(Exception):
    """A spec failed validation; ``errors`` lists every problem found."""

    def __init__(self, errors: list[SpecError], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(str(e) for e in errors))


def field_error(field: str, message: str) -> PydanticCustomError:
    """An error raised in a model validator that points at ``field`` inside the model.

    Pydantic places model-validator errors at the model's own location; the ``field`` context
    lets :func:`controller.spec.loading.errors_from_validation` extend the path.
    """
    return PydanticCustomError("tunefleet_spec", message, {"field": field})


def describe(value: Any) -> str:
    """A short rendering of a user value for messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
