"""A watch-fed index of each Study's trial pods and Jobs, so a reconcile does not list them.

kopf already delivers every trial pod's changes to the operator; the index keeps the latest of
each pod by UID. Jobs are not watched: the index holds the Jobs the controller created (from the
create response) and removes the ones it deleted, and a Job whose pod finished is marked as having
counted it, as the Job controller will. Every ``full_resync_s`` a study's next read lists both
from the API and merges the list in, so anything the watch missed (a watch gap, a Job someone else
deleted) is corrected within that time.

The merge keeps whichever copy is newer by ``resourceVersion``: a pod event that arrived while the
list was in flight is not overwritten by the list's older copy, and a pod deleted meanwhile is not
brought back.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kubernetes
from kubernetes.client.exceptions import ApiException

from controller.credentials import SecretUnreadable
from controller.kube.client import KubeApi, _body, status_code
from controller.kube.manifests import ACCOUNTING_FINALIZER, STUDY_LABEL, TRIAL_LABEL

LIST_RESYNC_ENV = "TUNEFLEET_LIST_RESYNC_S"
# How stale a Secret's value may be: the window in which new trial pods still get a rotated-away
# password (and are retried as storageUnavailable).
SECRET_REREAD_S = 10.0


def full_resync_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """How stale the index may get before a study's Jobs and pods are listed again (0: always)."""
    raw = environ.get(LIST_RESYNC_ENV, "60")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"{LIST_RESYNC_ENV} must be a number of seconds >= 0, got {raw!r}")
    return seconds


FINISHED_PHASES = ("Succeeded", "Failed")


def _version(obj: dict[str, Any]) -> int | None:
    """The object's resourceVersion as a number, None where the server made it opaque."""
    raw = (obj.get("metadata") or {}).get("resourceVersion")
    return int(raw) if isinstance(raw, str) and raw.isdigit() else None


def _newer(candidate: int | None, than: int | None) -> bool:
    return candidate is not None and than is not None and candidate > than


@dataclass
class _Objects:
    """One kind (pods by UID, or Jobs by name) of one study, and when it was last listed."""

    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: dict[str, int | None] = field(default_factory=dict)  # key -> version at deletion
    listed_at: float | None = None

    def upsert(self, key: str, obj: dict[str, Any]) -> None:
        known = self.items.get(key)
        if known is not None and _newer(_version(known), _version(obj)):
            return  # an older copy (a list that raced an event) never replaces a newer one
        self.items[key] = obj
        self.deleted.pop(key, None)

    def delete(self, key: str, version: int | None) -> None:
        self.items.pop(key, None)
        self.deleted[key] = version

    def merge_list(self, listed: dict[str, dict[str, Any]], list_version: int | None, now: float) -> None:
        merged: dict[str, dict[str, Any]] = {}
        for key, obj in listed.items():
            gone = self.deleted.get(key, -1)
            if key in self.deleted and (gone is None or not _newer(_version(obj), gone)):
                continue  # deleted after this list was taken
            known = self.items.get(key)
            merged[key] = known if known is not None and _newer(_version(known), _version(obj)) else obj
        for key, known in self.items.items():
            if key not in merged and _newer(_version(known), list_version):
                merged[key] = known  # created after this list was taken
        self.items = merged
        self.deleted.clear()  # the list is the new baseline
        self.listed_at = now


@dataclass
class _StudyObjects:
    pods: _Objects = field(default_factory=_Objects)
    jobs: _Objects = field(default_factory=_Objects)


class ClusterIndex:
    """Trial pods (fed by watch events) and Jobs (fed by the controller's own calls), by study.

    Written from the event loop (pod events) and reconcile threads, read by reconcile threads;
    one lock guards it. An entry is replaced, never changed in place, so a reader's list stays
    as it was read (readers must not change the objects either).
    """

    def __init__(self, full_resync_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.full_resync_s = full_resync_seconds() if full_resync_s is None else full_resync_s
        self.clock = clock
        self._studies: dict[tuple[str, str], _StudyObjects] = {}
        self._lock = threading.Lock()

    def _study(self, namespace: str, study: str) -> _StudyObjects:
        return self._studies.setdefault((namespace, study), _StudyObjects())

    # -- feeding --------------------------------------------------------------------------------

    def pod_event(self, event_type: str | None, pod: dict[str, Any]) -> None:
        """A watch event (ADDED, MODIFIED, DELETED, or None for kopf's initial listing)."""
        meta = pod.get("metadata") or {}
        study = (meta.get("labels") or {}).get(STUDY_LABEL)
        uid = meta.get("uid")
        if study is None or uid is None:
            return
        with self._lock:
            objects = self._study(meta.get("namespace", ""), study)
            phase = (pod.get("status") or {}).get("phase")
            counted = "succeeded" if phase == "Succeeded" else "failed"
            if event_type == "DELETED":
                objects.pods.delete(uid, _version(pod))
                # Its Job controller let it go (the job-tracking finalizer) only once it counted
                # it; a pod that vanished mid-run (node lost, force-deleted) counts as failed.
                self._job_counted(objects, pod, counted)
                return
            objects.pods.upsert(uid, pod)
            if phase in FINISHED_PHASES:
                self._job_counted(objects, pod, counted)

    @staticmethod
    def _job_counted(objects: _StudyObjects, pod: dict[str, Any], counted: str) -> None:
        """A Job with ``backoffLimit: 0`` whose one pod finished has counted it: say so in our
        copy, or a Job whose pod is later removed would look like it awaits a pod (and hold its
        trial's slot until the next full list)."""
        trial = (pod["metadata"].get("labels") or {}).get(TRIAL_LABEL)
        for name, job in list(objects.jobs.items.items()):
            labels = (job.get("metadata") or {}).get("labels") or {}
            status = job.get("status") or {}
            if labels.get(TRIAL_LABEL) == trial and not (status.get("succeeded") or status.get("failed")):
                objects.jobs.items[name] = {**job, "status": {**status, counted: 1}}

    def job_created(self, namespace: str, job: dict[str, Any]) -> None:
        meta = job.get("metadata") or {}
        study = (meta.get("labels") or {}).get(STUDY_LABEL)
        if study is not None:
            with self._lock:
                self._study(namespace, study).jobs.upsert(meta["name"], job)

    def job_deleted(self, namespace: str, name: str) -> None:
        with self._lock:
            for (ns, _), objects in self._studies.items():
                if ns == namespace and name in objects.jobs.items:
                    objects.jobs.delete(name, None)

    def finalizer_removed(self, pod: dict[str, Any]) -> None:
        """Our patch dropped the accounting finalizer: the next reconcile must not settle it again."""
        meta = pod["metadata"]
        study = (meta.get("labels") or {}).get(STUDY_LABEL)
        with self._lock:
            objects = self._studies.get((meta.get("namespace", ""), study or ""))
            known = objects.pods.items.get(meta.get("uid", "")) if objects is not None else None
            if objects is None or known is None:
                return
            finalizers = [f for f in known["metadata"].get("finalizers") or [] if f != ACCOUNTING_FINALIZER]
            objects.pods.items[meta["uid"]] = {
                **known,
                "metadata": {**known["metadata"], "finalizers": finalizers},
            }

    # -- reading --------------------------------------------------------------------------------

    def pods(self, namespace: str, study: str) -> list[dict[str, Any]] | None:
        """The study's pods, or None when they are due to be listed."""
        return self._read(namespace, study, "pods")

    def jobs(self, namespace: str, study: str) -> list[dict[str, Any]] | None:
        return self._read(namespace, study, "jobs")

    def _read(self, namespace: str, study: str, kind: str) -> list[dict[str, Any]] | None:
        with self._lock:
            objects: _Objects = getattr(self._study(namespace, study), kind)
            if objects.listed_at is None or self.clock() - objects.listed_at >= self.full_resync_s:
                return None
            return list(objects.items.values())

    def listed(self, namespace: str, study: str, kind: str, response: dict[str, Any]) -> list[dict[str, Any]]:
        """Merge a list from the API (``kind`` "pods" or "jobs"); returns the merged view."""
        version = _version(response)
        listed: dict[str, dict[str, Any]] = {}
        for obj in response.get("items") or []:
            meta = obj.get("metadata") or {}
            listed[meta.get("uid", "") if kind == "pods" else meta.get("name", "")] = obj
        with self._lock:
            objects: _Objects = getattr(self._study(namespace, study), kind)
            objects.merge_list(listed, version, self.clock())
            return list(objects.items.values())

    def forget(self, namespace: str, study: str) -> None:
        with self._lock:
            self._studies.pop((namespace, study), None)


def study_of_selector(selector: str) -> str | None:
    """The study name when ``selector`` is exactly ``tunefleet.dev/study=<name>``, else None."""
    label, equals, value = selector.partition("=")
    if label != STUDY_LABEL or not equals or not value or "," in value or value.startswith("="):
        return None
    return value


class IndexedKubeApi(KubeApi):
    """:class:`KubeApi` whose per-study Job and pod lists come from a :class:`ClusterIndex`."""

    def __init__(self, api_client: kubernetes.client.ApiClient, index: ClusterIndex) -> None:
        super().__init__(api_client)
        self.index = index
        self._secrets: dict[tuple[str, str, str], tuple[float, str | SecretUnreadable]] = {}
        self._secrets_lock = threading.Lock()

    def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        """The database password is looked up on every reconcile: read it at most once per
        ``SECRET_REREAD_S`` (or per resync period, if shorter); a rotated password, or a Secret
        made readable, counts within that."""
        now = self.index.clock()
        with self._secrets_lock:
            known = self._secrets.get((namespace, name, key))
        if known is None or now - known[0] >= min(SECRET_REREAD_S, self.index.full_resync_s):
            outcome: str | SecretUnreadable
            try:
                outcome = super().read_secret_value(namespace, name, key)
            except SecretUnreadable as problem:
                outcome = problem
            known = (now, outcome)
            with self._secrets_lock:
                self._secrets[(namespace, name, key)] = known
        if isinstance(known[1], SecretUnreadable):
            raise known[1]
        return known[1]

    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        study = study_of_selector(selector)
        if study is None:
            return super().list_jobs(namespace, selector)
        cached = self.index.jobs(namespace, study)
        if cached is not None:
            return cached
        response = self.batch.list_namespaced_job(namespace, label_selector=selector, _preload_content=False)
        return self.index.listed(namespace, study, "jobs", _body(response))

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        study = study_of_selector(selector)
        if study is None:
            return super().list_pods(namespace, selector)
        cached = self.index.pods(namespace, study)
        if cached is not None:
            return cached
        response = self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        return self.index.listed(namespace, study, "pods", _body(response))

    def create_job(self, namespace: str, job: dict[str, Any]) -> dict[str, Any] | None:
        try:
            response = self.batch.create_namespaced_job(namespace, cast(Any, job), _preload_content=False)
        except ApiException as error:
            if status_code(error) == 409:
                self.index.job_created(namespace, job)  # it exists; until a list shows the real one
                return None
            raise
        created = dict(_body(response) or job)
        self.index.job_created(namespace, created)
        return created

    def delete_job(self, namespace: str, name: str) -> None:
        super().delete_job(namespace, name)
        self.index.job_deleted(namespace, name)

    def remove_accounting_finalizer(self, pod: dict[str, Any]) -> None:
        super().remove_accounting_finalizer(pod)
        self.index.finalizer_removed(pod)
