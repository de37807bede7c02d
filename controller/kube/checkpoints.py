"""Population-based training on a cluster: the checkpoint volume in trial pods, and where each
segment's checkpoints lie on it (pure functions, like :mod:`controller.kube.manifests`).

``spec.checkpoints.persistentVolumeClaim`` is mounted into every trial pod of the study at
``/tunefleet/checkpoints`` (``TUNEFLEET_CHECKPOINT_ROOT`` tells the worker where); the study's
checkpoints live below ``<spec.checkpoints.path>/<study name>/member-<m>/trial-<n>``. Several
studies (and the segments of every member, running on any node) share one claim, so it needs
an access mode that lets pods on several nodes mount it (``ReadWriteMany``) unless they all run
on one node.
"""

from __future__ import annotations

from typing import Any

from controller.spec import StudySpec
from controller.studies.segments import segment_assignment
from trial_worker.contract import CHECKPOINT_ROOT_ENV, SegmentAssignment

CHECKPOINT_VOLUME = "tunefleet-checkpoints"
CHECKPOINT_MOUNT_PATH = "/tunefleet/checkpoints"


def checkpoint_prefix(spec: StudySpec, study_name: str) -> str:
    """The study's directory inside the volume."""
    base = (spec.checkpoints.path if spec.checkpoints is not None else "/").strip("/")
    return f"{base}/{study_name}" if base else study_name


def segment_for_job(
    spec: StudySpec, study_name: str, trial_number: int, user_attrs: dict[str, Any]
) -> SegmentAssignment | None:
    """The segment part of a trial's assignment (None when the trial is not a PBT segment)."""
    return segment_assignment(
        user_attrs, trial_number, root=None, prefix=checkpoint_prefix(spec, study_name)
    )


def mount_checkpoints(spec: StudySpec, pod: dict[str, Any], container: dict[str, Any]) -> None:
    """Mount ``spec.checkpoints``' claim into the trial container and say where (in place)."""
    if spec.checkpoints is None:
        return
    volumes = [v for v in pod.get("volumes") or [] if v.get("name") != CHECKPOINT_VOLUME]
    volumes.append(
        {
            "name": CHECKPOINT_VOLUME,
            "persistentVolumeClaim": {"claimName": spec.checkpoints.persistentVolumeClaim},
        }
    )
    pod["volumes"] = volumes
    mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != CHECKPOINT_VOLUME]
    mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": CHECKPOINT_MOUNT_PATH})
    container["volumeMounts"] = mounts
    env = [e for e in container.get("env") or [] if e.get("name") != CHECKPOINT_ROOT_ENV]
    env.append({"name": CHECKPOINT_ROOT_ENV, "value": CHECKPOINT_MOUNT_PATH})
    container["env"] = env
