"""Mirroring studies to experiment trackers (MLflow) from the study database.

The controller and the local runner each hold a :class:`TrackingMirror`; trial pods never talk
to a tracker. See docs/tracking.md.
"""

from __future__ import annotations

from controller.tracking.local import finish_local_mirror, start_local_mirror, with_mlflow
from controller.tracking.service import CONDITION, Health, TrackingMirror

__all__ = [
    "CONDITION",
    "Health",
    "TrackingMirror",
    "finish_local_mirror",
    "start_local_mirror",
    "with_mlflow",
]
