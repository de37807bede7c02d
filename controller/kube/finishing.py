"""When a Study ends: the best configuration in status and ConfigMap, and the export on a PVC.

The best configuration is computed as ``tunefleet export`` computes it (search trials only; by
mean where confirmation runs happened), once per change of the finished trials. With
``spec.export`` set, a short-lived Job (:func:`controller.kube.manifests.export_job`) mounts the
PVC and runs ``tunefleet export`` into it; when that Job completes, an ``ExportWritten`` Event
names the claim and path (``ExportFailed`` when it failed). ``status.export`` mirrors the Job,
so a restarted controller neither reruns the export nor posts the Event again.

With the trial gateway on, the export Job holds no database password: it reads through the
gateway with a read-only token for its study, from a Secret owned by the Job
(:func:`controller.kube.trial_access.export_secret`). The gateway serves Optuna's storage only, so
before creating the Job the controller copies the study's ledger figures (charges per trial, the
totals) into the study as a system attribute (:mod:`controller.analysis.ledger_snapshot`).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

import structlog

from controller.analysis.confidence import confidence_report
from controller.analysis.data import load_study_data
from controller.analysis.ledger_snapshot import ATTR_LEDGER, encode_ledger
from controller.budget.ledger import Ledger
from controller.export.best_config import BestConfig, best_config
from controller.kube import outcome
from controller.kube.client import KubeApi
from controller.kube.manifests import (
    EXPORT_LABEL,
    EXPORT_MOUNT_PATH,
    StudyRef,
    TrialPodSettings,
    best_config_map,
    export_job,
    export_job_name,
    optuna_study_name,
)
from controller.kube.trial_access import export_secret, job_created_at, needs_secret
from controller.spec import StudySpec
from controller.studies.storage import open_storage

log = structlog.get_logger("tunefleet.controller")


@dataclass
class FinishMemory:
    """What one finished Study's controller remembers (rebuilt from status after a restart)."""

    best: BestConfig | None = None
    best_for: int = -1  # the finished-trial count the best configuration was computed from
    config_map: str | None = None  # the document last written to ``<study>-best``
    export: outcome.ExportJobState | None = None
    export_announced: bool = False
    export_secured: bool = False  # this process saw to the export Job's gateway Secret


class Finisher:
    """Writes what a finished Study leaves behind; called by the reconciler once the plan is finished."""

    def __init__(
        self,
        kube: KubeApi,
        storage_url: str,
        settings: TrialPodSettings,
        export_mount_path: str = EXPORT_MOUNT_PATH,
    ) -> None:
        self.kube = kube
        self.storage_url = storage_url  # no password: the export Job gets it from the Secret
        self.settings = settings
        self.export_mount_path = export_mount_path

    def finish(
        self,
        body: dict[str, Any],
        ref: StudyRef,
        spec: StudySpec,
        memory: FinishMemory,
        finished_trials: int,
        previous: dict[str, Any],
    ) -> dict[str, Any]:
        """Best configuration, ConfigMap and export; returns the status fields to merge in."""
        key = optuna_study_name(ref)
        if memory.best is None or memory.best_for != finished_trials:
            memory.best = _final_best(self.storage_url, key)
            memory.best_for = finished_trials
        fields: dict[str, Any] = {}
        best = memory.best
        if best is not None:
            if best.pareto is not None:
                fields["paretoFront"] = outcome.pareto_status_from_best(best)
            else:
                fields["bestTrial"] = outcome.best_trial_status_from_best(best)
        payload = outcome.best_config_payload(key, best)
        if payload is not None:
            document, text = payload
            serialized = json.dumps(document, sort_keys=True)
            if memory.config_map != serialized:
                self.kube.ensure_object(best_config_map(ref, document, text))
                memory.config_map = serialized
        export = self._export(body, ref, spec, memory, previous)
        if export is not None:
            fields["export"] = export
        return fields

    def export_pending(self, spec: StudySpec, memory: FinishMemory) -> bool:
        """True while the export Job has yet to finish (the reconciler looks again soon)."""
        if spec.export is None:
            return False
        return memory.export is None or memory.export.phase not in outcome.EXPORT_DONE

    def _export(
        self,
        body: dict[str, Any],
        ref: StudyRef,
        spec: StudySpec,
        memory: FinishMemory,
        previous: dict[str, Any],
    ) -> dict[str, Any] | None:
        if spec.export is None:
            return None
        name = export_job_name(ref.name)
        before = previous.get("export") or {}
        if before.get("phase") in outcome.EXPORT_DONE and memory.export is None:
            # Done before a restart (the Job may be gone by its TTL): keep what status says.
            memory.export = outcome.ExportJobState(before["phase"], before.get("message", ""))
            memory.export_announced = True
        if memory.export is None or memory.export.phase not in outcome.EXPORT_DONE:
            jobs = self.kube.list_jobs(ref.namespace, f"{EXPORT_LABEL}={ref.name}")
            job = next((j for j in jobs if j["metadata"]["name"] == name), None)
            if job is None:
                if self.settings.gateway is not None:
                    record_ledger(self.storage_url, optuna_study_name(ref))
                manifest = export_job(spec, ref, self.storage_url, self.settings, self.export_mount_path)
                job = self.kube.create_job(ref.namespace, manifest)
                if job is not None:
                    log.info("export job created", study=optuna_study_name(ref), job=name)
                memory.export = outcome.ExportJobState("Running")
            else:
                memory.export = outcome.export_job_state(job) or outcome.ExportJobState("Running")
            if job is not None and memory.export.phase not in outcome.EXPORT_DONE:
                self._secure_export(job, ref, memory)
        if memory.export.phase in outcome.EXPORT_DONE and not memory.export_announced:
            memory.export_announced = True
            where = f"PersistentVolumeClaim {spec.export.persistentVolumeClaim}, path {spec.export.path}"
            if memory.export.phase == "Written":
                self.kube.post_event(body, "ExportWritten", f"wrote the export to {where} (Job {name})")
            else:
                self.kube.post_event(
                    body,
                    "ExportFailed",
                    f"the export to {where} failed: {memory.export.message} (see Job {name}'s pod log)",
                    warning=True,
                )
        return outcome.export_status(spec, name, memory.export)

    def _secure_export(self, job: dict[str, Any], ref: StudyRef, memory: FinishMemory) -> None:
        """The stored export Job's gateway Secret exists (once per process: a crash between the Job
        and its Secret leaves a Job whose pod waits for it); one that exists is kept."""
        gateway = self.settings.gateway
        if gateway is None or memory.export_secured or not job["metadata"].get("uid"):
            return
        if not needs_secret(job):
            return
        created = job_created_at(job, default=datetime.datetime.now(datetime.UTC).timestamp())
        self.kube.create_secret(export_secret(job, gateway, optuna_study_name(ref), created))
        memory.export_secured = True


def record_ledger(storage_url: str, study_key: str) -> None:
    """Copy the study's ledger figures into its Optuna study, where the export reads them through
    the trial gateway (which serves Optuna's storage, not the ledger)."""
    ledger = Ledger(storage_url)
    try:
        value = encode_ledger(ledger.charges_by_trial(study_key), ledger.totals(study_key))
    finally:
        ledger.close()
    storage = open_storage(storage_url)
    try:
        study_id = storage.get_study_id_from_name(study_key)
        storage.set_study_system_attr(study_id, ATTR_LEDGER, value)
    finally:
        storage.engine.dispose()
    log.info("ledger figures recorded for the export", study=study_key, trials=len(value["charges"]))


def _final_best(storage_url: str, study_key: str) -> BestConfig | None:
    """The export's best configuration (by mean where confirmation runs happened)."""
    try:
        data = load_study_data(storage_url, study_key)
    except KeyError:
        return None
    return best_config(data, confidence_report(data))
