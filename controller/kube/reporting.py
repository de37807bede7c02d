"""What one reconcile tells: the Study's status, its Events, and once it ends its stop reason and
export. The reconciler decides and acts; this says what came of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from controller.budget.ledger import NamespaceTotals, Totals
from controller.budget.metrics import ControllerMetrics
from controller.crashpoints import crash_point
from controller.kube import announcements
from controller.kube import budgets as budgets_mod
from controller.kube import outcome as outcome_mod
from controller.kube import status as status_mod
from controller.kube.client import KubeApi
from controller.kube.executor import ExecutionReport, StudyRuntime
from controller.kube.failures import failure_text
from controller.kube.finishing import Finisher
from controller.kube.manifests import StudyRef
from controller.kube.study_state import StudyState
from controller.planner import Plan, summarize
from controller.planner.summary import best_trial
from controller.spec import StudySpec
from controller.studies.confirming import confirmation_sources
from controller.studies.observe import trial_view
from controller.studies.record import ATTR_STOP_DETAIL, ATTR_STOP_REASON
from controller.tracking import TrackingMirror


@dataclass(frozen=True)
class ReconcilePass:
    """One reconcile of one Study: the object as it was read, and what the controller holds for it."""

    body: dict[str, Any]
    ref: StudyRef
    runtime: StudyRuntime
    state: StudyState

    @property
    def spec(self) -> StudySpec:
        return self.runtime.spec

    @property
    def previous(self) -> dict[str, Any]:
        """The status as the object carried it: what was said before this pass."""
        return self.body.get("status") or {}

    @property
    def generation(self) -> int | None:
        generation: int | None = self.body["metadata"].get("generation")
        return generation


@dataclass(frozen=True)
class PassOutcome:
    """What the pass decided and did, and the budget figures after it."""

    plan: Plan
    trials: list[optuna.trial.FrozenTrial]
    report: ExecutionReport
    totals: Totals
    namespace_totals: NamespaceTotals | None = None
    waiting: tuple[str, str, float] | None = None  # (reason, message, seconds) while a budget waits


class StatusReporter:
    """Writes a Study's status and posts its Events; finishes it (stop reason, export) at the end."""

    def __init__(
        self,
        kube: KubeApi,
        tracking: TrackingMirror,
        announcer: announcements.Announcer,
        finisher: Finisher,
    ) -> None:
        self.kube = kube
        self.tracking = tracking
        self.announcer = announcer
        self.finisher = finisher
        self.metrics: ControllerMetrics | None = None  # set by the operator when it serves /metrics

    def report(self, current: ReconcilePass, outcome: PassOutcome) -> None:
        """The status of the Study after this pass, its Events, and its end when it ended."""
        spec, state, previous, plan = current.spec, current.state, current.previous, outcome.plan
        views = tuple(trial_views(outcome.trials, spec))
        summary = summarize(spec, views)
        confirm_of = confirmation_sources(outcome.trials)
        search_views = tuple(v for v in views if v.number not in confirm_of)  # reruns never compete
        best = best_trial(spec, search_views)
        phase = status_mod.phase_for(plan, summary, invalid=False)
        now = status_mod.now_iso()
        failure = self._failure_text(current, plan)
        waiting = outcome.waiting
        conditions = status_mod.render_conditions(
            [
                *status_mod.conditions_for(
                    phase,
                    plan,
                    stuck=state.stuck,
                    budget_waiting=waiting[:2] if waiting else None,
                    failure=failure,
                ),
                *(status_mod.Condition(*fields) for fields in self.tracking.conditions(current.runtime.key)),
            ],
            previous.get("conditions") or [],
            now,
        )
        if state.credentials is not None:  # where the trial pods' password came from, or why not
            check = state.credentials
            credentials = status_mod.Condition(
                status_mod.CREDENTIALS, check.problem is None, check.reason, check.message
            )
            conditions = status_mod.replace_conditions(
                conditions, [credentials], previous.get("conditions") or [], now
            )
        self._update_metrics(current, outcome)
        start_time = previous.get("startTime") or (now if summary.running or summary.finished else None)
        completion = previous.get("completionTime") if plan.finished else None
        if plan.finished and completion is None:
            completion = now
        status = status_mod.study_status(
            spec,
            phase=phase,
            conditions=conditions,
            summary=summary,
            best=best,
            budget=status_mod.BudgetFigures(),
            generation=current.generation,
            start_time=start_time,
            completion_time=completion,
            stop=plan.stop,
            optuna_study=current.runtime.key,
        )
        status["budget"] = budgets_mod.study_budget_status(outcome.totals, outcome.namespace_totals)
        self._analysis_status(spec, state, search_views, status)
        if plan.finished:
            status.update(self._finish(current, plan, summary.finished, failure))
        self._events_before_status(current, outcome, summary.complete, failure)
        self.write_status(current.ref, state, status)
        self._events_after_status(current, outcome, phase)

    def write_status(self, ref: StudyRef, state: StudyState, status: dict[str, Any]) -> None:
        """Patch the status unless it says what was written last (conditions' times aside)."""
        comparable = {k: v for k, v in status.items() if k != "conditions"}
        comparable["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []
        ]
        if state.last_status == comparable:
            return
        self.kube.patch_study_status(ref.namespace, ref.name, status)
        state.last_status = comparable

    def _update_metrics(self, current: ReconcilePass, outcome: PassOutcome) -> None:
        if self.metrics is None:
            return
        totals = outcome.totals
        self.metrics.update_study(
            current.ref.namespace,
            current.ref.name,
            totals.settled.gpu_seconds,
            totals.reserved.gpu_seconds,
            budgets_mod.study_remaining_seconds(totals, outcome.namespace_totals),
            _trials_by_state(outcome.trials),
        )

    def _failure_text(self, current: ReconcilePass, plan: Plan) -> str | None:
        """Why failed trials stopped the study (read once: the first failed trial's log)."""
        state = current.state
        if plan.failure is None:
            state.failure = None
            return None
        if state.failure is None or state.failure[0] != plan.failure.first_failed:
            text = failure_text(self.kube, current.ref, current.runtime.study, plan.failure, current.previous)
            state.failure = (plan.failure.first_failed, text)
        return state.failure[1]

    def _analysis_status(
        self, spec: StudySpec, state: StudyState, search: tuple[Any, ...], status: dict[str, Any]
    ) -> None:
        """``status.strategy``, and for several metrics the Pareto set so far (capped)."""
        if state.strategy is not None:
            status["strategy"] = outcome_mod.strategy_status(state.strategy.choice)
        if not spec.is_multi_objective:
            return
        complete = sum(1 for t in search if t.state == "COMPLETE")
        if state.pareto is None or state.pareto[0] != complete:
            front = outcome_mod.pareto_from_views(spec, search)
            state.pareto = (complete, outcome_mod.pareto_status_from_views(spec, front))
        status["paretoFront"] = state.pareto[1]

    def _events_before_status(
        self, current: ReconcilePass, outcome: PassOutcome, complete: int, failure: str | None
    ) -> None:
        """StudyStarted, StudyFinished, FailureBudgetExhausted: posted before the status that
        shows them, under names the API server refuses twice (see
        :mod:`controller.kube.announcements`)."""
        body, previous, plan, report = current.body, current.previous, outcome.plan, outcome.report
        memory, once = current.state.announced, self.announcer.once
        jobs = report.created or report.adopted
        if once(body, memory, "Started", announcements.started_due(previous, bool(jobs)), "StudyStarted",
                f"started trial Jobs {jobs}", occasion=""):
            crash_point("after-started-posted")  # test hook, see controller/crashpoints.py
        why = plan.stop.value if plan.stop else "finished"
        finished = announcements.finished_due(previous, plan.finished)
        ended = f"the study ended: {why} ({complete} trials complete)"
        end = f"g{current.generation or 0}"  # a larger maxTrials reopens a study: one end per spec
        if once(body, memory, "Finished", finished, "StudyFinished", ended, occasion=end):
            crash_point("after-finished-posted")
        if failure is not None:
            once(body, memory, "FailureBudget", finished, "FailureBudgetExhausted", failure, warning=True,
                 occasion=end)

    def _events_after_status(self, current: ReconcilePass, outcome: PassOutcome, phase: str) -> None:
        """Per-trial Events for what this reconcile did, and StudySuspended once the status
        shows it (see :mod:`controller.kube.announcements`)."""
        body, previous, report = current.body, current.previous, outcome.report
        for number, reason, detail in report.failed:
            self.kube.post_event(
                body, "TrialFailed", f"trial {number} failed: {reason}: {detail}", warning=True
            )
        for stuck in report.stuck:
            self.kube.post_event(
                body,
                "TrialPodStuck",
                f"trial {stuck.trial_number}: {stuck.reason}: {stuck.detail}",
                warning=True,
            )
        self.announcer.once(
            body, current.state.announced, "Suspended", announcements.suspended_due(previous, phase),
            "StudySuspended", "spec.suspend is true: no new trials start",
        )

    def _finish(
        self, current: ReconcilePass, plan: Plan, finished_trials: int, failure: str | None
    ) -> dict[str, Any]:
        """Stop reason, then the export's best configuration (status, ConfigMap) and the export."""
        study = current.runtime.study
        attrs = study.user_attrs
        if plan.stop is not None and attrs.get(ATTR_STOP_REASON) != plan.stop.value:
            study.set_user_attr(ATTR_STOP_REASON, plan.stop.value)
        if failure is not None and attrs.get(ATTR_STOP_DETAIL) != failure:
            study.set_user_attr(ATTR_STOP_DETAIL, failure)
        return self.finisher.finish(
            current.body, current.ref, current.spec, current.state.finish, finished_trials, current.previous
        )


def trial_views(trials: list[optuna.trial.FrozenTrial], spec: StudySpec) -> list[Any]:
    """The planner's view of each trial."""
    return [trial_view(t, spec.searchSpace) for t in trials]


def _trials_by_state(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts
