"""Budget decisions of the pure planner: namespace budgets, waiting, drain, live changes."""

from __future__ import annotations

from typing import Any

import yaml

from controller.planner import BudgetView, Observation, StopReason, TrialView, decide
from controller.spec import StudySpec, parse_study_text
from tests.support.specs import study_document

NOW = 1_000_000.0


def spec_with(**changes: Any) -> StudySpec:
    return parse_study_text(yaml.safe_dump(study_document(**changes))).spec


def observe(trials: list[TrialView], **kwargs: Any) -> Observation:
    live = frozenset(t.number for t in trials if t.state == "RUNNING")
    return Observation(trials=tuple(trials), live=live, now=NOW, started_at=NOW - 10, **kwargs)


def running(number: int) -> TrialView:
    return TrialView(number=number, state="RUNNING", params={"x": float(number)})


def done(number: int) -> TrialView:
    return TrialView(number=number, state="COMPLETE", values=(1.0,), params={"x": float(number)})


ROOMY = BudgetView(limit=10_000, settled=0, reserved=0, worst_case=100)
EMPTY_DAILY = BudgetView(limit=1000, settled=950, reserved=0, worst_case=100, refills=True)
EMPTY_FOREVER = BudgetView(limit=1000, settled=950, reserved=0, worst_case=100, refills=False)


def test_the_tighter_of_study_and_namespace_budget_limits_new_trials() -> None:
    spec = spec_with(parallelism=8, budget={"maxTrials": 50})
    namespace = BudgetView(limit=1000, settled=500, reserved=200, worst_case=100)  # 3 fit
    plan = decide(spec, observe([], budget=ROOMY, namespace_budget=namespace))
    assert plan.start_new == 3


def test_an_empty_periodic_namespace_budget_makes_the_study_wait_not_end() -> None:
    spec = spec_with(budget={"maxTrials": 50})
    plan = decide(spec, observe([done(0)], budget=ROOMY, namespace_budget=EMPTY_DAILY))
    assert plan.budget_waiting and plan.waiting_for_budget
    assert plan.stop is None and not plan.finished and plan.start_new == 0


def test_waiting_for_the_next_period_does_not_drain_running_trials() -> None:
    spec = spec_with(budget={"maxTrials": 50, "onExhausted": "drain"})
    plan = decide(spec, observe([running(0)], budget=ROOMY, namespace_budget=EMPTY_DAILY))
    assert plan.budget_waiting and plan.drain == ()


def test_an_empty_namespace_budget_that_never_refills_ends_the_study() -> None:
    spec = spec_with(budget={"maxTrials": 50})
    plan = decide(spec, observe([done(0)], budget=ROOMY, namespace_budget=EMPTY_FOREVER))
    assert plan.stop is StopReason.BUDGET_EXHAUSTED and plan.finished and not plan.budget_waiting


def test_an_exhausted_study_budget_ends_even_when_the_namespace_would_refill() -> None:
    spec = spec_with(budget={"maxTrials": 50})
    study = BudgetView(limit=100, settled=100, reserved=0, worst_case=100)
    plan = decide(spec, observe([done(0)], budget=study, namespace_budget=EMPTY_DAILY))
    assert plan.stop is StopReason.BUDGET_EXHAUSTED and plan.finished


def test_a_lowered_budget_applies_at_the_next_decision() -> None:
    spec = spec_with(parallelism=4, budget={"maxTrials": 50, "onExhausted": "drain"})
    before = decide(spec, observe([running(0)], budget=BudgetView(10_000, 0, 100, 100)))
    assert before.start_new == 3 and before.stop is None
    # The limit was lowered under what is already reserved: drain stops the running trial now.
    after = decide(spec, observe([running(0)], budget=BudgetView(50, 0, 100, 100)))
    assert (
        after.stop is StopReason.BUDGET_EXHAUSTED and after.drain == (0,) and after.drain_reason == "budget"
    )
    # What the drain freed is not spent on new trials: the study is over once nothing runs.
    drained = TrialView(number=0, state="FAIL", params={"x": 0.0}, reason="budget")
    over = decide(spec, observe([drained], budget=BudgetView(50, 10, 0, 10)))
    assert over.stop is StopReason.BUDGET_EXHAUSTED and over.finished and over.start_new == 0


def test_a_lowered_budget_under_finish_lets_running_trials_end_then_stops() -> None:
    spec = spec_with(parallelism=4, budget={"maxTrials": 50})
    lowered = BudgetView(50, 0, 100, 100)
    waiting = decide(spec, observe([running(0)], budget=lowered))
    assert waiting.waiting_for_budget and not waiting.budget_waiting and waiting.drain == ()
    ended = decide(spec, observe([done(0)], budget=BudgetView(50, 40, 0, 100)))
    assert ended.stop is StopReason.BUDGET_EXHAUSTED and ended.finished


def test_the_deadline_drains_running_trials_under_on_exhausted_drain() -> None:
    spec = spec_with(budget={"maxTrials": 50, "deadline": "5s", "onExhausted": "drain"})
    plan = decide(spec, observe([running(0), running(1)]))
    assert plan.stop is StopReason.DEADLINE and plan.drain == (0, 1) and plan.drain_reason == "deadline"


def test_the_deadline_lets_running_trials_finish_by_default() -> None:
    spec = spec_with(budget={"maxTrials": 50, "deadline": "5s"})
    plan = decide(spec, observe([running(0)]))
    assert plan.stop is StopReason.DEADLINE and plan.drain == () and not plan.finished


def test_a_gpubudget_held_only_by_another_studys_reservations_makes_the_study_wait_not_end() -> None:
    # Another study reserved all the room; it settles at most its worst case, so room comes back.
    spec = spec_with(budget={"maxTrials": 50})
    held = BudgetView(limit=300, settled=0, reserved=300, worst_case=100, refills=False)
    plan = decide(spec, observe([done(0)], budget=ROOMY, namespace_budget=held))
    assert plan.waiting_for_budget and not plan.finished and plan.stop is None and plan.start_new == 0
