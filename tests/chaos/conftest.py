"""The chaos tier: studies under a seeded random schedule of faults (see docs/chaos.md).

``--chaos-seed N`` replays one seed (the command a failing seed prints); by default the tier
runs the fixed CI seeds of test_chaos.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: studies under seeded random faults, checked by invariants")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.chaos)
