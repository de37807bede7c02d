"""The Study status the controller writes: phase, conditions and printer-column fields."""

from __future__ import annotations

from controller.kube import status as status_mod
from controller.planner import Plan, StopReason, StudySummary, TrialView
from controller.spec import StudySpec

SPEC = StudySpec.model_validate(
    {
        "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
        "searchSpace": {"x": {"type": "float", "low": 0, "high": 1}},
        "budget": {"maxTrials": 200},
        "trial": {"python": "m:f"},
    }
)


def _summary(**counts: int) -> StudySummary:
    base = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0, "retried": 0}
    base.update(counts)
    return StudySummary(**base, best_number=None, best_values=None)


def test_phase_follows_the_plan() -> None:
    assert status_mod.phase_for(Plan(start_new=3), _summary(), invalid=False) == "Running"
    assert status_mod.phase_for(Plan(suspended=True), _summary(running=1), invalid=False) == "Suspended"
    finished = Plan(stop=StopReason.MAX_TRIALS, finished=True)
    assert status_mod.phase_for(finished, _summary(complete=2), invalid=False) == "Succeeded"
    assert status_mod.phase_for(finished, _summary(failed=2), invalid=False) == "Failed"
    assert status_mod.phase_for(None, None, invalid=True) == "Invalid"


def test_every_condition_type_is_present_with_a_reason() -> None:
    conditions = status_mod.conditions_for("Succeeded", Plan(stop=StopReason.GOAL, finished=True))
    by_type = {c.type: c for c in conditions}
    assert set(by_type) == set(status_mod.CONDITION_TYPES)
    assert by_type["Succeeded"].status and by_type["Succeeded"].reason == "GoalReached"
    assert not by_type["Running"].status
    assert all(c.reason for c in conditions)


def test_transition_time_moves_only_when_the_status_flips() -> None:
    first = status_mod.render_conditions(status_mod.conditions_for("Running", Plan(start_new=1)), [], "T1")
    again = status_mod.render_conditions(status_mod.conditions_for("Running", Plan()), first, "T2")
    assert {c["type"]: c["lastTransitionTime"] for c in again}["Running"] == "T1"
    suspended = status_mod.render_conditions(
        status_mod.conditions_for("Suspended", Plan(suspended=True)), again, "T3"
    )
    assert {c["type"]: c["lastTransitionTime"] for c in suspended}["Running"] == "T3"


def test_printer_column_fields() -> None:
    best = TrialView(number=4, state="COMPLETE", values=(0.012345678,), params={"x": 0.4})
    status = status_mod.study_status(
        SPEC,
        phase="Running",
        conditions=[],
        summary=_summary(complete=10, failed=2, running=3),
        best=best,
        budget=status_mod.BudgetFigures(gpu_seconds_used=11520, gpu_seconds_limit=144000),
        generation=3,
        start_time="T0",
        completion_time=None,
        stop=None,
        optuna_study="team-a/s",
    )
    assert status["trialsSummary"] == "12/200"
    assert status["trials"]["running"] == 3
    assert status["bestValue"] == "0.0123457"
    assert status["bestTrial"] == {
        "number": 4,
        "params": {"x": 0.4},
        "values": [0.012345678],
        "metrics": {"loss": 0.012345678},
    }
    assert status["budget"]["summary"] == "3.2/40"
    assert status["observedGeneration"] == 3
