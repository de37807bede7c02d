"""One level-triggered reconcile of one Study: observe -> the shared planner decides -> execute.

Synchronous on purpose: the operator runs each reconcile in a worker thread (Optuna, Postgres and
the kubernetes client all block), one at a time per Study.
"""

from __future__ import annotations

import datetime
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import structlog
from optuna.trial import TrialState

from controller.budget.ledger import Ledger
from controller.budget.metrics import ControllerMetrics
from controller.budget.views import namespace_budget_view, study_budget_view
from controller.credentials import (
    CredentialCheck,
    PasswordSources,
    check_gateway,
    check_password,
    follow_rotation,
    rotate_password,
)
from controller.kube import announcements
from controller.kube import budgets as budgets_mod
from controller.kube import status as status_mod
from controller.kube.client import KubeApi
from controller.kube.deletion import DeletedStudy
from controller.kube.executor import ExecutionReport, Executor, StudyRuntime
from controller.kube.finishing import Finisher
from controller.kube.manifests import (
    EXPORT_MOUNT_PATH,
    StudyRef,
    TrialPodSettings,
    db_credentials_secret,
    optuna_study_name,
    study_selector,
    trial_service_account,
)
from controller.kube.observe import (
    IMAGE_PULL_TIMEOUT_S,
    UNSCHEDULABLE_TIMEOUT_S,
    observe_cluster,
)
from controller.kube.reporting import PassOutcome, ReconcilePass, StatusReporter, trial_views
from controller.kube.study_state import StudyState
from controller.planner import Observation, decide
from controller.planner.confirmation import ATTR_CONFIRM_WARNING, budget_warning
from controller.spec import SpecInvalid, StudySpec, validate_spec
from controller.strategies import Spent
from controller.strategies.live import LiveStrategy
from controller.strategies.warmstart import apply_warm_start
from controller.studies.confirming import confirmation_sources
from controller.studies.identity import earlier_studies, study_key
from controller.studies.observe import observe_trials
from controller.studies.record import ATTR_STARTED_AT, record_study
from controller.studies.storage import create_or_load_study, open_storage
from controller.tracking import TrackingMirror
from trial_worker.contract import connection_url
from trial_worker.trial_reads import CoreReadStorage

log = structlog.get_logger("tunefleet.controller")
RESYNC_S = 5.0
# Database connections kept open: one per reconcile thread (operator.RECONCILE_THREADS).
POOL_SIZE = 8


@dataclass(frozen=True)
class ControllerConfig:
    """How the controller reaches the database and builds trial pods."""

    storage_url: str  # no password: trial pods get it from the mirrored Secret
    db_password: str | None = None
    db_secret: str | None = None  # a Secret (key ``password``) in the controller's namespace
    controller_namespace: str = "default"
    trial_settings: TrialPodSettings = field(default_factory=TrialPodSettings)
    unschedulable_timeout_s: float = UNSCHEDULABLE_TIMEOUT_S
    image_pull_timeout_s: float = IMAGE_PULL_TIMEOUT_S
    resync_s: float = RESYNC_S
    # Where the export Job mounts spec.export's PVC (env TUNEFLEET_EXPORT_MOUNT_PATH).
    export_mount_path: str = field(
        default_factory=lambda: os.environ.get("TUNEFLEET_EXPORT_MOUNT_PATH") or EXPORT_MOUNT_PATH
    )

    @property
    def trial_storage_url(self) -> str:
        """What trial assignments name: the trial gateway when it is on, else the database."""
        gateway = self.trial_settings.gateway
        return gateway.storage_url if gateway is not None else self.storage_url


@dataclass(frozen=True)
class ReconcileResult:
    requeue_after: float
    report: ExecutionReport | None = None
    finished: bool = False


class Reconciler:
    """Reconciles Studies; safe to call from several threads for different Studies."""

    def __init__(self, config: ControllerConfig, kube: KubeApi) -> None:
        self.config = config
        self.kube = kube
        self.storage = _controller_storage(config.storage_url)
        self.ledger = Ledger(config.storage_url, pool_size=POOL_SIZE)
        for engine in (self.storage.engine, self.ledger.engine):
            follow_rotation(engine)  # a rotated database Secret reaches new connections
        self.password_sources = PasswordSources(
            config.controller_namespace, config.db_secret, config.db_password
        )
        self.executor = Executor(kube, self.ledger)
        self.announcer = announcements.Announcer(kube)
        self.finisher = Finisher(
            kube, config.storage_url, config.trial_settings, config.export_mount_path
        )
        # spec.tracking: mirrored to MLflow from the database on its own thread, never in a reconcile.
        self.tracking = TrackingMirror(config.storage_url, read_secret=kube.read_secret_value)
        self.reporter = StatusReporter(kube, self.tracking, self.announcer, self.finisher)
        self._states: dict[tuple[str, str], StudyState] = {}
        self._gateway_namespaces: set[str] = set()  # prepared for the trial gateway by this process
        self._lock = threading.Lock()

    @property
    def metrics(self) -> ControllerMetrics | None:
        return self.reporter.metrics

    @metrics.setter
    def metrics(self, metrics: ControllerMetrics | None) -> None:  # the operator's, when it serves /metrics
        self.reporter.metrics = metrics

    def close(self) -> None:
        self.tracking.close()
        self.ledger.close()
        self.storage.remove_session()

    def state(self, namespace: str, name: str, uid: str | None = None) -> StudyState:
        """The memory kept for the Study ``namespace/name``; with ``uid``, of that object only."""
        with self._lock:
            state = self._states.setdefault((namespace, name), StudyState(uid=uid or ""))
            if uid is not None and state.uid != uid:
                state = self._states[(namespace, name)] = StudyState(uid=uid)
            return state

    # -- the reconcile -------------------------------------------------------------------------

    def reconcile(self, body: dict[str, Any]) -> ReconcileResult:
        meta = body["metadata"]
        previous_status = body.get("status") or {}
        uid = meta.get("uid", "")
        key = study_key(meta["namespace"], meta["name"], uid, previous_status.get("optunaStudy"))
        ref = StudyRef(meta["name"], meta["namespace"], uid, key)
        state = self.state(ref.namespace, ref.name, uid)
        generation = meta.get("generation")
        try:
            spec = validate_spec(body.get("spec"))
        except SpecInvalid as error:
            message = "; ".join(str(e) for e in error.errors)
            self.reporter.write_status(
                ref,
                state,
                status_mod.invalid_status(message, generation, previous_status.get("conditions") or []),
            )
            due = announcements.invalid_due(previous_status, message)
            self.announcer.once(body, state.announced, "Invalid", due, "SpecInvalid", message, warning=True)
            state.runtime = None
            return ReconcileResult(requeue_after=60.0)
        state.announced.discard("Invalid")

        credentials = self._prepare_namespace(ref, spec, state)
        self._announce_credentials(body, state, credentials, previous_status)
        if credentials.blocking:
            blocked = status_mod.credentials_blocked_status(
                credentials.reason, credentials.message, previous_status.get("conditions") or []
            )
            self.reporter.write_status(ref, state, blocked)
            return ReconcileResult(requeue_after=max(30.0, self.config.resync_s))
        try:
            runtime = self._runtime(ref, spec, state)
        except WarmStartFailed as error:
            message = str(error)
            self.reporter.write_status(
                ref,
                state,
                status_mod.invalid_status(message, generation, previous_status.get("conditions") or []),
            )
            due = announcements.invalid_due(previous_status, message)
            self.announcer.once(
                body, state.announced, "WarmStart", due, "WarmStartFailed", message, warning=True
            )
            return ReconcileResult(requeue_after=60.0)
        state.announced.discard("WarmStart")
        self._apply_limits(runtime, state)
        self.tracking.watch(runtime.key, ref.name, spec.tracking, ref.namespace)

        now = datetime.datetime.now(datetime.UTC)
        self._announce_identity(body, ref, state, previous_status)
        selector = study_selector(ref.name)
        jobs = [j for j in self.kube.list_jobs(ref.namespace, selector) if ref.owns(j)]
        self.executor.secure_jobs(runtime, jobs)  # with the trial gateway: each live Job's token
        pods = [p for p in self.kube.list_pods(ref.namespace, selector) if ref.owns(p)]
        view = observe_cluster(
            jobs, pods, now, self.config.unschedulable_timeout_s, self.config.image_pull_timeout_s
        )
        report = ExecutionReport()
        trials, _ = observe_trials(runtime.study, spec.searchSpace)
        running = frozenset(t.number for t in trials if t.state == TrialState.RUNNING)
        self.executor.record_outcomes(runtime, view, pods, report, running)
        if report.failed:
            trials, _ = observe_trials(runtime.study, spec.searchSpace)
        adopted = self.executor.adopt_unstarted(runtime, trials, view, report)
        views = tuple(trial_views(trials, spec))
        totals = self.ledger.totals(runtime.key)
        study_budget = study_budget_view(totals, runtime.worst_case())
        namespace_totals = self.ledger.namespace_totals(ref.namespace, study_key=runtime.key)
        namespace_budget = namespace_budget_view(namespace_totals, runtime.worst_case())
        observation = Observation(
            trials=views,
            live=view.live | adopted,
            now=time.time(),
            started_at=state.started_at,
            budget=study_budget,
            namespace_budget=namespace_budget,
            seed=runtime.study_seed,
        )
        strategy = state.strategy
        if strategy is not None:
            settled = totals.settled
            strategy.refresh(
                runtime.study,
                trials,
                Spent(settled.gpu_seconds, settled.cpu_seconds, time.time() - state.started_at),
            )
            runtime.pruner = strategy.pruner  # a revised pruner applies to the trials started next
        self._warn_confirmation_budget(body, runtime, state, study_budget)
        plan = decide(
            spec,
            observation,
            confirmation_sources(trials),
            converged=strategy.converged if strategy is not None else False,
        )
        self.executor.execute(runtime, plan, trials, view, report)
        if plan.abandon or plan.mark_lost or plan.retry or plan.start_new or plan.confirm or plan.drain:
            trials, _ = observe_trials(runtime.study, spec.searchSpace)
        if report.stuck:
            first = report.stuck[0]
            state.stuck = (first.reason or "Stuck", f"trial {first.trial_number}: {first.detail}")
        elif any(o.kind == "running" for outcomes in view.pods.values() for o in outcomes):
            state.stuck = None
        if report.settled or report.created or report.adopted or plan.mark_lost:
            totals = self.ledger.totals(runtime.key)
            if namespace_totals is not None:
                namespace_totals = self.ledger.namespace_totals(ref.namespace, study_key=runtime.key)
        waiting = (
            budgets_mod.budget_waiting(namespace_totals, datetime.datetime.now(datetime.UTC))
            if plan.budget_waiting
            else None
        )
        self.reporter.report(
            ReconcilePass(body, ref, runtime, state),
            PassOutcome(plan, trials, report, totals, namespace_totals, waiting),
        )
        if plan.finished:
            # Sooner while the export Job runs: its Event and status.export follow it.
            pending = self.finisher.export_pending(spec, state.finish)
            requeue = self.config.resync_s if pending else max(30.0, self.config.resync_s)
            return ReconcileResult(requeue_after=requeue, report=report, finished=True)
        if waiting is not None:
            requeue = budgets_mod.waiting_requeue(waiting[2], self.config.resync_s)
            return ReconcileResult(requeue_after=requeue, report=report)
        return ReconcileResult(requeue_after=self.config.resync_s, report=report)

    # -- set-up, once per Study (or per change) ------------------------------------------------

    def _prepare_namespace(self, ref: StudyRef, spec: StudySpec, state: StudyState) -> CredentialCheck:
        """The trial ServiceAccount and the mirrored database password in the study's namespace."""
        if self.config.trial_settings.gateway is not None:
            return self._prepare_gateway_namespace(ref.namespace)
        check = check_password(self.kube, self.password_sources, ref.namespace, spec.storage.secretRef)
        if check.controller_password is not None:
            rotate_password(check.controller_password, source=f"Secret {self.config.db_secret}")
        if check.blocking or state.namespace_ready == check.password:
            return check
        settings = self.config.trial_settings
        self.kube.ensure_object(trial_service_account(ref.namespace, settings))
        self.kube.ensure_object(db_credentials_secret(ref.namespace, check.password, settings))
        state.namespace_ready = check.password
        return check

    def _prepare_gateway_namespace(self, namespace: str) -> CredentialCheck:
        """With the trial gateway: the trial ServiceAccount, and no password in the namespace.

        The mirrored password Secret an earlier version left is deleted, once per namespace and
        process (its trial pods, if any still run, read it at their start).
        """
        check = check_gateway(self.kube, self.password_sources)
        if check.controller_password is not None:
            rotate_password(check.controller_password, source=f"Secret {self.config.db_secret}")
        with self._lock:
            if namespace in self._gateway_namespaces:
                return check
        settings = self.config.trial_settings
        self.kube.ensure_object(trial_service_account(namespace, settings))
        if self.kube.delete_secret(namespace, settings.db_secret_name):
            log.info("deleted the mirrored database password", namespace=namespace,
                     secret=settings.db_secret_name)
        with self._lock:
            self._gateway_namespaces.add(namespace)
        return check

    def _announce_credentials(
        self, body: dict[str, Any], state: StudyState, check: CredentialCheck, previous: dict[str, Any]
    ) -> None:
        """A Secret that cannot be read: an error log line when this process first meets it, and an
        Event when the Study's condition does not say so yet."""
        before, state.credentials = state.credentials, check
        new_here = before is None or before.message != check.message
        if check.problem is None or not new_here:
            return  # said already by this process (the status patch may not be in ``body`` yet)
        meta = body["metadata"]
        log.error("cannot read a database Secret", study=f"{meta['namespace']}/{meta['name']}",
                  reason=check.reason, detail=check.message)
        shown: dict[str, Any] = next(
            (c for c in previous.get("conditions") or [] if c.get("type") == status_mod.CREDENTIALS), {}
        )
        if shown.get("status") != "False" or shown.get("message") != check.message:
            self.kube.post_event(body, check.reason, check.message, warning=True)

    def _runtime(self, ref: StudyRef, spec: StudySpec, state: StudyState) -> StudyRuntime:
        spec_json = spec.model_dump_json()
        if state.runtime is not None and state.spec_json == spec_json and state.runtime.ref == ref:
            return state.runtime
        seed = spec.strategy.seed if spec.strategy.seed is not None else random.randrange(2**31)
        strategy = LiveStrategy(spec, seed)
        key = optuna_study_name(ref)
        study = create_or_load_study(
            self.storage, key, spec.objective.directions, sampler=strategy.build_sampler()
        )
        attrs = record_study(study, spec, seed, strategy.choice, time.time())
        study_seed = int(attrs.get("tunefleet.study_seed", seed))
        if study_seed != seed:
            study.sampler = strategy.build_sampler(study_seed)
        state.started_at = float(attrs.get(ATTR_STARTED_AT, time.time()))
        try:
            apply_warm_start(study, spec)  # once per study: enqueued params run first
        except ValueError as error:
            raise WarmStartFailed(str(error)) from error
        state.strategy = strategy
        runtime = StudyRuntime(
            ref=ref,
            spec=spec,
            study=study,
            study_seed=study_seed,
            pruner=strategy.pruner,
            storage_url=self.config.trial_storage_url,
            settings=self.config.trial_settings,
        )
        if state.runtime is None:
            # This process takes the study over (leader election: no other controller starts its
            # trials): room held provisionally by a controller that died before its trial existed
            # or was rekeyed is freed before adopt_unstarted reserves for the trials it left.
            released = self.ledger.release_provisional(key)
            if released:
                log.info("released provisional reservations", study=key, count=released)
        state.runtime = runtime
        state.spec_json = spec_json
        return runtime

    def _announce_identity(
        self, body: dict[str, Any], ref: StudyRef, state: StudyState, previous: dict[str, Any]
    ) -> None:
        """A new object whose name an earlier Study had: say where that one's data is, once
        (until its status names its own Optuna study)."""
        if not announcements.identity_due(previous):
            state.announced.discard("Identity")
            return
        if "Identity" in state.announced:
            return
        state.announced.add("Identity")
        earlier = earlier_studies(self.storage, ref.namespace, ref.name, ref.key)
        if earlier:
            message = announcements.earlier_data_message(ref.name, ref.uid, ref.key, earlier)
            self.kube.post_event(body, "EarlierStudyKept", message)

    def _apply_limits(self, runtime: StudyRuntime, state: StudyState) -> None:
        budget = runtime.spec.budget
        limits = (
            round(budget.gpuHours * 3600) if budget.gpuHours else None,
            round(budget.cpuHours * 3600) if budget.cpuHours else None,
        )
        if state.limits != limits:
            self.ledger.set_study_limits(runtime.key, gpu_seconds=limits[0], cpu_seconds=limits[1])
            state.limits = limits

    def _warn_confirmation_budget(
        self, body: dict[str, Any], runtime: StudyRuntime, state: StudyState, budget: Any
    ) -> None:
        """Once per Study: say at the start when the budget cannot cover ``spec.confirm``.

        The warning kept in the study's attributes is the record that it was said.
        """
        if runtime.spec.confirm is None or "ConfirmBudget" in state.announced:
            return
        state.announced.add("ConfirmBudget")
        warning = budget_warning(runtime.spec, budget)
        if warning is None or ATTR_CONFIRM_WARNING in runtime.study.user_attrs:
            return
        runtime.study.set_user_attr(ATTR_CONFIRM_WARNING, warning)
        self.kube.post_event(body, "ConfirmationBudget", warning, warning=True)


    # -- study deletion ------------------------------------------------------------------------

    def study_deleted(self, namespace: str, name: str, body: dict[str, Any] | None = None) -> None:
        """Clean up after a deleted Study (:class:`~controller.kube.deletion.DeletedStudy`); its
        Optuna study and ledger rows stay. ``body`` is the deleted object, when known."""
        state = self._states.get((namespace, name))
        cleanup = DeletedStudy(self.kube, self.storage, self.executor, self.ledger)
        ref = cleanup.resolve(namespace, name, body)
        runtime = state.runtime if state is not None and state.uid == ref.uid else None
        cleanup.clean_up(ref, runtime.spec if runtime is not None else None)
        self.tracking.unwatch(optuna_study_name(ref))  # one last pass: the trials failed above
        with self._lock:
            ours = state is not None and state.uid in ("", ref.uid)  # not a new object's memory
            if ours and self._states.get((namespace, name)) is state:
                self._states.pop((namespace, name))
        if self.metrics is not None:
            self.metrics.forget_study(namespace, name)


class WarmStartFailed(Exception):
    """``warmStart.fromStudy`` names a study that is missing or measures something else."""


def _controller_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage with a pool for every reconcile thread and no ping per checkout.

    A connection broken by a database restart fails one reconcile, which is retried; SQLAlchemy
    then drops the whole stale pool. Pinging on every checkout would double the round trips.
    """
    full_url = connection_url(url)
    if not full_url.startswith("postgresql"):
        return open_storage(url)
    engine_kwargs = {"pool_size": POOL_SIZE, "max_overflow": 4, "pool_pre_ping": False}
    return CoreReadStorage(full_url, engine_kwargs=engine_kwargs)
