"""``tunefleet run``: a study on this machine, with trials in local worker processes."""

from __future__ import annotations

import math
import os
import queue
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import optuna
import structlog
from optuna.trial import FrozenTrial

from controller.budget.accounting import worst_case
from controller.budget.ledger import PROVISIONAL_TRIAL, Charge, Ledger, provisional_key
from controller.budget.views import study_budget_view
from controller.local.assignments import LocalAssignments
from controller.local.gang import STOP_GRACE_S, LocalGang
from controller.local.interrupts import first_interrupt_as_request
from controller.local.pool import WORKER_ENV, WorkerPool
from controller.local.prefetch import prefetch_depth
from controller.local.progress import StudyProgress
from controller.local.workers import LocalWorker, WorkerEvent
from controller.planner import BudgetView, Observation, Plan, StopReason, TrialView, decide, summarize
from controller.planner.confirmation import (
    ATTR_CONFIRM_WARNING,
    budget_warning,
)
from controller.planner.failures import failure_message
from controller.planner.summary import StudySummary
from controller.spec import StudyManifest, StudySpec
from controller.strategies import Spent, StartCost
from controller.strategies.live import LiveStrategy
from controller.strategies.warmstart import apply_warm_start
from controller.studies.asking import (
    abandon_incomplete,
    missing_for_start,
    queue_for_worker,
    start_retry,
)
from controller.studies.confirming import confirmation_sources, start_confirmation
from controller.studies.observe import fail_trial, observe_trials
from controller.studies.record import (
    ATTR_STARTED_AT,
    ATTR_STOP_DETAIL,
    ATTR_STOP_REASON,
    record_local_run,
    record_study,
    spec_hash,
)
from controller.studies.segments import new_trial_starts
from controller.studies.storage import create_or_load_study, open_storage, resolve_storage_url
from controller.tracking import finish_local_mirror, start_local_mirror
from trial_worker.contract import (
    ATTR_DETAIL,
    Assignment,
    ExitCode,
    TrialReport,
)

LOCAL_GRACE_S = 5
log = structlog.get_logger("tunefleet.local")


@dataclass
class RunOptions:
    """How ``tunefleet run`` runs a study; None means the spec's (or the default) choice."""

    storage_url: str | None = None
    parallel: int | None = None
    workdir: str = field(default_factory=os.getcwd)
    log_dir: Path | None = None
    show_progress: bool = True
    checkpoint_dir: Path | None = None  # PBT checkpoints; .tunefleet/checkpoints/<study> by default


@dataclass(frozen=True)
class RunResult:
    study_name: str
    storage_url: str
    stop_reason: StopReason
    summary: StudySummary
    best: FrozenTrial | None
    pareto: list[FrozenTrial]
    elapsed_s: float
    failure: str | None = None  # why failed trials stopped the study (FailureBudgetExhausted)


@dataclass
class _InFlight:
    """A trial handed to a worker: running (``started`` set) or queued behind its current trial."""

    worker: LocalWorker
    assignment: Assignment
    reservation_key: str
    started: float | None

    @property
    def trial_number(self) -> int:
        return self.assignment.trial_number


class LocalRunner:
    """Observe -> plan -> execute, until the planner says the study is finished."""

    def __init__(
        self, manifest: StudyManifest, options: RunOptions, clock: Callable[[], float] = time.time
    ) -> None:
        self.manifest = manifest
        self.spec: StudySpec = manifest.spec
        self.options = options
        self.name = manifest.metadata.name
        self.storage_url = resolve_storage_url(options.storage_url, self.spec.storage.url, self.name)
        self.parallelism = options.parallel or self.spec.parallelism
        self._clock = clock
        self._events: queue.Queue[WorkerEvent] = queue.Queue()
        self.log_dir = options.log_dir or Path(".tunefleet") / "logs" / self.name
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._pool = WorkerPool(self._events, self.log_dir, options.workdir, self.spec.trial.gpus)
        if self._pool.gpu_capacity is not None:  # no more trials at once than GPU slots
            self.parallelism = min(self.parallelism, self._pool.gpu_capacity)
        self._inflight: dict[int, _InFlight] = {}
        self._gangs: dict[int, LocalGang] = {}  # ranks 1.. of multi-node trials, by trial number
        self._stopping: list[LocalGang] = []  # those of trials rank 0 ended, given time to exit
        self._interrupted = False
        self._interrupt_announced = False
        self._recent_durations: deque[float] = deque(maxlen=20)
        self._start_s = 0.0  # how long starting a new trial took the runner, smoothed
        self._queue_depth = 0  # trials that may wait behind each busy worker (_queue_depth_now)
        self.tracking_url: str | None = None  # the study's MLflow run, with spec.tracking.mlflow
        self.checkpoint_dir = (
            options.checkpoint_dir or Path(".tunefleet") / "checkpoints" / self.name
        ).resolve()
        self._assignments = LocalAssignments(
            self.spec, self.storage_url, self.name, options.workdir, self.log_dir, self.checkpoint_dir
        )

    # -- set-up -------------------------------------------------------------------------------

    def _open(self) -> tuple[optuna.Study, Ledger]:
        storage = open_storage(self.storage_url)
        seed = self.spec.strategy.seed if self.spec.strategy.seed is not None else random.randrange(2**31)
        self._strategy = strategy = LiveStrategy(self.spec, seed)
        study = create_or_load_study(
            storage,
            self.name,
            self.spec.objective.directions,
            sampler=strategy.build_sampler(),
        )
        attrs = record_study(study, self.spec, seed, strategy.choice, self._clock())
        record_local_run(study, self.options.workdir)
        if attrs.get("tunefleet.spec_hash") != spec_hash(self.spec):
            log.warning("the spec changed since this study began; the first record is kept", study=self.name)
        self._study_seed = int(attrs.get("tunefleet.study_seed", seed))
        if self._study_seed != seed:
            study.sampler = strategy.build_sampler(self._study_seed)
        self._started_at = float(attrs.get(ATTR_STARTED_AT, self._clock()))
        apply_warm_start(study, self.spec)
        ledger = Ledger(self.storage_url)
        budget = self.spec.budget
        ledger.set_study_limits(
            self.name,
            gpu_seconds=round(budget.gpuHours * 3600) if budget.gpuHours else None,
            cpu_seconds=round(budget.cpuHours * 3600) if budget.cpuHours else None,
        )
        self._settle_leftovers(study, ledger)
        self._ledger = ledger
        warning = budget_warning(self.spec, self._budget_view())
        if warning is not None and ATTR_CONFIRM_WARNING not in study.user_attrs:
            log.warning("confirmation does not fit the budget", study=self.name, detail=warning)
            study.set_user_attr(ATTR_CONFIRM_WARNING, warning)
        return study, ledger

    def _settle_leftovers(self, study: optuna.Study, ledger: Ledger) -> None:
        """A previous run that died left reservations open: charge what its trials used."""
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        for key, number in ledger.open_reservations(self.name).items():
            trial = by_number.get(number)
            if (
                trial is None
                or trial.datetime_start is None
                or trial.state == optuna.trial.TrialState.WAITING
            ):
                ledger.release(key)  # never ran: asked under a provisional key, or queued
                continue
            end = trial.datetime_complete or _naive_now()
            seconds = max(0.0, (end - trial.datetime_start).total_seconds())
            ledger.settle(f"local:{key}", key, self._charge(seconds), seconds)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        began = time.monotonic()
        self._start_workers()  # their interpreters start while the study is created or loaded
        try:
            study, ledger = self._open()
        except BaseException:
            self._kill_all()
            raise
        self._ledger = ledger
        mirror = start_local_mirror(self.manifest, self.storage_url)  # its own thread, off this loop
        total = self.spec.budget.maxTrials
        log.info(
            "study starting",
            study=self.name,
            storage=_redacted(self.storage_url),
            parallelism=self.parallelism,
        )
        plan = Plan()
        with (
            StudyProgress(self.name, total, enabled=self.options.show_progress) as progress,
            first_interrupt_as_request(self._request_stop),
        ):
            while True:
                try:
                    if self._interrupted and not self._interrupt_announced:
                        self._interrupt_announced = True
                        log.warning("interrupted: stopping running trials (Ctrl-C again to abort)")
                    trials, views = observe_trials(study, self.spec.searchSpace)
                    progress.update(summarize(self.spec, views))
                    self._strategy.refresh(study, trials, self._spent(), self._start_cost())
                    plan = decide(
                        self.spec,
                        self._observation(views),
                        confirmation_sources(trials),
                        converged=self._strategy.converged,
                    )
                    self._execute(study, plan, trials)
                    if plan.finished:
                        break
                    if plan.stop is not None and not (plan.confirm or plan.confirming):
                        self._pool.retire_idle()  # nothing more to start: let them exit meanwhile
                    self._wait_for_events(study)
                except KeyboardInterrupt:  # the second Ctrl-C (the first only asks for a stop)
                    self._kill_all()
                    raise
        self._shutdown()
        trials, views = observe_trials(study)
        summary = summarize(self.spec, views)
        reason = plan.stop or StopReason.INTERRUPTED
        study.set_user_attr(ATTR_STOP_REASON, reason.value)
        failure = self._failure_message(plan, trials)
        if failure is not None:
            study.set_user_attr(ATTR_STOP_DETAIL, failure)
            log.error("failed trials stopped the study", study=self.name, detail=failure)
        ledger.close()
        search = [t for t in trials if t.number not in confirmation_sources(trials)]
        result = RunResult(
            study_name=self.name,
            storage_url=self.storage_url,
            stop_reason=reason,
            summary=summary,
            best=_best_of(self.spec, search) if not self.spec.is_multi_objective else None,
            pareto=study.best_trials if self.spec.is_multi_objective and summary.complete else [],
            elapsed_s=time.monotonic() - began,
            failure=failure,
        )
        if mirror is not None:  # the study is over: wait (bounded) for MLflow to have all of it
            self.tracking_url = finish_local_mirror(mirror, self.name)
        return result

    def _request_stop(self) -> None:
        """The first Ctrl-C (a signal handler: no output here): the next round drains the
        running trials as interrupted, and says so."""
        self._interrupted = True

    def _failure_message(self, plan: Plan, trials: list[FrozenTrial]) -> str | None:
        """The same words the controller puts in the Study's Failed condition, with the first
        failed trial's log from its file."""
        if plan.failure is None:
            return None
        first = next((t for t in trials if t.number == plan.failure.first_failed), None)
        detail = first.user_attrs.get(ATTR_DETAIL) if first is not None else None
        log_path = self.log_dir / f"trial-{plan.failure.first_failed}.log"
        log_tail = log_path.read_text(errors="replace") if log_path.exists() else None
        return failure_message(plan.failure, detail, log_tail)

    def _observation(self, views: tuple[TrialView, ...]) -> Observation:
        self._queue_depth = self._queue_depth_now()  # before the plan: it sizes queue_slots
        return Observation(
            trials=views,
            live=frozenset(self._inflight),
            now=self._clock(),
            started_at=self._started_at,
            budget=self._budget_view(),
            interrupted=self._interrupted,
            parallelism_override=self.parallelism,
            queue_slots=self.parallelism * self._queue_depth,
            seed=self._study_seed,
        )

    def _queue_depth_now(self) -> int:
        """How many trials to ask ahead for each busy worker (see :func:`prefetch_depth`)."""
        if self.parallelism < 2 or self.spec.trial.isolation != "warm" or self.spec.trial.nodes > 1:
            return 0  # (several nodes: a queued trial's other ranks would start before rank 0 claims it)
        depth = prefetch_depth(self._start_s, self._recent_durations)
        if depth != self._queue_depth:
            log.info("trials asked ahead of each busy worker", study=self.name, ahead=depth)
        return depth

    def _start_cost(self) -> StartCost | None:
        """What starting a trial costs this runner, once measured (``auto`` weighs it: choice.py)."""
        return StartCost(self._start_s, self.parallelism) if self._start_s > 0 else None

    def _spent(self) -> Spent:
        settled = self._ledger.totals(self.name).settled
        return Spent(settled.gpu_seconds, settled.cpu_seconds, self._clock() - self._started_at)

    def _budget_view(self) -> BudgetView | None:
        return study_budget_view(self._ledger.totals(self.name), self._worst_case())

    def _worst_case(self) -> Charge:
        trial = self.spec.trial
        return worst_case(trial.gpus_held, trial.cpus_held, trial.maxDuration, LOCAL_GRACE_S)

    def _charge(self, seconds: float) -> Charge:
        """Every rank of a multi-node trial holds its slot for the trial's wall time."""
        return Charge.for_run(self.spec.trial.gpus_held, self.spec.trial.cpus_held, seconds)

    # -- acting -------------------------------------------------------------------------------

    def _execute(self, study: optuna.Study, plan: Plan, trials: list[FrozenTrial]) -> None:
        by_number = {t.number: t for t in trials}
        for number in plan.abandon:
            # Half-asked by a run that died: it never ran; the planner asks another in its place.
            trial = by_number[number]
            abandon_incomplete(study, trial, missing_for_start(trial, self.spec.searchSpace))
        for number in plan.mark_lost:
            fail_trial(study, number, "lost", "its worker was gone (a previous run stopped or crashed)")
        seed = self._study_seed
        starts: list[Callable[[], optuna.Trial]] = [
            partial(start_retry, study, by_number[n]) for n in plan.retry
        ]
        starts += new_trial_starts(study, self.spec, plan, seed)  # asked, or planned PBT segments
        starts += [partial(start_confirmation, study, by_number[n], seed) for n in plan.confirm]
        for create in starts:
            if not self._start(study, create):
                break
        for number in plan.drain:
            flight = self._inflight.pop(number)
            flight.worker.kill()
            self._pool.forget(flight.worker)
            fail_trial(study, number, plan.drain_reason or "drained")
            self._close(flight, time.monotonic())

    def _start(self, study: optuna.Study, create: Callable[[], optuna.Trial]) -> bool:
        """Reserve the worst case, then create the trial and hand it to a worker.

        The reservation comes first, under a provisional key: a refused one leaves no trial behind.
        """
        taken = self._take_worker()
        if taken is None:
            return False  # a worker died and its exit is not handled yet: start on the next round
        worker, behind = taken
        began = time.perf_counter()
        provisional = provisional_key(self.name)
        if not self._ledger.reserve(provisional, self.name, PROVISIONAL_TRIAL, self._worst_case()):
            log.warning("the budget could not cover another trial's worst case", study=self.name)
            if not behind:
                self._pool.idle.append(worker)
            return False
        try:
            trial = create()
        except BaseException:
            self._ledger.release(provisional)  # no trial holds this room
            raise
        key = f"{self.name}/{trial.number}"
        # Cannot fail here: only a starting runner releases provisional keys (_settle_leftovers).
        self._ledger.rekey(provisional, key, trial.number)
        # Should the worker die meanwhile, its exit event hands this trial on (or fails it, retried).
        if behind:
            queue_for_worker(study, trial)
        self._hand_over(worker, self._assignments.for_trial(trial, self._strategy.pruner, behind), key)
        took = time.perf_counter() - began
        self._start_s = took if self._start_s == 0.0 else 0.8 * self._start_s + 0.2 * took
        return True

    def _can_queue_behind(self, worker: LocalWorker) -> bool:
        busy = worker.trial_number is not None  # (an idle worker retired at a stop has none)
        if self.spec.trial.nodes > 1:
            return False  # its other ranks would start before it could claim the trial
        # At least one: a queued trial of a worker that died moves on even when prefetch is off now.
        room = worker.queued < max(1, self._queue_depth)
        return self.spec.trial.isolation == "warm" and busy and room and not worker.exited

    def _take_worker(self) -> tuple[LocalWorker, bool] | None:
        """An idle worker, a new one, or (prefetching) the busy one with the fewest queued: ``behind``."""
        if self._pool.idle:
            return self._pool.idle.pop(), False
        if len(self._pool.workers) < self.parallelism:
            return self._pool.spawn(), False
        behind = [w for w in self._pool.workers.values() if self._can_queue_behind(w)]
        if not behind:
            return None
        return min(behind, key=lambda w: w.queued), True  # the shortest queue (the first on a tie)

    def _hand_over(self, worker: LocalWorker, assignment: Assignment, reservation_key: str) -> None:
        """Runs at once on a free worker; behind a busy one it starts (``started``) when that
        worker reports its current trial."""
        started = time.monotonic() if worker.trial_number is None else None
        worker.assign(assignment)
        self._inflight[assignment.trial_number] = _InFlight(worker, assignment, reservation_key, started)
        if assignment.rendezvous is not None:
            self._gangs[assignment.trial_number] = LocalGang(
                assignment,
                worker.worker_id,
                self._events,
                self.log_dir,
                self.options.workdir,
                WORKER_ENV,
            )

    def _kill_at(self, flight: _InFlight) -> float:
        """When a running trial outlived maxDuration and its grace; never for a queued one."""
        if flight.started is None:
            return math.inf
        return flight.started + self.spec.trial.maxDuration + LOCAL_GRACE_S

    def _start_workers(self) -> None:
        count = min(self.parallelism, self.spec.budget.maxTrials or self.parallelism)
        self._pool.idle.extend(self._pool.spawn() for _ in range(count))

    # -- events -------------------------------------------------------------------------------

    def _wait_for_events(self, study: optuna.Study) -> None:
        timeout = 1.0
        if self._inflight:
            soonest = min(self._kill_at(f) for f in self._inflight.values())
            timeout = max(0.01, min(timeout, soonest - time.monotonic()))
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            event = None
        while event is not None:
            self._handle(study, event)
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                event = None
        self._enforce_max_duration(study)

    def _handle(self, study: optuna.Study, event: WorkerEvent) -> None:
        worker = self._pool.workers.get(event.worker_id)
        if event.rank is not None:
            self._rank_ended(study, event)
            return
        if event.report is not None:
            self._finish_reported(study, event.report, worker)
            return
        # The process ended. A trial it was running lost its worker; one queued behind it moves on.
        if worker is None:
            return
        self._pool.forget(worker)
        code = event.exit_code if event.exit_code is not None else -1
        for number in list(worker.assigned):
            flight = self._inflight.get(number)
            if flight is None or flight.worker is not worker:
                continue
            if flight.started is None:
                self._requeue(flight)
                continue
            del self._inflight[number]
            reason = "killed" if code < 0 else _reason_for_exit(code)
            fail_trial(study, number, reason, f"worker process exited with code {code}")
            self._close(flight, time.monotonic())

    def _rank_ended(self, study: optuna.Study, event: WorkerEvent) -> None:
        """A rank > 0 ended. A failed one ends the whole trial, as a pod failure policy fails the
        whole Job; one that stopped by itself (done, pruned, or the trial was over) changes nothing."""
        number = event.trial_number
        flight = self._inflight.get(number) if number is not None else None
        code = event.exit_code if event.exit_code is not None else -1
        if flight is None or flight.worker.worker_id != event.worker_id:
            return  # the trial already ended (its late rank was stopped)
        if code in (ExitCode.TOLD, ExitCode.NOT_RUNNING):
            return
        assert number is not None
        del self._inflight[number]
        flight.worker.kill()
        self._pool.forget(flight.worker)
        reason = "killed" if code < 0 else _reason_for_exit(code)
        fail_trial(study, number, reason, f"rank {event.rank} exited with code {code}")
        self._close(flight, time.monotonic())

    def _requeue(self, flight: _InFlight) -> None:
        """A queued trial whose worker is gone goes to another: it is still WAITING, never ran."""
        del self._inflight[flight.trial_number]
        log.info("a queued trial moved to another worker", study=self.name, trial=flight.trial_number)
        taken = self._take_worker()
        # The dead worker was forgotten, so a new one can always be started in its place.
        assert taken is not None, "no worker for a requeued trial"
        queued = flight.assignment.model_copy(update={"queued": True})
        self._hand_over(taken[0], queued, flight.reservation_key)

    def _finish_reported(self, study: optuna.Study, report: TrialReport, worker: LocalWorker | None) -> None:
        now = time.monotonic()
        flight = self._inflight.pop(report.trial_number, None)
        gang = self._gangs.pop(report.trial_number, None)
        if gang is not None:
            gang.stop(STOP_GRACE_S)  # rank 0 ended the trial: the others finish or are stopped
            self._stopping.append(gang)
        if flight is not None:
            if report.exit_code == ExitCode.STORAGE_UNAVAILABLE:
                fail_trial(study, report.trial_number, "storageUnavailable", report.reason)
            if report.exit_code != ExitCode.NOT_RUNNING:
                self._recent_durations.append(report.duration_s)
            self._close(flight, now, report.duration_s)
        if worker is None:
            return
        worker.finished(report.trial_number)
        following = self._inflight.get(worker.trial_number) if worker.trial_number is not None else None
        if following is not None and following.started is None:
            following.started = now  # the worker went straight on to its queued trial
        elif self.spec.trial.isolation == "process":
            worker.retire()
            self._pool.forget(worker)
        elif worker.trial_number is None:
            self._pool.idle.append(worker)

    def _enforce_max_duration(self, study: optuna.Study) -> None:
        now = time.monotonic()
        for number, flight in list(self._inflight.items()):
            if now < self._kill_at(flight) or number not in self._inflight:
                continue
            del self._inflight[number]
            flight.worker.kill()
            self._pool.forget(flight.worker)
            fail_trial(
                study, number, "maxDuration", f"exceeded maxDuration ({self.spec.trial.maxDuration} s)"
            )
            self._close(flight, now)
            for queued in [f for f in self._inflight.values() if f.worker is flight.worker]:
                self._requeue(queued)

    def _close(self, flight: _InFlight, now: float, reported_s: float = 0.0) -> None:
        """Charge a trial for the wall time it held its slot (from its start to its report, or to
        now), or release the reservation of one that never started."""
        gang = self._gangs.pop(flight.trial_number, None)
        if gang is not None:
            gang.stop()
        if flight.started is None:
            self._ledger.release(flight.reservation_key)
            return
        seconds = max(now - flight.started, reported_s)
        self._ledger.settle(
            f"local:{flight.reservation_key}", flight.reservation_key, self._charge(seconds), seconds
        )

    def _kill_all(self) -> None:
        self._pool.kill_all()
        for gang in self._gangs.values():
            gang.stop()

    def _shutdown(self) -> None:
        self._pool.shut_down()
        for gang in list(self._gangs.values()):
            gang.stop()
        for gang in self._stopping:  # no rank outlives the run
            gang.wait(STOP_GRACE_S)
            gang.stop()


def _best_of(spec: StudySpec, trials: list[FrozenTrial]) -> FrozenTrial | None:
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.values]
    if not completed:
        return None
    sign = -1.0 if spec.objective.metrics[0].direction == "maximize" else 1.0
    return min(completed, key=lambda t: (sign * t.values[0], t.number))


def _reason_for_exit(code: int) -> str:
    try:
        return ExitCode(code).reason
    except ValueError:
        return f"exit{code}"


def _naive_now():  # type: ignore[no-untyped-def]
    import datetime

    return datetime.datetime.now()


def _redacted(url: str) -> str:
    from trial_worker.contract import redact_url

    return redact_url(url)
