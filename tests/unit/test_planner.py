"""The pure planner: decisions from observed trials, live work, budget and time."""

from __future__ import annotations

from typing import Any

import yaml

from controller.planner import BudgetView, Observation, StopReason, TrialView, decide, summarize
from controller.spec import StudySpec, parse_study_text
from tests.support.specs import study_document

NOW = 1_000_000.0


def spec_with(**changes: Any) -> StudySpec:
    return parse_study_text(yaml.safe_dump(study_document(**changes))).spec


def observe(trials: list[TrialView], live: set[int] | None = None, **kwargs: Any) -> Observation:
    running = {t.number for t in trials if t.state == "RUNNING"} if live is None else live
    return Observation(trials=tuple(trials), live=frozenset(running), now=NOW, started_at=NOW - 10, **kwargs)


def done(number: int, value: float = 1.0, **kwargs: Any) -> TrialView:
    return TrialView(number=number, state="COMPLETE", values=(value,), params={"x": float(number)}, **kwargs)


def running(number: int) -> TrialView:
    return TrialView(number=number, state="RUNNING", params={"x": float(number)})


def failed(number: int, reason: str, **kwargs: Any) -> TrialView:
    return TrialView(number=number, state="FAIL", params={"x": float(number)}, reason=reason, **kwargs)


def test_fills_free_slots_up_to_parallelism() -> None:
    plan = decide(spec_with(parallelism=3, budget={"maxTrials": 10}), observe([running(0)]))
    assert plan.start_new == 2 and plan.stop is None


def test_never_starts_more_than_max_trials_counting_running_work() -> None:
    spec = spec_with(parallelism=4, budget={"maxTrials": 5})
    plan = decide(spec, observe([done(0), done(1), running(2), running(3)]))
    assert plan.start_new == 1


def test_max_trials_reached_finishes_once_nothing_runs() -> None:
    spec = spec_with(budget={"maxTrials": 2})
    waiting = decide(spec, observe([done(0), running(1)]))
    assert waiting.stop is StopReason.MAX_TRIALS and not waiting.finished and waiting.start_new == 0
    over = decide(spec, observe([done(0), done(1)]))
    assert over.stop is StopReason.MAX_TRIALS and over.finished


def test_infrastructure_failures_are_retried_objective_failures_are_not() -> None:
    spec = spec_with(parallelism=4, budget={"maxTrials": 10})
    plan = decide(spec, observe([failed(0, "killed"), failed(1, "objectiveRaised"), done(2)]))
    assert plan.retry == (0,)
    assert plan.start_new == 3


def test_retries_stop_at_max_retries_and_do_not_count_as_new_trials() -> None:
    spec = spec_with(parallelism=2, budget={"maxTrials": 1}, trial={"maxRetries": 1})
    first = failed(0, "preempted")
    again = failed(1, "preempted", root=0, attempt=1)
    plan = decide(spec, observe([first, again]))
    assert plan.retry == () and plan.stop is StopReason.MAX_TRIALS and plan.finished
    pending = decide(spec, observe([first]))
    assert pending.retry == (0,) and pending.stop is None and pending.start_new == 0


def test_running_trials_without_live_work_are_marked_lost_and_retried() -> None:
    spec = spec_with(parallelism=2, budget={"maxTrials": 5})
    plan = decide(spec, observe([running(0), running(1)], live={1}))
    assert plan.mark_lost == (0,)
    assert plan.retry == (0,)
    assert plan.start_new == 0


def test_goal_reached_stops_new_trials() -> None:
    spec = spec_with(objective={"metrics": [{"name": "loss", "direction": "minimize"}], "goal": 0.5})
    plan = decide(spec, observe([done(0, 0.4), running(1)]))
    assert plan.stop is StopReason.GOAL and plan.start_new == 0 and not plan.finished
    not_yet = decide(spec, observe([done(0, 0.6)]))
    assert not_yet.stop is None


def test_deadline_uses_the_time_given_not_a_clock() -> None:
    spec = spec_with(budget={"maxTrials": 100, "deadline": "60s"})
    early = Observation(trials=(), live=frozenset(), now=NOW + 59, started_at=NOW)
    late = Observation(trials=(), live=frozenset(), now=NOW + 60, started_at=NOW)
    assert decide(spec, early).stop is None
    assert decide(spec, late).stop is StopReason.DEADLINE and decide(spec, late).finished


def test_finite_space_is_exhausted_after_every_point() -> None:
    spec = spec_with(
        searchSpace={"x": {"type": "int", "low": 0, "high": 2}}, budget={"maxTrials": 100}, parallelism=5
    )
    trials = [TrialView(number=i, state="COMPLETE", values=(1.0,), params={"x": i}) for i in range(2)]
    plan = decide(spec, observe(trials))
    assert plan.start_new == 1
    trials.append(TrialView(number=2, state="COMPLETE", values=(1.0,), params={"x": 2}))
    assert decide(spec, observe(trials)).stop is StopReason.SPACE_EXHAUSTED


def test_patience_converges_after_trials_without_improvement() -> None:
    spec = spec_with(budget={"maxTrials": 100, "patience": 3})
    trials = [done(0, 1.0), done(1, 2.0), done(2, 3.0)]
    assert decide(spec, observe(trials)).stop is None
    trials.append(done(3, 1.5))
    assert decide(spec, observe(trials)).stop is StopReason.CONVERGED


def test_interrupt_drains_live_work() -> None:
    plan = decide(spec_with(), observe([running(0), running(1)], interrupted=True))
    assert plan.stop is StopReason.INTERRUPTED and plan.drain == (0, 1) and plan.drain_reason == "interrupted"
    assert not plan.finished


def test_suspended_study_starts_nothing() -> None:
    plan = decide(spec_with(suspend=True), observe([]))
    assert plan.suspended and plan.start_new == 0 and not plan.finished


def test_budget_limits_how_many_trials_start() -> None:
    budget = BudgetView(limit=1000, settled=100, reserved=300, worst_case=250)
    plan = decide(spec_with(parallelism=8, budget={"maxTrials": 50}), observe([], budget=budget))
    assert plan.start_new == 2


def test_budget_exhausted_waits_for_running_work_then_ends() -> None:
    spec = spec_with(parallelism=4, budget={"maxTrials": 50})
    tight = BudgetView(limit=1000, settled=700, reserved=250, worst_case=250)
    waiting = decide(spec, observe([running(0)], budget=tight))
    assert waiting.waiting_for_budget and waiting.stop is None
    empty = BudgetView(limit=1000, settled=900, reserved=0, worst_case=250)
    ended = decide(spec, observe([done(0)], budget=empty))
    assert ended.stop is StopReason.BUDGET_EXHAUSTED and ended.finished


def test_drain_on_exhausted_budget_stops_running_trials() -> None:
    spec = spec_with(parallelism=4, budget={"maxTrials": 50, "onExhausted": "drain"})
    tight = BudgetView(limit=1000, settled=700, reserved=250, worst_case=250)
    plan = decide(spec, observe([running(0)], budget=tight))
    assert plan.stop is StopReason.BUDGET_EXHAUSTED and plan.drain == (0,) and plan.drain_reason == "budget"


def test_summary_counts_states_and_best() -> None:
    spec = spec_with()
    trials = [
        done(0, 3.0),
        done(1, 1.0),
        failed(2, "killed"),
        failed(3, "killed", root=2, attempt=1),
        running(4),
    ]
    summary = summarize(spec, trials)
    assert (summary.complete, summary.failed, summary.running, summary.retried) == (2, 2, 1, 1)
    assert summary.best_number == 1 and summary.best_values == (1.0,)


# -- trials queued behind busy local workers (the runner's prefetch) ------------------------------


def queued(number: int) -> TrialView:
    return TrialView(number=number, state="QUEUED", params={"x": float(number)})


def test_queue_slots_let_each_busy_worker_hold_one_more_trial() -> None:
    spec = spec_with(parallelism=2, budget={"maxTrials": 10})
    plan = decide(spec, observe([running(0), running(1)], queue_slots=2))
    assert plan.start_new == 2
    without = decide(spec, observe([running(0), running(1)]))
    assert without.start_new == 0


def test_queued_trials_count_toward_max_trials() -> None:
    spec = spec_with(parallelism=2, budget={"maxTrials": 4})
    trials = [running(0), running(1), queued(2), queued(3)]
    plan = decide(spec, observe(trials, live={0, 1, 2, 3}, queue_slots=2))
    assert plan.start_new == 0
    assert plan.stop is StopReason.MAX_TRIALS and not plan.finished


def test_a_queued_trial_whose_worker_is_gone_is_lost_and_retried() -> None:
    spec = spec_with(parallelism=2, budget={"maxTrials": 4}, trial={"python": "m:f", "maxRetries": 1})
    plan = decide(spec, observe([running(0), queued(1)], live={0}))
    assert plan.mark_lost == (1,)
    assert plan.retry == (1,)


def test_progress_counts_queued_trials_apart_from_running_ones() -> None:
    summary = summarize(spec_with(), [running(0), queued(1), done(2)])
    assert (summary.running, summary.queued, summary.complete) == (1, 1, 1)
