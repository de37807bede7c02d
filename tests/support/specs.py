"""Building Study documents for tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

BASE: dict[str, Any] = {
    "apiVersion": "tunefleet.dev/v1alpha1",
    "kind": "Study",
    "metadata": {"name": "test-study"},
    "spec": {
        "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
        "searchSpace": {"x": {"type": "float", "low": -10.0, "high": 10.0}},
        "strategy": {"sampler": "random", "pruner": "none", "seed": 7},
        "budget": {"maxTrials": 6},
        "parallelism": 2,
        "trial": {"python": "tests.support.objectives:quadratic", "maxDuration": "60s", "maxRetries": 2},
    },
}


def study_document(**spec_changes: Any) -> dict[str, Any]:
    """The base study with top-level spec keys replaced (nested dicts are merged one level)."""
    document = copy.deepcopy(BASE)
    for key, value in spec_changes.items():
        if isinstance(value, dict) and isinstance(document["spec"].get(key), dict):
            document["spec"][key] = {**document["spec"][key], **value}
        else:
            document["spec"][key] = value
    return document


def write_study(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path
