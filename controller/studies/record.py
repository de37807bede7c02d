"""The reproducibility record kept in the study's user attributes."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from typing import Any

import optuna

from controller.spec import StudySpec
from controller.strategies import StrategyChoice

ATTR_SPEC = "tunefleet.spec"
ATTR_SPEC_HASH = "tunefleet.spec_hash"
ATTR_SEED = "tunefleet.study_seed"
ATTR_STRATEGY = "tunefleet.strategy"
ATTR_VERSIONS = "tunefleet.versions"
ATTR_STARTED_AT = "tunefleet.started_at"
ATTR_STOP_REASON = "tunefleet.stop_reason"


def spec_hash(spec: StudySpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("tunefleet", "optuna", "torch", "numpy", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def record_study(
    study: optuna.Study, spec: StudySpec, seed: int, choice: StrategyChoice, started_at: float
) -> dict[str, Any]:
    """Store the spec, its hash, seeds, strategy and versions once; returns what is stored.

    On a resumed study the first record is kept (it says how the study began); the caller
    compares hashes to warn about a changed spec.
    """
    attrs = study.user_attrs
    if ATTR_SPEC_HASH not in attrs:
        study.set_user_attr(ATTR_SPEC, spec.model_dump(mode="json"))
        study.set_user_attr(ATTR_SPEC_HASH, spec_hash(spec))
        study.set_user_attr(ATTR_SEED, seed)
        study.set_user_attr(
            ATTR_STRATEGY,
            {
                "sampler": choice.sampler,
                "pruner": choice.pruner,
                "reasons": list(choice.reasons),
                "samplerSettings": spec.strategy.settings,
                "prunerSettings": spec.strategy.prunerSettings,
            },
        )
        study.set_user_attr(ATTR_VERSIONS, library_versions())
        study.set_user_attr(ATTR_STARTED_AT, started_at)
        attrs = study.user_attrs
    return attrs
