"""Fixtures of the chart tier: the chart loaded once, and its renders cached per scenario."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import helm_python
import pytest

from tests.chart.chart_support import CHART_DIR, SCENARIOS, Manifest, render_objects


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def scenario_objects(chart: helm_python.Chart) -> Callable[[str], list[Manifest]]:
    """The objects of a named scenario in SCENARIOS, rendered once per session."""
    cache: dict[str, list[Manifest]] = {}

    def _objects(name: str) -> list[Manifest]:
        if name not in cache:
            cache[name] = render_objects(chart, SCENARIOS[name])
        return cache[name]

    return _objects


@pytest.fixture(scope="session")
def render(chart: helm_python.Chart) -> Callable[[dict[str, Any] | None], list[Manifest]]:
    def _render(values: dict[str, Any] | None = None) -> list[Manifest]:
        return render_objects(chart, values)

    return _render
