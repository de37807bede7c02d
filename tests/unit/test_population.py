"""Population-based training's decisions (the pure planner): ranking, exploit and explore, seeds,
recovery, and the PBT paper's toy problem."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from controller.planner import BudgetView, Observation, StopReason, TrialView, decide
from controller.planner.population import perturb, population_state, quantiles, sample_value
from controller.planner.segments import Segment
from controller.spec import CategoricalParam, FloatParam, IntParam, StudySpec, parse_study_text
from controller.spec.population import population_settings


def pbt_spec(
    *, population: int = 4, steps: int = 12, interval: int = 4, direction: str = "minimize", **more: Any
) -> StudySpec:
    settings = {"population": population, "interval": interval, **more.pop("settings", {})}
    document = {
        "apiVersion": "tunefleet.dev/v1alpha1",
        "kind": "Study",
        "metadata": {"name": "pbt"},
        "spec": {
            "objective": {"metrics": [{"name": "loss", "direction": direction}], "steps": steps},
            "searchSpace": more.pop(
                "space",
                {
                    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True, "mutable": True},
                    "width": {"type": "int", "low": 8, "high": 64},
                },
            ),
            "strategy": {"sampler": "pbt", "seed": 3, "settings": settings},
            "parallelism": more.pop("parallelism", population),
            "trial": {"python": "train:objective", "maxRetries": 2},
            **more,
        },
    }
    return parse_study_text(yaml.safe_dump(document)).spec


def segment_trial(
    number: int, member: int, index: int, value: float | None, *, params: dict[str, Any] | None = None,
    state: str = "COMPLETE", start: int | None = None, end: int | None = None, load: int | None = None,
    parent: int | None = None, reason: str | None = None, attempt: int = 0, root: int | None = None,
) -> TrialView:
    start = index * 4 if start is None else start
    segment = Segment(
        member=member, index=index, start=start, end=start + 4 if end is None else end,
        parent=parent, load=load, decision="start" if load is None else "continue",
    )
    return TrialView(
        number=number, state=state, values=(value,) if value is not None else None,
        params=params or {"lr": 0.01 * (member + 1), "width": 8 * (member + 1)}, reason=reason,
        segment=segment, attempt=attempt, root=root,
    )


def first_round(values: list[float]) -> list[TrialView]:
    """Member m's first segment (trial m) completed with ``values[m]``."""
    return [segment_trial(m, m, 0, v) for m, v in enumerate(values)]


def plan_for(spec: StudySpec, trials: list[TrialView], seed: int = 3, live: set[int] | None = None) -> Any:
    observed = Observation(
        trials=tuple(trials), live=frozenset(live or ()), now=0.0, started_at=0.0, seed=seed
    )
    return decide(spec, observed)


def by_member(plan: Any) -> dict[int, Any]:
    return {p.segment.member: p for p in plan.segments}


# -- ranking ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranked", "quantile", "expected"),
    [(8, 0.25, 2), (3, 0.25, 1), (2, 0.25, 1), (5, 0.5, 2), (7, 0.2, 2), (1, 0.25, 0)],
)
def test_quantiles_hold_ceil_of_the_fraction_and_at_most_half(
    ranked: int, quantile: float, expected: int
) -> None:
    spec = pbt_spec(population=max(2, ranked), settings={"quantile": quantile})
    state = population_state(spec, first_round([float(v) for v in range(ranked)]), frozenset(), 2)
    top, bottom = quantiles(spec, population_settings(spec), state.members)
    assert len(top) == len(bottom) == expected
    assert [m.number for m in top] == list(range(expected))  # loss 0 is the best when minimizing
    assert [m.number for m in bottom] == list(range(ranked - expected, ranked))


def test_maximizing_ranks_the_highest_values_first() -> None:
    spec = pbt_spec(direction="maximize")
    state = population_state(spec, first_round([0.1, 0.9, 0.5, 0.3]), frozenset(), 2)
    top, bottom = quantiles(spec, population_settings(spec), state.members)
    assert [m.number for m in top] == [1] and [m.number for m in bottom] == [0]


def test_ties_rank_by_member_number_so_equal_scores_still_exploit() -> None:
    spec = pbt_spec()
    plan = plan_for(spec, first_round([1.0, 1.0, 1.0, 1.0]))
    decisions = {m: p.segment.decision for m, p in by_member(plan).items()}
    assert decisions == {0: "continue", 1: "continue", 2: "continue", 3: "exploit"}
    assert by_member(plan)[3].segment.parent == 0


# -- exploit, explore, continue -----------------------------------------------------------------------


def test_the_bottom_member_copies_a_top_member_and_explores_only_mutable_parameters() -> None:
    spec = pbt_spec(population=8)
    trials = first_round([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    plan = plan_for(spec, trials)
    assert plan.start_new == len(plan.segments) == 8
    members = by_member(plan)
    for number in (6, 7):  # the bottom quarter
        planned = members[number]
        assert planned.segment.decision == "exploit"
        donor = planned.segment.parent
        assert donor in (0, 1)  # the top quarter
        assert planned.segment.load == donor  # the donor's completed segment is trial <donor>
        assert planned.segment.start == trials[donor].segment.end
        assert planned.params["width"] == trials[donor].params["width"]  # fixed: travels with the weights
        assert planned.params["lr"] != trials[donor].params["lr"]  # mutable: explored
    for number in range(6):
        planned = members[number]
        assert planned.segment.decision == "continue"
        assert (planned.segment.parent, planned.segment.load) == (number, number)
        assert planned.params == trials[number].params
        assert (planned.segment.start, planned.segment.end, planned.segment.index) == (4, 8, 1)


def test_a_finished_member_is_no_donor_and_the_last_segment_stops_at_objective_steps() -> None:
    spec = pbt_spec(population=2, steps=10, interval=4, settings={"quantile": 0.5})
    trials = [
        segment_trial(0, 0, 2, 0.1, start=8, end=10),  # member 0 trained all 10 steps
        segment_trial(1, 1, 1, 0.9, start=4, end=8),
    ]
    planned = by_member(plan_for(spec, trials))
    assert 0 not in planned  # done
    assert planned[1].segment.decision == "continue"  # its only donor has no steps left
    assert (planned[1].segment.start, planned[1].segment.end) == (8, 10)


def test_explore_keeps_values_inside_their_range_and_step() -> None:
    lr = FloatParam(type="float", low=1e-3, high=0.5, log=True)
    stepped = FloatParam(type="float", low=0.0, high=1.0, step=0.25)
    width = IntParam(type="int", low=1, high=10)
    activation = CategoricalParam(type="categorical", choices=["relu", "tanh", "gelu"])
    assert perturb(lr, 0.45, 1.2) == 0.5 and perturb(lr, 0.0011, 0.8) == 1e-3
    assert perturb(stepped, 0.5, 1.2) == 0.5 and perturb(stepped, 0.75, 1.2) == 1.0
    assert perturb(width, 1, 1.2) == 2  # an int moves at least one step
    assert perturb(width, 1, 0.8) == 1 and perturb(width, 10, 1.2) == 10
    assert perturb(width, 5, 1.2) == 6 and perturb(width, 5, 0.8) == 4
    assert perturb(activation, "tanh", 1.2) == "gelu" and perturb(activation, "tanh", 0.8) == "relu"
    assert perturb(activation, "gelu", 1.2) == "gelu"
    for u in (0.0, 0.3, 0.999999):
        assert 1e-3 <= sample_value(lr, u) <= 0.5
        assert sample_value(stepped, u) in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert 1 <= sample_value(width, u) <= 10
        assert sample_value(activation, u) in activation.choices


def test_perturbation_multiplies_by_one_of_the_factors_when_nothing_is_resampled() -> None:
    spec = pbt_spec(population=8, settings={"resampleProbability": 0.0, "perturbFactors": [0.5, 2.0]})
    trials = first_round([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    for seed in range(10):
        for planned in plan_for(spec, trials, seed=seed).segments:
            if planned.segment.decision == "exploit":
                donor_lr = trials[planned.segment.parent].params["lr"]
                assert planned.params["lr"] == pytest.approx(donor_lr * 0.5) or planned.params[
                    "lr"
                ] == pytest.approx(donor_lr * 2.0)


def test_resampling_draws_fresh_values_from_the_distribution() -> None:
    spec = pbt_spec(population=8, settings={"resampleProbability": 1.0})
    trials = first_round([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    drawn = set()
    for seed in range(20):
        for planned in plan_for(spec, trials, seed=seed).segments:
            if planned.segment.decision == "exploit":
                donor_lr = trials[planned.segment.parent].params["lr"]
                lr = planned.params["lr"]
                assert 1e-4 <= lr <= 1.0
                assert lr not in (donor_lr * 0.8, donor_lr * 1.2)
                drawn.add(lr)
    assert len(drawn) > 20  # afresh, not a few repeated values


# -- seeds --------------------------------------------------------------------------------------------


def test_the_same_inputs_and_seed_give_the_same_segments_and_another_seed_others() -> None:
    spec = pbt_spec(population=8)
    trials = first_round([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert plan_for(spec, trials, seed=11) == plan_for(spec, trials, seed=11)
    assert plan_for(spec, [], seed=11) == plan_for(spec, [], seed=11)
    starts = [p.params for p in plan_for(spec, [], seed=11).segments]
    assert starts != [p.params for p in plan_for(spec, [], seed=12).segments]
    assert len({p["lr"] for p in starts}) == 8  # each member draws its own values


# -- in flight, failures, recovery --------------------------------------------------------------------


def test_a_busy_member_gets_no_segment_and_parallelism_bounds_the_rest() -> None:
    spec = pbt_spec(population=4, parallelism=2)
    plan = plan_for(spec, [])
    assert [p.segment.member for p in plan.segments] == [0, 1]
    running = [segment_trial(0, 0, 0, None, state="RUNNING"), segment_trial(1, 1, 0, 0.5)]
    plan = plan_for(spec, running, live={0})
    assert [p.segment.member for p in plan.segments] == [2]  # the furthest behind first


def test_a_segment_lost_to_the_platform_is_retried_not_replanned_until_retries_run_out() -> None:
    spec = pbt_spec(population=2, settings={"quantile": 0.5})
    trials = [segment_trial(0, 0, 0, 0.3), segment_trial(1, 1, 0, None, state="FAIL", reason="preempted")]
    plan = plan_for(spec, trials)
    assert plan.retry == (1,)
    assert [p.segment.member for p in plan.segments] == [0]
    exhausted = [
        segment_trial(0, 0, 0, 0.3, start=0, end=12),
        segment_trial(1, 1, 0, None, state="FAIL", reason="preempted"),
        segment_trial(2, 1, 0, None, state="FAIL", reason="preempted", attempt=1, root=1),
        segment_trial(3, 1, 0, None, state="FAIL", reason="preempted", attempt=2, root=1),
    ]
    plan = plan_for(spec, exhausted)
    assert plan.stop is StopReason.POPULATION_TRAINED and plan.finished  # member 1 stopped


def test_an_unreadable_checkpoint_is_retried_from_the_last_good_one() -> None:
    spec = pbt_spec(population=2, steps=20, settings={"quantile": 0.5})
    trials = [
        segment_trial(0, 0, 0, 0.5),  # member 0, steps 0-4
        segment_trial(1, 0, 1, 0.4, load=0, parent=0),  # steps 4-8
        segment_trial(2, 0, 2, None, state="FAIL", reason="checkpointUnavailable", load=1, parent=0),
        segment_trial(3, 1, 0, 0.1, start=0, end=20),
    ]
    planned = by_member(plan_for(spec, trials))[0]
    assert planned.segment.decision == "recover"
    assert (planned.segment.load, planned.segment.parent) == (0, 0)  # trial 1's checkpoint is bad
    assert (planned.segment.start, planned.segment.end, planned.segment.index) == (4, 8, 3)
    assert planned.params == trials[0].params  # the parameters its weights were trained with
    trials.append(
        segment_trial(4, 0, 3, None, state="FAIL", reason="checkpointUnavailable", load=0, parent=0, start=4,
                      params={"lr": 0.5, "width": 8})
    )
    fresh = by_member(plan_for(spec, trials))[0]
    assert (fresh.segment.load, fresh.segment.parent, fresh.segment.start) == (None, None, 0)
    assert fresh.params == {"lr": 0.5, "width": 8}


def test_a_failed_exploit_falls_back_to_the_members_own_checkpoint_and_nobody_copies_the_bad_one() -> None:
    spec = pbt_spec(population=4, steps=20)
    trials = first_round([0.1, 0.2, 0.3, 0.4])
    trials.append(  # member 3 could not read member 0's checkpoint (trial 0)
        segment_trial(4, 3, 1, None, state="FAIL", reason="checkpointUnavailable", load=0, parent=0, start=4)
    )
    planned = by_member(plan_for(spec, trials))
    assert planned[3].segment.decision == "recover"
    assert (planned[3].segment.load, planned[3].segment.start) == (3, 4)  # its own segment 0
    assert planned[3].params == trials[3].params
    assert planned[0].segment.decision == "continue"  # member 0 itself is in the top quantile
    trials.append(segment_trial(5, 2, 1, 0.9, load=2, parent=2, start=4))  # member 2 now last
    assert by_member(plan_for(spec, trials))[2].segment.decision == "continue"  # no readable donor


def test_an_objective_failure_stops_the_member_and_the_study_ends_when_all_are_trained() -> None:
    spec = pbt_spec(population=2, steps=8, settings={"quantile": 0.5})
    trials = [
        segment_trial(0, 0, 0, None, state="FAIL", reason="objectiveRaised"),
        segment_trial(1, 1, 0, 0.2),
    ]
    plan = plan_for(spec, trials)
    assert [p.segment.member for p in plan.segments] == [1] and plan.stop is None
    trials.append(segment_trial(2, 1, 1, 0.1, load=1, parent=1))
    plan = plan_for(spec, trials)
    assert plan.stop is StopReason.POPULATION_TRAINED and plan.finished and not plan.segments


def test_a_finite_space_never_ends_a_population_as_exhausted() -> None:
    space = {"lr": {"type": "categorical", "choices": [0.1, 0.01], "mutable": True}}
    spec = pbt_spec(population=4, space=space)
    plan = plan_for(spec, first_round([0.1, 0.2, 0.3, 0.4]))
    assert plan.stop is None and len(plan.segments) == 4


def test_suspend_and_the_budget_hold_segments_back_like_any_trial() -> None:
    suspended = plan_for(pbt_spec(population=4, suspend=True), first_round([0.1, 0.2, 0.3, 0.4]))
    assert suspended.suspended and not suspended.segments and suspended.start_new == 0
    budget = BudgetView(limit=100, settled=0, reserved=0, worst_case=40)  # two segments fit
    observed = Observation(trials=tuple(first_round([0.1, 0.2, 0.3, 0.4])), live=frozenset(), now=0.0,
                           started_at=0.0, seed=3, budget=budget)
    plan = decide(pbt_spec(population=4), observed)
    assert [p.segment.member for p in plan.segments] == [0, 1] and plan.start_new == 2


def test_max_trials_counts_segments() -> None:
    spec = pbt_spec(population=4, budget={"maxTrials": 6})
    plan = plan_for(spec, first_round([0.1, 0.2, 0.3, 0.4]))
    assert len(plan.segments) == 2


# -- the PBT paper's toy problem (Jaderberg et al. 2017, section 4.1) ---------------------------------


def toy_spec() -> StudySpec:
    space = {
        "h0": {"type": "float", "low": 0.0, "high": 1.0, "mutable": True},
        "h1": {"type": "float", "low": 0.0, "high": 1.0, "mutable": True},
    }
    return pbt_spec(population=2, steps=200, interval=4, direction="maximize", space=space,
                    settings={"quantile": 0.5})


def train_toy(exploit_and_explore: bool, seed: int) -> list[float]:
    """The best Q per step: maximise Q = 1.2 - (t0² + t1²) by gradient ascent on the surrogate
    1.2 - (h0 t0² + h1 t1²), from t = (0.9, 0.9), workers starting at h = (1, 0) and (0, 1).

    Without exploit and explore, each worker keeps its own t and h, so each can only shrink one
    coordinate and Q stays below 1.2 - 0.81.
    """
    spec = toy_spec()
    start = [{"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}]
    rate = 0.01
    trials: list[TrialView] = []
    weights: dict[int, tuple[float, float]] = {}
    best: dict[int, float] = {}
    latest: dict[int, TrialView] = {}

    def q(t: tuple[float, float]) -> float:
        return 1.2 - (t[0] ** 2 + t[1] ** 2)

    while True:
        plan = plan_for(spec, trials, seed=seed)
        if plan.finished:
            break
        for planned in plan.segments:
            segment, params = planned.segment, dict(planned.params)
            if segment.decision == "start":
                params = start[segment.member]
            elif not exploit_and_explore:  # the same worker, its own weights and h
                own = latest[segment.member]
                assert own.segment is not None
                segment = dataclasses.replace(
                    segment, start=own.segment.end, end=min(own.segment.end + 4, 200),
                    parent=segment.member, load=own.number, decision="continue",
                )
                params = dict(own.params)
            t = weights[segment.load] if segment.load is not None else (0.9, 0.9)
            for step in range(segment.start, segment.end):
                t = (t[0] - 2 * rate * params["h0"] * t[0], t[1] - 2 * rate * params["h1"] * t[1])
                best[step] = max(best.get(step, -9.0), q(t))
            number = len(trials)
            weights[number] = t
            trial = TrialView(number=number, state="COMPLETE", values=(q(t),), params=params, segment=segment)
            trials.append(trial)
            latest[segment.member] = trial
    return [best[step] for step in sorted(best)]


def first_step_reaching(curve: list[float], target: float) -> float:
    return next((step for step, value in enumerate(curve) if value >= target), float("inf"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_toy_problem_converges_faster_with_exploit_and_explore(seed: int) -> None:
    with_pbt = train_toy(True, seed)
    without = train_toy(False, seed)
    assert max(without) < 1.2 - 0.81 + 1e-9  # each worker shrinks one coordinate only
    assert with_pbt[-1] > 1.19  # near the optimum 1.2
    assert first_step_reaching(with_pbt, 1.0) < first_step_reaching(without, 1.0) == float("inf")
    assert first_step_reaching(with_pbt, 0.39) < first_step_reaching(without, 0.39)


def run_all(spec: StudySpec, train: Callable[[Any], float], seed: int = 3) -> list[TrialView]:
    """Run a study to the end with every planned segment completing at once (for lineage checks)."""
    trials: list[TrialView] = []
    while True:
        plan = plan_for(spec, trials, seed=seed)
        if plan.finished:
            return trials
        for planned in plan.segments:
            value = train(planned)
            trials.append(TrialView(number=len(trials), state="COMPLETE", values=(value,),
                                    params=planned.params, segment=planned.segment))


def test_every_lineage_covers_the_steps_without_a_gap() -> None:
    spec = pbt_spec(population=4, steps=14, interval=4)
    trials = run_all(spec, lambda planned: planned.params["lr"] * (100 - planned.segment.end))
    by_number = {t.number: t for t in trials}
    for trial in trials:
        segment = trial.segment
        assert segment is not None and segment.end - segment.start <= 4
        while segment.load is not None:
            parent = by_number[segment.load].segment
            assert parent is not None and parent.end == segment.start and parent.member == segment.parent
            segment = parent
        assert segment.start == 0
    finals = [t for t in trials if t.segment is not None and t.segment.end == 14]
    assert {t.segment.member for t in finals if t.segment is not None} == {0, 1, 2, 3}
