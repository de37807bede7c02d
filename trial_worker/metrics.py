"""Metrics from a command's stdout: Katib's ``name=value`` lines and JSON lines."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)"
_PAIR = re.compile(
    rf"(?<![\w.\-])(?P<name>[A-Za-z_][\w.\-]*)\s*=\s*(?P<value>{_NUMBER})(?![\w.])",
    re.IGNORECASE,
)
STEP_KEY = "step"


@dataclass(frozen=True)
class MetricLine:
    """The metric values one line carried, with its step if it named one."""

    values: dict[str, float]
    step: int | None = None


def parse_metric_line(line: str, wanted: set[str]) -> MetricLine | None:
    """Read the metrics in ``wanted`` (and a step) from one output line, or None if it has none.

    Accepts ``val_accuracy=0.91 step=3`` (several pairs per line, Katib's format) and JSON objects
    such as ``{"step": 3, "val_accuracy": 0.91}``. Other names on the line are ignored.
    """
    text = line.strip()
    pairs: dict[str, float] = {}
    if text.startswith("{") and text.endswith("}"):
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict):
            for key, value in document.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                pairs[str(key)] = float(value)
    else:
        for match in _PAIR.finditer(text):
            pairs[match.group("name")] = float(match.group("value"))
    values = {name: value for name, value in pairs.items() if name in wanted}
    step = _as_step(pairs.get(STEP_KEY))
    if not values:
        return None
    return MetricLine(values, step)


def _as_step(value: float | None) -> int | None:
    if value is None or not math.isfinite(value) or value != int(value) or value < 0:
        return None
    return int(value)


@dataclass
class MetricCollector:
    """Keeps the last value of each metric seen in a command's output."""

    wanted: set[str]
    last: dict[str, float] = field(default_factory=dict)

    def feed(self, line: str) -> MetricLine | None:
        parsed = parse_metric_line(line, self.wanted)
        if parsed is not None:
            self.last.update(parsed.values)
        return parsed
