"""The reproducibility record kept in the study's user attributes."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
from importlib import metadata
from typing import Any

import optuna

from controller.spec import StudySpec
from controller.strategies import StrategyChoice
from trial_worker.contract import ATTR_GPU_MODEL

ATTR_SPEC = "tunefleet.spec"
ATTR_SPEC_HASH = "tunefleet.spec_hash"
ATTR_SEED = "tunefleet.study_seed"
ATTR_STRATEGY = "tunefleet.strategy"
ATTR_VERSIONS = "tunefleet.versions"
ATTR_STARTED_AT = "tunefleet.started_at"
ATTR_STOP_REASON = "tunefleet.stop_reason"
ATTR_STOP_DETAIL = "tunefleet.stop_detail"  # why failed trials stopped the study, as the user saw it
ATTR_HOST_GPUS = "tunefleet.host_gpus"  # GPU models on the machine that ran local trials
ATTR_CODE_REVISION = "tunefleet.code_revision"  # {"revision", "source"} when one is known

# Trial provenance for reproducibility.json: the controller sets the image ones from pod status
# (imageID holds the digest); the worker sets the GPU model it ran on.
ATTR_TRIAL_IMAGE = "tunefleet.image"
ATTR_TRIAL_IMAGE_DIGEST = "tunefleet.image_digest"
ATTR_TRIAL_IMAGE_REVISION = "tunefleet.image_revision"
ATTR_TRIAL_GPU_MODEL = ATTR_GPU_MODEL
ATTR_TRIAL_NODE = "tunefleet.node"


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


def local_gpu_models() -> list[str]:
    """GPU models ``nvidia-smi`` lists on this machine (empty without an NVIDIA driver)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        result = subprocess.run(
            [tool, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted({line.strip() for line in result.stdout.splitlines() if line.strip()})


def code_revision(workdir: str) -> dict[str, str] | None:
    """The git commit of ``workdir`` (with ``-dirty`` when it has uncommitted changes), if any."""
    tool = shutil.which("git")
    if tool is None:
        return None
    try:
        head = subprocess.run(
            [tool, "-C", workdir, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            [tool, "-C", workdir, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    dirty = "-dirty" if status.returncode == 0 and status.stdout.strip() else ""
    source = f"git working tree at {workdir} when the study began"
    return {"revision": head.stdout.strip() + dirty, "source": source}


def record_local_run(study: optuna.Study, workdir: str) -> None:
    """Local runs: the GPU models of this machine and the objective's code revision, once."""
    attrs = study.user_attrs
    if ATTR_HOST_GPUS not in attrs:
        study.set_user_attr(ATTR_HOST_GPUS, local_gpu_models())
    if ATTR_CODE_REVISION not in attrs:
        revision = code_revision(workdir)
        if revision is not None:
            study.set_user_attr(ATTR_CODE_REVISION, revision)


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
