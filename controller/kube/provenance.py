"""Where a trial ran, from its pod: image, image digest and node, kept as trial attributes.

``reproducibility.json`` lists the images with their digests (``tunefleet.image``,
``tunefleet.image_digest``) and ``tunefleet.node``. The digest only exists once the container
ran (``containerStatuses[].imageID``), and by the time the controller sees a finished pod its
worker has usually finished the trial, which Optuna's public API no longer lets anyone annotate.
So the attributes are upserted into Optuna's trial attribute table directly, in one transaction:
the only place tunefleet writes Optuna's schema itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import optuna
import structlog
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from sqlalchemy.exc import SQLAlchemyError

from controller.kube.manifests import TRIAL_CONTAINER
from controller.studies.record import ATTR_TRIAL_IMAGE, ATTR_TRIAL_IMAGE_DIGEST, ATTR_TRIAL_NODE

log = structlog.get_logger("tunefleet.controller")


def image_digest(image_id: str) -> str:
    """``repo@sha256:...`` -> ``sha256:...``; a runtime ID without ``@`` is kept as reported."""
    for prefix in ("docker-pullable://", "docker://"):
        image_id = image_id.removeprefix(prefix)
    return image_id.split("@", 1)[1] if "@" in image_id else image_id


def pod_provenance(pod: Mapping[str, Any]) -> dict[str, str]:
    """The trial container's image and digest, and the node, as far as the pod status tells."""
    attrs: dict[str, str] = {}
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        attrs[ATTR_TRIAL_NODE] = str(node)
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    trial = next((s for s in statuses if s.get("name") == TRIAL_CONTAINER), statuses[0] if statuses else None)
    if trial is not None:
        if trial.get("image"):
            attrs[ATTR_TRIAL_IMAGE] = str(trial["image"])
        if trial.get("imageID"):
            attrs[ATTR_TRIAL_IMAGE_DIGEST] = image_digest(str(trial["imageID"]))
    if ATTR_TRIAL_IMAGE not in attrs:
        containers = (pod.get("spec") or {}).get("containers") or []
        spec_trial = next((c for c in containers if c.get("name") == TRIAL_CONTAINER), None)
        if spec_trial is not None and spec_trial.get("image"):
            attrs[ATTR_TRIAL_IMAGE] = str(spec_trial["image"])
    return attrs


def _rdb_storage(study: optuna.Study) -> RDBStorage | None:
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a cache
    return backend if isinstance(backend, RDBStorage) else None


def record_provenance(study: optuna.Study, trial_number: int, attrs: Mapping[str, str]) -> bool:
    """Upsert ``attrs`` on the trial, finished or not; False when it could not (logged)."""
    storage = _rdb_storage(study)
    if storage is None or not attrs:
        return False
    try:
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, trial_number)
    except KeyError:
        return False
    session = storage.scoped_session()
    try:
        existing: dict[str, Any] = {
            str(row.key): row
            for row in session.query(models.TrialUserAttributeModel).filter(
                models.TrialUserAttributeModel.trial_id == trial_id,
                models.TrialUserAttributeModel.key.in_(list(attrs)),
            )
        }
        for key, value in attrs.items():
            encoded = json.dumps(value)
            row = existing.get(key)
            if row is None:
                session.add(models.TrialUserAttributeModel(trial_id=trial_id, key=key, value_json=encoded))
            elif row.value_json != encoded:
                row.value_json = encoded
        session.commit()
    except SQLAlchemyError as error:
        session.rollback()
        log.warning("could not record where the trial ran", trial=trial_number, error=repr(error)[:300])
        return False
    finally:
        session.close()
    return True
