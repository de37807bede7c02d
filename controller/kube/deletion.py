"""After a Study is deleted: its Jobs deleted, its running trials failed, its pods settled.

A Study carries no finalizer, so this runs after the object is gone, from its last body when the
controller saw the deletion, else from its trial pods (a controller that was down then; the orphan
sweep). It touches only that object's Jobs and pods: a new Study applied under the same name is
another object (``tunefleet.dev/study-uid``), with its own. The Optuna study and the ledger stay,
so ``tunefleet export`` still works.
"""

from __future__ import annotations

import datetime
from typing import Any

import optuna

from controller.budget.ledger import Ledger
from controller.kube.client import KubeApi
from controller.kube.executor import Executor
from controller.kube.manifests import STUDY_UID_LABEL, StudyRef, optuna_study_name, study_selector
from controller.spec import SpecInvalid, StudySpec, validate_spec
from controller.studies.identity import study_key
from controller.studies.record import ATTR_SPEC


class DeletedStudy:
    """Cleans up after one deleted Study."""

    def __init__(
        self, kube: KubeApi, storage: optuna.storages.BaseStorage, executor: Executor, ledger: Ledger
    ) -> None:
        self.kube = kube
        self.storage = storage
        self.executor = executor
        self.ledger = ledger

    def resolve(self, namespace: str, name: str, body: dict[str, Any] | None) -> StudyRef:
        """The deleted object: from its last body, else from its pods' uid label, else by name
        alone (objects from before the label)."""
        meta = (body or {}).get("metadata") or {}
        recorded = ((body or {}).get("status") or {}).get("optunaStudy")
        uid = meta.get("uid") or self._uid_from_pods(namespace, name)
        if not uid:
            return StudyRef(name, namespace)
        key = recorded or study_key(namespace, name, uid)
        if not recorded and key not in {s.study_name for s in self.storage.get_all_studies()}:
            key = study_key(namespace, name, "")  # an upgraded object keeps the key it began with
        return StudyRef(name, namespace, uid, key)

    def _uid_from_pods(self, namespace: str, name: str) -> str:
        for pod in self.kube.list_pods(namespace, study_selector(name)):
            uid = (pod["metadata"].get("labels") or {}).get(STUDY_UID_LABEL)
            if uid:
                return str(uid)
        return ""

    def clean_up(self, ref: StudyRef, spec: StudySpec | None) -> None:
        """Delete its Jobs, FAIL its RUNNING trials ``studyDeleted``, settle and release its pods,
        release its open reservations. ``spec``: the one it ran with, if known (else recorded)."""
        key = optuna_study_name(ref)
        for job in self.kube.list_jobs(ref.namespace, study_selector(ref.name)):
            if ref.owns(job):
                self.kube.delete_job(ref.namespace, job["metadata"]["name"])
        try:
            study: optuna.Study | None = optuna.load_study(study_name=key, storage=self.storage)
        except KeyError:
            study = None
        if study is not None:
            self.executor.fail_running(study, "studyDeleted", "the Study was deleted")
            if spec is None:
                spec = _recorded_spec(study)
        now = datetime.datetime.now(datetime.UTC)
        for pod in self.kube.list_pods(ref.namespace, study_selector(ref.name)):
            if not ref.owns(pod):
                continue
            if spec is not None:
                self.executor.settle_pod(spec, ref, pod, now)
            self.kube.remove_accounting_finalizer(pod)
        for open_key in self.ledger.open_reservations(key):
            self.ledger.release(open_key)


def _recorded_spec(study: optuna.Study) -> StudySpec | None:
    raw = study.user_attrs.get(ATTR_SPEC)
    try:
        return validate_spec(raw) if raw is not None else None
    except SpecInvalid:
        return None
