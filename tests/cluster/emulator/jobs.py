"""A minimal batch/v1 Job controller, reduced to what trial Jobs exercise.

It follows the real controller where a trial controller can observe it: pods named
`<job>-<5 chars>` with the `batch.kubernetes.io/job-tracking` finalizer, status counters that
are omitted while zero, `backoffLimit`, `activeDeadlineSeconds`, `ttlSecondsAfterFinished`,
and the conditions of Kubernetes 1.31 (SuccessCriteriaMet/Complete, FailureTarget/Failed).
Replacement pods are created at once (no exponential back-off).

Indexed Jobs (`completionMode: Indexed`): one pod per index not yet succeeded, named
`<job>-<index>-<5 chars>`, with the index as annotation and label
`batch.kubernetes.io/job-completion-index`, `hostname: <job>-<index>` and `JOB_COMPLETION_INDEX`
in each container's env; `successPolicy` rules with `succeededIndexes` (and `succeededCount`) end
the Job `Complete` and delete its remaining pods, as Kubernetes 1.33 does. `podFailurePolicy` is
read for `FailJob` rules only (exit codes and pod conditions): a matching failed pod fails the
Job (reason `PodFailurePolicy`); `backoffLimit` covers the rest.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import copy
import logging
import time
from typing import Any

from .defaults import JOB_TRACKING_FINALIZER
from .errors import ApiError
from .store import JOB_KEY, POD_KEY, Store, now_iso
from .watching import Event

logger = logging.getLogger(__name__)

_FINISHED = ("Complete", "Failed")
INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def _index_of(pod: dict[str, Any]) -> int | None:
    raw = (pod["metadata"].get("annotations") or {}).get(INDEX_KEY)
    return int(raw) if raw is not None else None


def _indexes(text: str) -> set[int]:
    """`succeededIndexes` as Kubernetes writes it: "0", "1-3,5"."""
    found: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


def _fails_the_job(spec: dict[str, Any], pod: dict[str, Any]) -> bool:
    """Whether a failed pod matches a `FailJob` rule of the Job's podFailurePolicy."""
    status = pod.get("status") or {}
    for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
        if rule.get("action") != "FailJob":
            continue
        for wanted in rule.get("onPodConditions") or []:
            if any(c.get("type") == wanted.get("type") and c.get("status") == wanted.get("status", "True")
                   for c in status.get("conditions") or []):
                return True
        codes = rule.get("onExitCodes")
        if codes:
            for container in status.get("containerStatuses") or []:
                if codes.get("containerName") not in (None, container.get("name")):
                    continue
                code = ((container.get("state") or {}).get("terminated") or {}).get("exitCode")
                if code is None:
                    continue
                listed = code in (codes.get("values") or [])
                if listed == (codes.get("operator") == "In"):
                    return True
    return False


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    stamp = now_iso()
    return {"type": kind, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": stamp, "lastTransitionTime": stamp}


class JobController:
    """Reconciles every Job on each change of the Job or of one of its pods."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self._job_rt = store.type_for_key(JOB_KEY)
        self._pod_rt = store.type_for_key(POD_KEY)
        self._pending: set[tuple[str, str]] = set()
        self._counted: dict[str, set[str]] = {}  # job uid -> pod uids already in its counters
        self._timers: dict[str, asyncio.TimerHandle] = {}  # job uid -> deadline re-check
        self._ttl_timers: dict[str, asyncio.TimerHandle] = {}
        store.add_listener(self._on_event)

    def stop(self) -> None:
        for timers in (self._timers, self._ttl_timers):
            for timer in timers.values():
                timer.cancel()
            timers.clear()

    def _on_event(self, event: Event) -> None:
        meta = event.obj["metadata"]
        if event.key == JOB_KEY:
            self._schedule(meta["namespace"], meta["name"])
        elif event.key == POD_KEY:
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "Job" and ref.get("controller"):
                    if self.store.uid_exists(ref.get("uid", "")):
                        self._schedule(meta["namespace"], ref["name"])
                    elif event.type != "DELETED":
                        self._release_orphan(event.obj)

    def _schedule(self, namespace: str, name: str) -> None:
        if (namespace, name) not in self._pending:
            self._pending.add((namespace, name))
            self.loop.call_soon(self._run, namespace, name)

    def _run(self, namespace: str, name: str) -> None:
        self._pending.discard((namespace, name))
        try:
            self.reconcile(namespace, name)
        except ApiError as exc:  # lost a race with a client; the next event retries
            logger.debug("job %s/%s: %s", namespace, name, exc.message)
        except Exception:
            logger.exception("job controller failed on %s/%s", namespace, name)

    def _release_orphan(self, pod: dict[str, Any]) -> None:
        """The owner Job is gone: drop the tracking finalizer once the pod is done."""
        meta = pod["metadata"]
        done = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        gone = meta.get("deletionTimestamp") and not self.store.is_stopping(meta["uid"])
        if JOB_TRACKING_FINALIZER in (meta.get("finalizers") or []) and (done or gone):
            self._remove_finalizer(pod)

    def _remove_finalizer(self, pod: dict[str, Any]) -> None:
        def drop(draft: dict[str, Any]) -> None:
            finalizers = draft["metadata"].get("finalizers") or []
            draft["metadata"]["finalizers"] = [f for f in finalizers if f != JOB_TRACKING_FINALIZER]
        with contextlib.suppress(ApiError):  # already gone
            self.store.mutate(self._pod_rt, pod["metadata"]["namespace"], pod["metadata"]["name"],
                              drop)

    def _set_timer(self, uid: str, at: float, namespace: str, name: str) -> None:
        if (old := self._timers.pop(uid, None)) is not None:
            old.cancel()
        delay = max(0.0, at - time.time()) + 0.05
        self._timers[uid] = self.loop.call_later(delay, self._schedule, namespace, name)

    def reconcile(self, namespace: str, name: str) -> None:
        try:
            job = self.store.get(self._job_rt, namespace, name)
        except ApiError:
            return
        uid = job["metadata"]["uid"]
        spec, status = job.get("spec") or {}, copy.deepcopy(job.get("status") or {})
        pods = [p for p in self.store.dependents(uid, POD_KEY)
                if any(r.get("uid") == uid and r.get("controller")
                       for r in p["metadata"].get("ownerReferences") or [])]
        counted = self._counted.setdefault(uid, set())
        active, to_release = [], []
        policy_failure = False
        for pod in pods:
            pod_uid, phase = pod["metadata"]["uid"], (pod.get("status") or {}).get("phase")
            deleting = bool(pod["metadata"].get("deletionTimestamp"))
            stopped = deleting and not self.store.is_stopping(pod_uid)
            if phase in ("Succeeded", "Failed") or stopped:
                if pod_uid not in counted:
                    counted.add(pod_uid)
                    field = "succeeded" if phase == "Succeeded" else "failed"
                    status[field] = status.get(field, 0) + 1
                    index = _index_of(pod)
                    if phase == "Succeeded" and index is not None:
                        done = _indexes(status.get("completedIndexes") or "") | {index}
                        status["completedIndexes"] = ",".join(str(i) for i in sorted(done))
                    if phase == "Failed" and _fails_the_job(spec, pod):
                        policy_failure = True
                to_release.append(pod)
            elif not deleting:
                active.append(pod)
        finished = any(c.get("type") in _FINISHED and c.get("status") == "True"
                       for c in status.get("conditions") or [])
        if job["metadata"].get("deletionTimestamp"):
            finished = True
        if not finished:
            finished = self._progress(job, spec, status, active, policy_failure)
        status["active"] = len(active)
        status["ready"] = sum(1 for p in active
                              if (p.get("status") or {}).get("phase") == "Running")
        status["terminating"] = sum(1 for p in pods if p["metadata"].get("deletionTimestamp")
                                    and self.store.is_stopping(p["metadata"]["uid"]))
        status.setdefault("uncountedTerminatedPods", {})
        for key in ("active", "ready", "terminating", "succeeded", "failed"):
            if not status.get(key):
                status.pop(key, None)  # omitempty, like the real API

        def write(draft: dict[str, Any]) -> None:
            draft["status"] = status
        self.store.mutate(self._job_rt, namespace, name, write, subresource="status")
        for pod in to_release:
            if JOB_TRACKING_FINALIZER in (pod["metadata"].get("finalizers") or []):
                self._remove_finalizer(pod)
        if finished:
            self._schedule_ttl(job, status)

    def _progress(self, job: dict[str, Any], spec: dict[str, Any], status: dict[str, Any],
                  active: list[dict[str, Any]], policy_failure: bool = False) -> bool:
        """Create pods, or finish the Job; returns whether it has finished."""
        meta = job["metadata"]
        if spec.get("suspend"):
            return False
        status.setdefault("startTime", now_iso())
        completions = int(spec.get("completions") or 1)
        deadline = spec.get("activeDeadlineSeconds")
        started = parse_time(status["startTime"]) or time.time()
        reason: tuple[str, str] | None = None
        met = self._success_policy_met(spec, status)
        if status.get("succeeded", 0) >= completions or met:
            why = ("SuccessPolicy", "Matched rules at index 0") if met else (
                "CompletionsReached", "Reached expected number of succeeded pods")
            status["completionTime"] = now_iso()
            status["conditions"] = (status.get("conditions") or []) + [
                _condition("SuccessCriteriaMet", *why), _condition("Complete", *why)]
            self._delete_pods(meta, active)  # the success policy's lingering pods
            return True
        if policy_failure:
            reason = ("PodFailurePolicy", "Container trial for pod failed with a FailJob rule")
        elif status.get("failed", 0) > int(spec.get("backoffLimit", 6)):
            reason = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif deadline is not None and time.time() >= started + int(deadline):
            reason = ("DeadlineExceeded", "Job was active longer than specified deadline")
        if reason is not None:
            status["conditions"] = (status.get("conditions") or []) + [
                _condition("FailureTarget", *reason), _condition("Failed", *reason)]
            self._delete_pods(meta, active)
            return True
        if deadline is not None:
            self._set_timer(meta["uid"], started + int(deadline), meta["namespace"], meta["name"])
        if spec.get("completionMode") == "Indexed":
            done = _indexes(status.get("completedIndexes") or "")
            running = {_index_of(p) for p in active}
            missing = [i for i in range(completions) if i not in done and i not in running]
            for index in missing[: max(0, int(spec.get("parallelism") or 1) - len(active))]:
                active.append(self._create_pod(job, index))
            return False
        wanted = min(int(spec.get("parallelism") or 1), completions - status.get("succeeded", 0))
        for _ in range(wanted - len(active)):
            active.append(self._create_pod(job))
        return False

    @staticmethod
    def _success_policy_met(spec: dict[str, Any], status: dict[str, Any]) -> bool:
        done = _indexes(status.get("completedIndexes") or "")
        for rule in (spec.get("successPolicy") or {}).get("rules") or []:
            wanted = _indexes(rule["succeededIndexes"]) if "succeededIndexes" in rule else None
            hits = done if wanted is None else done & wanted
            if "succeededCount" in rule:
                if len(hits) >= int(rule["succeededCount"]):
                    return True
            elif wanted is not None and wanted <= done:
                return True
        return False

    def _delete_pods(self, meta: dict[str, Any], active: list[dict[str, Any]]) -> None:
        for pod in active:
            with contextlib.suppress(ApiError):
                self.store.delete(self._pod_rt, meta["namespace"], pod["metadata"]["name"])
        active.clear()

    def _create_pod(self, job: dict[str, Any], index: int | None = None) -> dict[str, Any]:
        meta = job["metadata"]
        template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
        pod_meta = template.get("metadata") or {}
        pod_meta.pop("name", None)
        prefix = meta["name"] if index is None else f"{meta['name']}-{index}"
        if index is not None:
            pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), INDEX_KEY: str(index)}
            pod_meta["labels"] = {**(pod_meta.get("labels") or {}), INDEX_KEY: str(index)}
            pod_spec = template.setdefault("spec", {})
            pod_spec["hostname"] = prefix
            for container in pod_spec.get("containers") or []:
                container["env"] = [*(container.get("env") or []),
                                    {"name": "JOB_COMPLETION_INDEX", "value": str(index)}]
        pod_meta.update(
            generateName=f"{prefix}-",
            namespace=meta["namespace"],
            finalizers=[*(pod_meta.get("finalizers") or []), JOB_TRACKING_FINALIZER],
            ownerReferences=[{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                              "uid": meta["uid"], "controller": True,
                              "blockOwnerDeletion": True}],
        )
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta,
               "spec": template.get("spec") or {}}
        return self.store.create(self._pod_rt, meta["namespace"], pod)

    def _schedule_ttl(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        meta = job["metadata"]
        if ttl is None or meta.get("deletionTimestamp") or meta["uid"] in self._ttl_timers:
            return
        stamps = [c.get("lastTransitionTime") for c in status.get("conditions") or []
                  if c.get("type") in _FINISHED]
        finished_at = parse_time(stamps[-1] if stamps else None) or time.time()

        def expire() -> None:
            with contextlib.suppress(ApiError):
                current = self.store.get(self._job_rt, meta["namespace"], meta["name"])
                if current["metadata"]["uid"] == meta["uid"]:
                    self.store.delete(self._job_rt, meta["namespace"], meta["name"],
                                      propagation="Background")

        delay = max(0.0, finished_at + int(ttl) - time.time())
        self._ttl_timers[meta["uid"]] = self.loop.call_later(delay, expire)
