"""``tunefleet controller``: the kopf operator that runs Studies as trial Jobs.

kopf delivers the watch streams (Studies, and trial pods by label); each Study gets one
asyncio task that reconciles it, level-triggered: woken by any change of its objects, and every
few seconds anyway. A reconcile blocks (Optuna, Postgres, the kubernetes client), so it runs in a
worker thread; the event loop only routes wake-ups. kopf adds no finalizer to Studies (only
event handlers are registered), so a Study never blocks its namespace's deletion.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf
import structlog
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from controller.kube.budgets import BudgetKeeper
from controller.kube.cache import ClusterIndex, IndexedKubeApi
from controller.kube.client import load_api_client
from controller.kube.leadership import RENEW_SECONDS, Leadership
from controller.kube.manifests import ACCOUNTING_FINALIZER, GROUP, STUDY_LABEL, STUDY_UID_LABEL, VERSION
from controller.kube.observe import LOST_AFTER_DELETION_S
from controller.kube.reconciler import ControllerConfig, Reconciler

log = structlog.get_logger("tunefleet.controller")
DEBOUNCE_S = 0.05
ORPHAN_SWEEP_S = 30.0
MAX_BACKOFF_S = 30.0
RECONCILE_THREADS = 8
# ``key=value[,key=value]``: this controller handles only the Studies carrying these labels, so
# several controllers can share a namespace (the cluster tests race two on one GPUBudget).
STUDY_SELECTOR_ENV = "TUNEFLEET_STUDY_SELECTOR"


@dataclass
class OperatorOptions:
    config: ControllerConfig
    namespaces: Sequence[str] = ()
    peering: str | None = None
    health_port: int | None = 8080
    metrics_port: int | None = 9090
    kubeconfig: str | None = None
    # Where to append one line per reconcile ("<seconds> <waited since the pod event or ->"), for the bench.
    reconcile_log: str | None = None


@dataclass
class _StudyTask:
    body: dict[str, Any]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    deleted: bool = False
    generation: Any = None
    # When a pod event first asked for a reconcile that has not started yet (perf_counter).
    poked_at: float | None = None


class Operator:
    """The per-Study tasks, leadership and health; kopf handlers call into it."""

    def __init__(self, options: OperatorOptions) -> None:
        self.options = options
        # Trial pods and Jobs by study, fed by the pod watch: a reconcile lists neither.
        self.index = ClusterIndex()
        self.kube = IndexedKubeApi(load_api_client(options.kubeconfig), self.index)
        namespace = options.namespaces[0] if options.namespaces else None
        self.leadership = Leadership(self.kube, options.peering, namespace)
        self.reconciler: Reconciler | None = None
        self.studies: dict[tuple[str, str], _StudyTask] = {}
        self.budgets = BudgetKeeper(self.kube)
        self._budgets_wake = asyncio.Event()
        self._study_labels = _parse_selector(os.environ.get(STUDY_SELECTOR_ENV, ""))
        self.started_at = time.monotonic()
        self.ready = False
        self.stopping = False
        self._background: list[asyncio.Task[None]] = []
        self._health: web.AppRunner | None = None
        self._metrics: Any = None
        # Line-buffered: a bench or test reads it while the controller runs.
        self._reconcile_log = (
            open(options.reconcile_log, "a", buffering=1) if options.reconcile_log else None  # noqa: SIM115
        )
        self._log_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(RECONCILE_THREADS, "reconcile"))
        if self.options.health_port and self._health is None:  # kopf may retry a failed start
            await self._serve_health(self.options.health_port)
        self.reconciler = await self._open_reconciler()

        def tracking_health_changed(namespace: str, name: str) -> None:
            loop.call_soon_threadsafe(self.poke, namespace, name)

        self.reconciler.tracking.on_health_change = tracking_health_changed
        if self.options.metrics_port:
            self._metrics = await asyncio.to_thread(self._serve_metrics, self.options.metrics_port)
            self.reconciler.metrics = self._metrics
            if self._metrics is not None:
                self._metrics.registry.register(self.reconciler.tracking.collector())
        self._background.append(asyncio.create_task(self._lead()))
        self._background.append(asyncio.create_task(self._sweep_orphans()))
        self._background.append(asyncio.create_task(self._keep_budgets()))
        self.ready = True
        log.info(
            "controller started",
            namespaces=list(self.options.namespaces) or "all",
            peering=self.options.peering or "standalone",
            identity=self.leadership.identity,
        )

    async def _open_reconciler(self, attempts: int = 5) -> Reconciler:
        """Replicas started together on a new database race to create its tables; the loser tries
        again at once (the tables are there now) instead of waiting for kopf's retry."""
        for attempt in range(1, attempts + 1):
            try:
                return await asyncio.to_thread(Reconciler, self.options.config, self.kube)
            except Exception as error:
                if attempt == attempts:
                    raise
                log.warning("opening the database failed; retrying", error=repr(error)[:300], attempt=attempt)
                await asyncio.sleep(attempt)
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        self.stopping = True
        tasks = [s.task for s in self.studies.values() if s.task is not None]
        for task in [*tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)
        await asyncio.to_thread(self.leadership.release)
        if self._health is not None:
            await self._health.cleanup()
        if self.reconciler is not None:
            await asyncio.to_thread(self.reconciler.close)
        if self._reconcile_log is not None:
            self._reconcile_log.close()

    # -- events from kopf ----------------------------------------------------------------------

    def on_study(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        labels = meta.get("labels") or {}
        if any(labels.get(k) != v for k, v in self._study_labels.items()):
            return  # another controller's shard
        key = (meta["namespace"], meta["name"])
        current = self.studies.get(key)
        if event_type == "DELETED":
            if current is not None and _uid(current.body) == _uid(body):
                current.body = body
                current.deleted = True
                current.wake.set()
            else:
                self._spawn_cleanup(key, body)
            return
        if current is not None and _uid(current.body) != _uid(body):
            # A new object under the name of a deleted one whose DELETED event has not come yet:
            # that one's task ends and cleans up after it; the new object gets a task of its own.
            current.deleted = True
            current.wake.set()
            current = None
        if current is None:
            current = _StudyTask(body=body, generation=meta.get("generation"))
            self.studies[key] = current
            current.task = asyncio.create_task(
                self._study_loop(key, current), name=f"study {key[0]}/{key[1]}"
            )
            return
        current.body = body
        if meta.get("generation") != current.generation or meta.get("deletionTimestamp"):
            current.generation = meta.get("generation")
            current.wake.set()  # a spec change; our own status patches do not wake the loop

    def on_gpubudget(self, event_type: str | None, body: dict[str, Any]) -> None:
        self.budgets.observe(event_type, body)
        self._budgets_wake.set()

    def poke(self, namespace: str, study: str | None) -> None:
        if study is None:
            return
        current = self.studies.get((namespace, study))
        if current is not None:
            if current.poked_at is None:
                current.poked_at = time.perf_counter()
            current.wake.set()

    def poke_later(self, namespace: str, study: str | None, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.poke, namespace, study)

    # -- per-Study loop ------------------------------------------------------------------------

    async def _study_loop(self, key: tuple[str, str], study: _StudyTask) -> None:
        delay = 0.0
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(study.wake.wait(), timeout=delay)
            if study.deleted:
                break
            if not self.leadership.is_leader or self.reconciler is None:
                study.wake.clear()
                delay = RENEW_SECONDS
                continue
            await asyncio.sleep(DEBOUNCE_S)  # let a burst of pod events coalesce
            study.wake.clear()
            began = time.perf_counter()
            waited = began - study.poked_at if study.poked_at is not None else None
            study.poked_at = None
            try:
                result = await asyncio.to_thread(self.reconciler.reconcile, study.body)
                delay = result.requeue_after
                if result.report is not None and (result.report.settled or result.report.created):
                    self._budgets_wake.set()  # the namespace's GPUBudget status moved
                failures = 0
            except Exception as error:  # noqa: BLE001 - a failed reconcile is retried, never fatal
                failures += 1
                delay = min(MAX_BACKOFF_S, 0.5 * 2**failures)
                # A 403 is a missing grant, not a blip: an error that names what was refused.
                forbidden = isinstance(error, ApiException) and error.status == 403
                (log.error if forbidden else log.warning)(
                    "reconcile forbidden by RBAC; retrying" if forbidden else "reconcile failed; retrying",
                    study=f"{key[0]}/{key[1]}",
                    error=repr(error)[:500],
                    retry_in_s=delay,
                )
            self._record(time.perf_counter() - began, waited)
        if self.studies.get(key) is study:
            self.studies.pop(key)
        if not self.stopping:
            self._spawn_cleanup(key, study.body)

    def _spawn_cleanup(self, key: tuple[str, str], body: dict[str, Any] | None) -> None:
        if self.stopping or not self.leadership.is_leader or self.reconciler is None:
            return
        reconciler = self.reconciler

        async def cleanup() -> None:
            for attempt in range(5):
                try:
                    self.index.forget(*key)  # clean up from fresh lists
                    await asyncio.to_thread(reconciler.study_deleted, *key, body)
                    self.index.forget(*key)
                    log.info("study deleted: jobs removed, running trials failed", study=f"{key[0]}/{key[1]}")
                    return
                except Exception as error:  # noqa: BLE001
                    log.warning(
                        "cleanup of a deleted study failed", study=f"{key[0]}/{key[1]}", error=repr(error)
                    )
                    await asyncio.sleep(2.0 * (attempt + 1))

        self._background.append(asyncio.create_task(cleanup()))

    def _record(self, seconds: float, waited: float | None = None) -> None:
        if self._metrics is not None:
            self._metrics.reconcile_duration.labels(outcome="ok").observe(seconds)
        if self._reconcile_log is not None:
            with self._log_lock:
                # "<seconds> <seconds from the pod event that woke it, or ->"
                self._reconcile_log.write(f"{seconds:.6f} {'-' if waited is None else f'{waited:.6f}'}\n")

    # -- leadership and orphans ----------------------------------------------------------------

    async def _lead(self) -> None:
        was_leader = self.leadership.is_leader
        while True:
            try:
                leader = await asyncio.to_thread(self.leadership.step)
            except Exception as error:  # noqa: BLE001
                log.warning("leader election failed", error=repr(error))
                leader = False
            if leader and not was_leader:
                log.info("this replica now leads", identity=self.leadership.identity)
                for study in self.studies.values():
                    study.wake.set()
            elif was_leader and not leader:
                log.warning("this replica lost the lead", identity=self.leadership.identity)
            was_leader = leader
            await asyncio.sleep(RENEW_SECONDS)

    async def _sweep_orphans(self) -> None:
        """Pods of Studies deleted while no controller ran still hold the finalizer: release them."""
        await asyncio.sleep(ORPHAN_SWEEP_S / 2)
        while True:
            if self.leadership.is_leader and self.reconciler is not None:
                try:
                    pods = await asyncio.to_thread(self._list_trial_pods)
                    held = {
                        (p["metadata"]["namespace"], p["metadata"]["labels"][STUDY_LABEL],
                         p["metadata"]["labels"].get(STUDY_UID_LABEL))
                        for p in pods
                        if ACCOUNTING_FINALIZER in (p["metadata"].get("finalizers") or [])
                    }
                    for namespace, name, uid in held:
                        task = self.studies.get((namespace, name))
                        if task is not None and uid in (None, _uid(task.body)):
                            continue
                        live = await asyncio.to_thread(self.kube.read_study, namespace, name)
                        if live is not None and uid in (None, _uid(live)):
                            continue
                        # Gone, or replaced by a new object of the same name: clean up after it.
                        gone = {"metadata": {"namespace": namespace, "name": name, "uid": uid}}
                        self._spawn_cleanup((namespace, name), gone if uid else None)
                except Exception as error:  # noqa: BLE001
                    log.warning("orphan sweep failed", error=repr(error))
            await asyncio.sleep(ORPHAN_SWEEP_S)

    async def _keep_budgets(self) -> None:
        """GPUBudgets to the ledger, ledger figures to their status: on every change, and each resync."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._budgets_wake.wait(), timeout=self.options.config.resync_s)
            self._budgets_wake.clear()
            if not self.leadership.is_leader or self.reconciler is None:
                continue
            try:
                changed = await asyncio.to_thread(self.budgets.sync, self.reconciler.ledger, self._metrics)
            except Exception as error:  # noqa: BLE001
                log.warning("GPUBudget sync failed", error=repr(error)[:300])
                continue
            for (namespace, _), study in self.studies.items():
                if namespace in changed:
                    study.wake.set()  # a raised or new budget: reconcile now

    def _list_trial_pods(self) -> list[dict[str, Any]]:
        if not self.options.namespaces:
            return self.kube.list_pods_everywhere(STUDY_LABEL)
        pods: list[dict[str, Any]] = []
        for namespace in self.options.namespaces:
            pods.extend(self.kube.list_pods(namespace, STUDY_LABEL))
        return pods

    # -- health and metrics --------------------------------------------------------------------

    async def _serve_health(self, port: int) -> None:
        async def healthz(_: web.Request) -> web.Response:
            return web.json_response(
                {"ok": True, "leader": self.leadership.is_leader, "studies": len(self.studies)}
            )

        async def readyz(_: web.Request) -> web.Response:
            return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        self._health = web.AppRunner(app, access_log=None)
        await self._health.setup()
        await web.TCPSite(self._health, "0.0.0.0", port).start()

    @staticmethod
    def _serve_metrics(port: int) -> Any:
        try:
            from controller.budget.metrics import ControllerMetrics
        except ImportError:
            return None
        metrics = ControllerMetrics()
        metrics.serve(port)
        return metrics


def build_registry(operator: Operator) -> kopf.OperatorRegistry:
    """kopf handlers: event handlers only (no kopf finalizers, no kopf state on our objects).

    Jobs are not watched: every change of a trial that matters shows on its pod (a deleted Job
    deletes its pod), and the periodic resync catches the rest. That halves the events per trial.
    """
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)  # in-cluster, else the kubeconfig

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = 40  # kopf's own events only for errors; ours are explicit
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.error_backoffs = [0.5, 1, 2, 5, 10]
        await operator.start()

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        await operator.stop()

    @kopf.on.event(GROUP, VERSION, "studies", registry=registry)
    async def _study(event: kopf.RawEvent, **_: Any) -> None:
        operator.on_study(event.get("type"), dict(event["object"]))

    @kopf.on.event(GROUP, VERSION, "gpubudgets", registry=registry)
    async def _gpubudget(event: kopf.RawEvent, **_: Any) -> None:
        operator.on_gpubudget(event.get("type"), dict(event["object"]))

    @kopf.on.event("", "v1", "pods", labels={STUDY_LABEL: kopf.PRESENT}, registry=registry)
    async def _pod(event: kopf.RawEvent, **_: Any) -> None:
        pod = event["object"]
        operator.index.pod_event(event.get("type"), dict(pod))
        meta = pod["metadata"]
        study = (meta.get("labels") or {}).get(STUDY_LABEL)
        held = ACCOUNTING_FINALIZER in (meta.get("finalizers") or [])
        phase = (pod.get("status") or {}).get("phase")
        # Only changes the reconcile acts on: a pod to settle, or one being deleted under its trial.
        if held and (phase in ("Succeeded", "Failed") or meta.get("deletionTimestamp")):
            operator.poke(meta.get("namespace", ""), study)
            if meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed"):
                operator.poke_later(meta.get("namespace", ""), study, LOST_AFTER_DELETION_S + 0.5)
        elif event.get("type") == "DELETED" and phase not in ("Succeeded", "Failed"):
            operator.poke(meta.get("namespace", ""), study)

    return registry


def _uid(body: dict[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("uid") or "")


def _parse_selector(text: str) -> dict[str, str]:
    """``a=b,c=d`` -> {"a": "b", "c": "d"}; an error names the variable."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"{STUDY_SELECTOR_ENV}: {part!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def run(options: OperatorOptions, stop_flag: threading.Event | None = None) -> None:
    """Run the operator until interrupted (or ``stop_flag`` is set)."""
    operator = Operator(options)
    registry = build_registry(operator)
    kwargs: dict[str, Any] = (
        {"namespaces": list(options.namespaces)} if options.namespaces else {"clusterwide": True}
    )
    # kopf logs every handler call at INFO: one line per pod change is noise (and CPU) at scale.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(registry=registry, standalone=True, stop_flag=stop_flag, **kwargs)
