"""Acting for one study: record pod outcomes, then carry out the planner's Plan on the cluster.

The order is what keeps the books right across crashes:
- a finished pod: its trial's outcome is committed to Optuna, then the pod is settled in the
  ledger (by pod UID, idempotent), and only then is the accounting finalizer removed;
- a new trial (and a retry or a confirmation run): its worst case reserved in the ledger under a
  provisional key, then the trial asked in Optuna, then the reservation rekeyed to the trial, then
  its Job created (deterministic name). A reservation refused (another controller took the last
  room of a shared GPUBudget) creates no trial, so it neither counts toward maxTrials nor shows as
  failed. A controller that dies in between frees the provisional room when it takes the study
  over again (``Ledger.release_provisional``), then finds a RUNNING trial without a Job and
  creates that Job (:meth:`Executor.adopt_unstarted`), so nothing is asked twice.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import optuna
import structlog
from optuna.trial import FrozenTrial, TrialState

from controller.budget.accounting import Charge, pod_charge, worst_case
from controller.budget.ledger import PROVISIONAL_TRIAL, Ledger, provisional_key
from controller.crashpoints import crash_point
from controller.kube.checkpoints import segment_for_job
from controller.kube.client import KubeApi
from controller.kube.manifests import (
    KUBELET_REACTION_SECONDS,
    StudyRef,
    TrialPodSettings,
    build_assignment,
    job_name,
    optuna_study_name,
    reservation_key,
    termination_grace,
    trial_job,
)
from controller.kube.observe import ClusterView, PodOutcome
from controller.kube.provenance import pod_provenance, record_provenance
from controller.kube.trial_access import TrialLifetime, job_created_at, needs_secret, trial_secret
from controller.multinode.manifests import job_companions, speaks_for_trial
from controller.multinode.observe import all_pods_done
from controller.planner import Plan
from controller.spec import StudySpec
from controller.studies.asking import (
    INCOMPLETE_REASON,
    abandon_incomplete,
    active_parameters,
    missing_for_start,
    start_retry,
)
from controller.studies.confirming import pruner_for, start_confirmation
from controller.studies.observe import fail_trial
from controller.studies.segments import new_trial_starts
from trial_worker.contract import ATTR_ATTEMPT, ATTR_SEED, PrunerConfig

log = structlog.get_logger("tunefleet.controller")


@dataclass
class StudyRuntime:
    """What executing needs about one study: its spec, Optuna study, seeds and settings."""

    ref: StudyRef
    spec: StudySpec
    study: optuna.Study
    study_seed: int
    pruner: PrunerConfig
    storage_url: str  # without a password (or the trial gateway's): it goes into every assignment
    settings: TrialPodSettings
    # uids of this study's Jobs whose gateway Secret is known to exist (trial gateway on).
    secured: set[str] = field(default_factory=set)

    @property
    def key(self) -> str:
        return optuna_study_name(self.ref)

    def worst_case(self) -> Charge:
        trial = self.spec.trial
        return worst_case(
            trial.gpus_held,
            trial.cpus_held,
            trial.maxDuration + self.settings.deadline_grace_seconds + KUBELET_REACTION_SECONDS,
            termination_grace(self.spec),
        )


@dataclass
class ExecutionReport:
    """What one reconcile did, for events, status and the scale bench."""

    created: list[int] = field(default_factory=list)
    adopted: list[int] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # number, reason, detail
    settled: int = 0
    stuck: list[PodOutcome] = field(default_factory=list)


class Executor:
    """Carries out recorded outcomes and plans with the Kubernetes API, Optuna and the ledger."""

    def __init__(self, kube: KubeApi, ledger: Ledger) -> None:
        self.kube = kube
        self.ledger = ledger

    # -- outcomes ------------------------------------------------------------------------------

    def record_outcomes(
        self,
        runtime: StudyRuntime,
        view: ClusterView,
        pods: Sequence[dict[str, Any]],
        report: ExecutionReport,
        running: frozenset[int] | None = None,
    ) -> None:
        """Finished pods: outcome to Optuna, charge to the ledger, then release the finalizer.

        Stuck pods (unschedulable, image pulls failing) past their timeout: FAIL the trial with
        the Kubernetes reason and delete the Job. ``running`` (the trials RUNNING in Optuna, when
        known) saves a database round trip for every trial its worker already finished.
        """
        by_uid = {p["metadata"]["uid"]: p for p in pods}
        now = datetime.datetime.now(datetime.UTC)
        for outcome in view.stuck:
            if self._fail(
                runtime, outcome.trial_number, outcome.reason or "stuck", outcome.detail, report, running
            ):
                report.stuck.append(outcome)
            self.kube.delete_job(runtime.ref.namespace, job_name(runtime.ref.name, outcome.trial_number))
        # Where a trial had two pods (a replacement started while the first was terminating),
        # the cause (preemption, node loss) wins over the SIGTERM its Job's end sent the other.
        unsettled = Counter(o.trial_number for o in view.finished if o.uid in by_uid)
        for outcome in sorted(view.finished, key=_cause_first):
            pod = by_uid.get(outcome.uid)
            if pod is None:
                continue
            unsettled[outcome.trial_number] -= 1
            # A multi-node trial's reservation covers all its pods: kept until the last is billed.
            nodes = runtime.spec.trial.nodes
            last = unsettled[outcome.trial_number] == 0 and all_pods_done(view, outcome.trial_number, nodes)
            self._record_finished(runtime, outcome, pod, now, report, running, release=last)

    def _record_finished(
        self,
        runtime: StudyRuntime,
        outcome: PodOutcome,
        pod: dict[str, Any],
        now: datetime.datetime,
        report: ExecutionReport,
        running: frozenset[int] | None,
        release: bool = True,
    ) -> None:
        number = outcome.trial_number
        voice = speaks_for_trial(pod)  # False for ranks > 0 of a multi-node trial
        if outcome.reason is not None:
            if not self._fail(runtime, number, outcome.reason, outcome.detail, report, running) and voice:
                # The worker stored the failure itself; the event still tells it.
                report.failed.append((number, outcome.reason, outcome.detail or ""))
        elif voice:
            # Succeeded means the worker told its outcome; a trial still RUNNING lost that report.
            detail = "the pod succeeded but the trial's outcome was not stored"
            self._fail(runtime, number, "lost", detail, report, running)
        # Image, digest and node for reproducibility.json: known only once the container ran.
        record_provenance(runtime.study, number, pod_provenance(pod))
        crash_point("before-settle")  # test hook, see controller/crashpoints.py
        self.settle_pod(runtime.spec, runtime.ref, pod, now, release=release or runtime.spec.trial.nodes == 1)
        self.kube.remove_accounting_finalizer(pod)
        report.settled += 1

    def settle_pod(
        self,
        spec: StudySpec,
        ref: StudyRef,
        pod: dict[str, Any],
        now: datetime.datetime,
        release: bool = True,
    ) -> None:
        """Charge the pod's allocation against its trial's reservation (idempotent by pod UID);
        ``release`` the reservation's remaining room (not while other pods of the trial may run)."""
        number = int(pod["metadata"]["labels"].get("tunefleet.dev/trial", -1))
        key = reservation_key(ref, number)
        reservation = self.ledger.reservation(key)
        if reservation is None:
            log.warning("no reservation to settle", study=optuna_study_name(ref), trial=number)
            return
        charge, seconds = pod_charge(
            pod, spec.trial.gpus, now, termination_grace(spec), reservation.amount, cpus=spec.trial.cpus
        )
        self.ledger.settle(pod["metadata"]["uid"], key, charge, seconds, release=release)

    def _fail(
        self,
        runtime: StudyRuntime,
        number: int,
        reason: str,
        detail: str | None,
        report: ExecutionReport,
        running: frozenset[int] | None = None,
    ) -> bool:
        if running is not None and number not in running:
            return False  # finished already (the worker told it): nothing to write
        try:
            changed = fail_trial(runtime.study, number, reason, detail)
        except KeyError:
            return False  # a pod labelled with a trial this study does not have
        if changed:
            report.failed.append((number, reason, detail or ""))
            log.info("trial failed", study=runtime.key, trial=number, reason=reason, detail=detail)
        return changed

    # -- trials that were asked but whose Job does not exist ------------------------------------

    def adopt_unstarted(
        self, runtime: StudyRuntime, trials: Iterable[FrozenTrial], view: ClusterView, report: ExecutionReport
    ) -> set[int]:
        """RUNNING trials with neither Job nor pod: create their Job (a crash left them unstarted).

        Only complete ones: a trial whose parameters or seed were never all written is left to
        the planner, which abandons it (``Plan.abandon``).
        """
        adopted: set[int] = set()
        for trial in trials:
            if trial.state != TrialState.RUNNING:
                continue
            if trial.number in view.jobs or trial.number in view.pods:
                continue
            if missing_for_start(trial, runtime.spec.searchSpace):
                continue
            if self._launch(runtime, trial, report):
                adopted.add(trial.number)
                report.adopted.append(trial.number)
        return adopted

    # -- the plan ------------------------------------------------------------------------------

    def execute(
        self,
        runtime: StudyRuntime,
        plan: Plan,
        trials: Sequence[FrozenTrial],
        view: ClusterView,
        report: ExecutionReport,
    ) -> None:
        """abandon -> mark lost -> retry -> start new -> confirm -> drain, as the planner ordered them."""
        study = runtime.study
        by_number = {t.number: t for t in trials}
        for number in plan.abandon:
            self._abandon(runtime, by_number[number], report)
        for number in plan.mark_lost:
            self._fail(runtime, number, "lost", "its Job or pod is gone", report)
            if not view.pods.get(number):
                self.ledger.release(reservation_key(runtime.ref, number))
        seed = runtime.study_seed
        starts: list[Callable[[], optuna.Trial]] = [
            *(partial(start_retry, study, by_number[n]) for n in plan.retry),
            *new_trial_starts(study, runtime.spec, plan, seed),  # asked, or planned PBT segments
            *(partial(start_confirmation, study, by_number[n], seed) for n in plan.confirm),
        ]
        for start in starts:
            if not self._start(runtime, start, report):
                break  # the budget is full: the next reconcile plans again from the ledger
        for number in plan.drain:
            self.kube.delete_job(runtime.ref.namespace, job_name(runtime.ref.name, number))
            self._fail(
                runtime, number, plan.drain_reason or "drained", "the study stopped this trial", report
            )

    def _abandon(self, runtime: StudyRuntime, trial: FrozenTrial, report: ExecutionReport) -> None:
        """A trial a crash left half-asked: it never ran and never will; one is asked anew."""
        missing = missing_for_start(trial, runtime.spec.searchSpace)
        if abandon_incomplete(runtime.study, trial, missing):
            detail = f"never started: {', '.join(missing)} never written; asked anew"
            report.failed.append((trial.number, INCOMPLETE_REASON, detail))
            log.warning("trial abandoned: its asking never finished", study=runtime.key, trial=trial.number,
                        missing=missing)
        self.ledger.release(reservation_key(runtime.ref, trial.number))  # none, unless rekeyed

    def _start(
        self, runtime: StudyRuntime, create_trial: Callable[[], optuna.Trial], report: ExecutionReport
    ) -> bool:
        """Reserve provisionally, create the trial, rekey the reservation to it, create its Job.

        False when the reservation was refused: then no trial was created.
        """
        ref = runtime.ref
        provisional = provisional_key(runtime.key)
        worst = runtime.worst_case()
        if not self.ledger.reserve(provisional, runtime.key, PROVISIONAL_TRIAL, worst, ref.namespace):
            log.info("budget has no room for another trial: none started", study=runtime.key)
            return False
        # Test hooks, see controller/crashpoints.py.
        crash_point("after-provisional")
        try:
            trial = create_trial()
        except BaseException:
            self.ledger.release(provisional)  # no trial holds this room
            raise
        crash_point("after-ask")
        if not self.ledger.rekey(provisional, reservation_key(ref, trial.number), trial.number):
            # Swept by a controller that took the study over: reserve the trial's own key instead.
            log.warning("provisional reservation released before its trial", study=runtime.key,
                        trial=trial.number)
            return self._launch(runtime, trial, report)
        self._create_job(runtime, trial, report)
        return True

    def _launch(
        self, runtime: StudyRuntime, trial: FrozenTrial | optuna.Trial, report: ExecutionReport
    ) -> bool:
        """Reserve the trial's worst case by its own key, then create its Job.

        For trials that exist without a reservation of their own (adopted after a crash): a
        refused reservation fails the trial with reason ``budget``.
        """
        ref = runtime.ref
        number = trial.number
        key = reservation_key(ref, number)
        if not self.ledger.reserve(key, runtime.key, number, runtime.worst_case(), namespace=ref.namespace):
            self._fail(runtime, number, "budget", "the budget cannot cover this trial's worst case", report)
            return False
        self._create_job(runtime, trial, report)
        return True

    def _create_job(
        self, runtime: StudyRuntime, trial: FrozenTrial | optuna.Trial, report: ExecutionReport
    ) -> None:
        """The trial's Job (idempotent by name); its worst case is reserved under its own key."""
        ref = runtime.ref
        number, user_attrs = trial.number, trial.user_attrs
        crash_point("after-reserve")
        assignment = build_assignment(
            runtime.spec,
            ref,
            number,
            int(user_attrs[ATTR_SEED]),  # a trial gets here complete: never a default seed
            runtime.storage_url,
            pruner_for(user_attrs, runtime.pruner),  # confirmation runs are never pruned
            segment_for_job(runtime.spec, ref.name, number, user_attrs),
            active_params=active_parameters(runtime.spec.searchSpace, trial.params),
        )
        job = trial_job(
            runtime.spec, ref, assignment, runtime.settings, attempt=int(user_attrs.get(ATTR_ATTEMPT, 0))
        )
        for companion in job_companions(job, runtime.spec):  # a multi-node trial's Service
            self.kube.ensure_object(companion)
        created = self.kube.create_job(ref.namespace, job)
        if created is not None:
            report.created.append(number)
            self._secure(runtime, created)

    # -- the trial gateway's per-trial Secrets ---------------------------------------------------

    def secure_jobs(self, runtime: StudyRuntime, jobs: Iterable[dict[str, Any]]) -> None:
        """Each live Job's gateway Secret exists: once per Job and runtime, for Jobs a crash (or a
        failed call) left without one after their creation. Nothing without the trial gateway."""
        if runtime.settings.gateway is None:
            return
        for job in jobs:
            uid = job["metadata"].get("uid")
            if uid and uid not in runtime.secured and needs_secret(job):
                self._secure(runtime, job)

    def _secure(self, runtime: StudyRuntime, job: dict[str, Any]) -> None:
        """The stored Job's Secret with its trial's token; one that exists is kept (its pod may have
        read it already, and the chart lets the controller create trial Secrets, not read them)."""
        gateway = runtime.settings.gateway
        if gateway is None:
            return
        lifetime = TrialLifetime(
            job_created_at(job, default=datetime.datetime.now(datetime.UTC).timestamp()),
            runtime.spec.trial.maxDuration,
            runtime.settings.deadline_grace_seconds,
        )
        self.kube.create_secret(trial_secret(job, gateway, runtime.key, lifetime))
        runtime.secured.add(job["metadata"]["uid"])

    # -- study deletion ------------------------------------------------------------------------

    def fail_running(self, study: optuna.Study, reason: str, detail: str) -> list[int]:
        """Mark every RUNNING trial FAIL (e.g. ``studyDeleted``); the study data stays."""
        failed = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if fail_trial(study, trial.number, reason, detail):
                failed.append(trial.number)
        return failed


_CAUSE_ORDER = {"preempted": 0, "lost": 1, "storageUnavailable": 2, "killed": 9}


def _cause_first(outcome: PodOutcome) -> tuple[int, int]:
    return (outcome.trial_number, _CAUSE_ORDER.get(outcome.reason or "", 5))
