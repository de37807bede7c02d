"""The planner's failure budget and its incomplete (never started) trials, without any I/O."""

from __future__ import annotations

import pytest

from controller.kube import status as status_mod
from controller.planner import StopReason, TrialView, decide, summarize
from controller.planner.failures import (
    DEFAULT_FIRST_FAILURES,
    FailureVerdict,
    failure_message,
    failure_verdict,
)
from controller.spec import SpecInvalid, validate_spec
from tests.unit.test_planner import done, failed, observe, running, spec_with
from trial_worker.contract import ExitCode


def half_asked(number: int) -> TrialView:
    """RUNNING with no parameters and no seed: its asking process died."""
    return TrialView(number=number, state="RUNNING", params={}, startable=False)


# -- the default rule: the first trials all fail for the same reason -------------------------


def test_the_first_three_trials_failing_alike_stop_the_study_and_drain_the_rest() -> None:
    spec = spec_with(parallelism=4, budget={"maxTrials": 50})
    trials = [failed(n, "objectiveNotFound") for n in range(DEFAULT_FIRST_FAILURES)] + [running(3)]
    plan = decide(spec, observe(trials))
    assert plan.stop is StopReason.FAILURE_BUDGET
    assert plan.start_new == 0 and plan.drain == (3,) and plan.drain_reason == "failureBudget"
    assert not plan.finished
    assert plan.failure == FailureVerdict("objectiveNotFound", 0, 3, None)
    over = decide(spec, observe([*trials[:3], failed(3, "failureBudget")]))
    assert over.finished and over.stop is StopReason.FAILURE_BUDGET


def test_two_failures_are_not_yet_a_verdict() -> None:
    plan = decide(spec_with(budget={"maxTrials": 50}), observe([failed(0, "exit9"), failed(1, "exit9")]))
    assert plan.stop is None and plan.start_new > 0


@pytest.mark.parametrize(
    "trials",
    [
        [failed(0, "objectiveRaised"), failed(1, "objectiveRaised"), failed(2, "invalidValue")],  # varied
        [failed(0, "objectiveRaised"), done(1), failed(2, "objectiveRaised"), failed(3, "objectiveRaised")],
    ],
    ids=["reasons-differ", "one-trial-worked"],
)
def test_a_study_that_worked_once_or_fails_variously_runs_on(trials: list[TrialView]) -> None:
    plan = decide(spec_with(budget={"maxTrials": 50}), observe(trials))
    assert plan.stop is None and plan.failure is None


def test_retried_infrastructure_failures_do_not_count_until_their_retries_run_out() -> None:
    spec = spec_with(budget={"maxTrials": 50}, trial={"maxRetries": 1})
    retried = [failed(n, "preempted") for n in range(3)]
    assert failure_verdict(spec, retried) is None
    exhausted = [failed(10 + n, "preempted", root=n, attempt=1) for n in range(3)]
    verdict = failure_verdict(spec, retried + exhausted)
    assert verdict is not None and verdict.reason == "preempted" and verdict.first_failed == 10


def test_trials_the_study_stopped_and_incomplete_ones_do_not_count() -> None:
    spec = spec_with(budget={"maxTrials": 50})
    trials = [failed(0, "budget"), failed(1, "incomplete"), failed(2, "deadline"), failed(3, "imported")]
    assert failure_verdict(spec, trials) is None


# -- an explicit budget.maxFailedTrials --------------------------------------------------------


def test_max_failed_trials_stops_at_the_first_failure_beyond_it_whatever_worked() -> None:
    spec = spec_with(budget={"maxTrials": 50, "maxFailedTrials": 3})
    trials = [done(0), failed(1, "objectiveRaised"), failed(2, "invalidValue"), failed(3, "objectiveRaised")]
    assert decide(spec, observe(trials)).stop is None
    plan = decide(spec, observe([*trials, failed(4, "maxDuration")]))
    assert plan.stop is StopReason.FAILURE_BUDGET and plan.finished
    assert plan.failure == FailureVerdict("objectiveRaised", 1, 4, 3)
    text = failure_message(plan.failure, None, None)
    assert text.startswith("more than 3 trials failed (budget.maxFailedTrials: 3), most often with")


def test_max_failed_trials_as_large_as_max_trials_lets_every_trial_fail() -> None:
    spec = spec_with(budget={"maxTrials": 4, "maxFailedTrials": 4})
    plan = decide(spec, observe([failed(n, "objectiveRaised") for n in range(4)]))
    assert plan.stop is StopReason.MAX_TRIALS


def test_an_explicit_budget_replaces_the_default_rule() -> None:
    spec = spec_with(budget={"maxTrials": 50, "maxFailedTrials": 10})
    plan = decide(spec, observe([failed(n, "exit9") for n in range(5)]))
    assert plan.stop is None


def test_max_failed_trials_cannot_be_negative_and_names_the_field() -> None:
    with pytest.raises(SpecInvalid) as error:
        validate_spec({**spec_with().model_dump(mode="json"), "budget": {"maxFailedTrials": -1}})
    assert "spec.budget.maxFailedTrials" in str(error.value.errors[0])


def test_failures_stop_a_study_that_would_confirm_without_confirming() -> None:
    spec = spec_with(budget={"maxTrials": 50}, confirm={"topK": 1, "repeats": 2})
    plan = decide(spec, observe([failed(n, "objectiveNotFound") for n in range(3)]))
    assert plan.stop is StopReason.FAILURE_BUDGET and plan.finished and not plan.confirm


# -- what the user reads ----------------------------------------------------------------------


def test_the_message_names_the_reason_the_first_trial_and_its_log_tail() -> None:
    log = "\n".join(f"line {i}" for i in range(50)) + "\nModuleNotFoundError: No module named 'examples'\n"
    text = failure_message(
        FailureVerdict("objectiveNotFound", 0, 3, None),
        "cannot load examples.quickstart.train:objective: ModuleNotFoundError",
        log,
    )
    assert text.startswith("the first 3 trials all failed with objectiveNotFound and none completed")
    assert "budget.maxFailedTrials" in text
    assert "trial 0 failed with objectiveNotFound: cannot load examples.quickstart.train:objective" in text
    assert text.endswith("ModuleNotFoundError: No module named 'examples'")
    assert "line 31" in text and "line 30" not in text  # the tail: its last 20 lines
    assert "it left no log" in failure_message(FailureVerdict("ImagePullBackOff", 2, 3, None), "", None)


def test_the_study_shows_failed_with_the_message_even_when_trials_completed() -> None:
    spec = spec_with(budget={"maxTrials": 50, "maxFailedTrials": 1})
    trials = [done(0), failed(1, "objectiveRaised"), failed(2, "objectiveRaised")]
    plan = decide(spec, observe(trials))
    phase = status_mod.phase_for(plan, summarize(spec, trials), invalid=False)
    assert phase == "Failed"
    conditions = status_mod.conditions_for(phase, plan, failure="2 trials failed ...")
    failed_condition = next(c for c in conditions if c.type == "Failed")
    assert failed_condition.status and failed_condition.reason == "FailureBudgetExhausted"
    assert failed_condition.message == "2 trials failed ..."


# -- incomplete trials: asked, never started ---------------------------------------------------


def test_a_half_asked_trial_is_abandoned_not_retried_and_another_is_asked() -> None:
    spec = spec_with(parallelism=2, budget={"maxTrials": 3})
    plan = decide(spec, observe([done(0), half_asked(1)], live=set()))
    assert plan.abandon == (1,) and plan.mark_lost == () and plan.retry == ()
    assert plan.start_new == 2  # the abandoned trial counts towards nothing: 2 of 3 still to run


def test_a_trial_abandoned_as_incomplete_counts_towards_nothing() -> None:
    spec = spec_with(parallelism=1, budget={"maxTrials": 2})
    trials = [done(0), failed(1, ExitCode.INCOMPLETE.reason), done(2)]
    plan = decide(spec, observe(trials))
    assert plan.stop is StopReason.MAX_TRIALS and plan.finished
    summary = summarize(spec, trials)
    assert (summary.complete, summary.failed, summary.finished) == (2, 0, 2)


def test_a_complete_trial_without_work_is_still_lost_and_retried() -> None:
    spec = spec_with(parallelism=2, budget={"maxTrials": 3})
    plan = decide(spec, observe([running(0)], live=set()))
    assert plan.mark_lost == (0,) and plan.abandon == () and plan.retry == (0,)
