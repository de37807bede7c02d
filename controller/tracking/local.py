"""Mirroring a local run (``tunefleet run``): the same mirror, started and finished by the runner.

Local runs use the ``MLFLOW_TRACKING_*`` environment for credentials (``secretRef`` names a
cluster Secret). When the study ends, the runner waits a bounded time for the mirror to send
the rest; past it, rerunning ``tunefleet run`` (which resumes the ended study at once) finishes
the mirror.
"""

from __future__ import annotations

import os

import structlog

from controller.spec import StudyManifest
from controller.spec.tracking import MlflowTracking, Tracking
from controller.tracking.service import TrackingMirror

log = structlog.get_logger("tunefleet.tracking")
FINISH_TIMEOUT_ENV = "TUNEFLEET_TRACKING_FINISH_S"
DEFAULT_FINISH_TIMEOUT_S = 60.0


def with_mlflow(manifest: StudyManifest, tracking_uri: str | None) -> StudyManifest:
    """``tunefleet run --mlflow URI``: the spec's MLflow block with this tracking URI."""
    if not tracking_uri:
        return manifest
    current = manifest.spec.tracking.mlflow if manifest.spec.tracking is not None else None
    settings = {**(current.model_dump() if current is not None else {}), "trackingUri": tracking_uri}
    tracking = Tracking(mlflow=MlflowTracking.model_validate(settings))
    spec = manifest.spec.model_copy(update={"tracking": tracking})
    return manifest.model_copy(update={"spec": spec})


def start_local_mirror(manifest: StudyManifest, storage_url: str) -> TrackingMirror | None:
    """A started mirror for the study, or None when its spec asks for no tracking."""
    tracking = manifest.spec.tracking
    if tracking is None or tracking.mlflow is None:
        return None
    if tracking.mlflow.secretRef:
        log.warning(
            "spec.tracking.mlflow.secretRef names a cluster Secret; a local run uses MLFLOW_TRACKING_* "
            "from the environment",
            study=manifest.metadata.name,
        )
    mirror = TrackingMirror(storage_url)
    name = manifest.metadata.name
    mirror.watch(name, name, tracking)
    return mirror


def finish_local_mirror(mirror: TrackingMirror, name: str) -> str | None:
    """Wait (bounded) for the ended study to be in MLflow whole; returns where its run is."""
    timeout = float(os.environ.get(FINISH_TIMEOUT_ENV) or DEFAULT_FINISH_TIMEOUT_S)
    try:
        if not mirror.finish(name, timeout):
            health = mirror.health(name)
            log.warning(
                "the study is not all in MLflow yet; rerun `tunefleet run` to finish mirroring",
                study=name,
                reason=health.reason if health else None,
                detail=health.message if health else None,
            )
        return mirror.run_url(name)
    finally:
        mirror.close()
