"""Durations as users write them (``90m``, ``24h``, ``1h30m``, ``45``) stored as whole seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
DURATION_PATTERN = r"^([0-9]+|([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?)$"


def parse_duration(value: Any) -> int:
    """Parse ``90m``, ``24h``, ``1h30m``, ``2d`` or a plain number of seconds into seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 30m, 2h, 1d or 1h30m, got a boolean")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float) and value.is_integer():
        seconds = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            seconds = int(text)
        else:
            match = _DURATION.match(text)
            if not text or match is None:
                raise ValueError(f"{value!r} is not a duration; write it like 90s, 30m, 2h, 1d or 1h30m")
            days, hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
            seconds = days * 86400 + hours * 3600 + minutes * 60 + secs
    else:
        raise ValueError(f"expected a duration such as 30m or 2h, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
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
        }
    ),
]
