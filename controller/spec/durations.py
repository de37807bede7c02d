"""Durations as users write them (``90m``, ``24h``, ``1h30m``, ``45``) stored as whole seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

from controller.spec.errors import describe
from controller.spec.rules import VALIDATIONS, Rule, admission_rules

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
DURATION_PATTERN = r"^([0-9]+|([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?)$"

DURATION_TYPE = Rule(
    "duration-type",
    field="",
    message="expected a duration such as 90s, 30m, 2h, 1d or 1h30m, got {value}",
    by_schema="x-kubernetes-int-or-string (an integer or a string)",
)
DURATION_FORM = Rule(
    "duration-form",
    field="",
    message="{value} is not a duration; write it like 90s, 30m, 2h, 1d or 1h30m",
    by_schema=f"pattern {DURATION_PATTERN}",
)
DURATION_POSITIVE = Rule(
    "duration-positive",
    field="",
    message="a duration must be positive, got {value}",
    # The pattern already holds: a string with a digit other than 0 is a positive duration.
    cel="type(self) == int || self.matches('[1-9]')",
    message_expression="\"a duration must be positive, got '\" + string(self) + \"'\"",
)


def parse_duration(value: Any) -> int:
    """Parse ``90m``, ``24h``, ``1h30m``, ``2d`` or a plain number of seconds into seconds."""
    if isinstance(value, bool):
        raise DURATION_TYPE.error(value="a boolean")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float) and value.is_integer():
        seconds = int(value)
    elif isinstance(value, str):
        # As the CRD's pattern: no spaces; "" matches and reads as zero seconds.
        if value.isdigit():
            seconds = int(value)
        else:
            match = _DURATION.match(value)
            if match is None:
                raise DURATION_FORM.error(value=describe(value))
            days, hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
            seconds = days * 86400 + hours * 3600 + minutes * 60 + secs
    else:
        raise DURATION_TYPE.error(value=describe(value))
    if seconds <= 0:
        raise DURATION_POSITIVE.error(value=describe(value))
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest exact spelling of ``seconds`` (``5400`` -> ``1h30m``)."""
    parts = []
    rest = seconds
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "x-kubernetes-int-or-string": True,
            "description": "A duration: seconds, or a string like 90m, 2h, 1d, 1h30m.",
            VALIDATIONS: admission_rules((DURATION_POSITIVE,)),
        }
    ),
]
