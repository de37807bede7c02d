"""Population-based training's decisions: which segments start next, resuming which checkpoint,
with which parameters. A pure function of the trials, the spec and the study seed.

Asynchronous, as Ray Tune's ``PopulationBasedTraining``: there is no generation barrier. As soon
as a member's segment has ended, its next segment is decided from the latest score of every
member (the value of its last completed segment):

- members are ranked best first (ties: the lower member number first, so equal scores still
  rank, as in the PBT paper and Ray Tune); with ``n`` ranked, the top and bottom quantile hold
  ``ceil(n * quantile)`` members each, at most ``n // 2``;
- a member in the bottom quantile **exploits**: it resumes the checkpoint of a top-quantile member
  drawn at random among those that still have steps left to train, takes that member's
  parameters and step, and **explores** its mutable parameters: each is drawn afresh
  with probability ``resampleProbability``, otherwise multiplied by one of ``perturbFactors``
  (a categorical moves to the neighbouring choice: up for a factor above 1, down below) and
  kept inside its range and step;
- any other member **continues** from its own checkpoint with its parameters unchanged;
- a member whose segment could not read its checkpoint (``checkpointUnavailable``) **recovers**:
  it resumes its own last good checkpoint (its latest completed segment's, or further back past
  every checkpoint known to be unreadable) with that segment's parameters, or starts afresh;
  no member copies a checkpoint known to be unreadable;
- a member whose segment failed otherwise, or was lost more than ``maxRetries`` times, stops; a
  segment lost to the platform is retried by the ordinary retry path (same checkpoint).

Every draw comes from a hash of the study seed, the member, its segment count and the purpose,
so the same inputs always give the same segments, in any process.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.planner.observation import TrialView
from controller.planner.segments import Segment
from controller.spec import CategoricalParam, FloatParam, IntParam, StudySpec, ordered_parameters
from controller.spec.population import PopulationSettings, mutable_parameters, population_settings

CHECKPOINT_UNAVAILABLE = "checkpointUnavailable"
IN_FLIGHT = ("RUNNING", "QUEUED", "WAITING")

Space = Mapping[str, FloatParam | IntParam | CategoricalParam]


@dataclass(frozen=True)
class PlannedSegment:
    """A segment to start: its record and the parameters its trial runs with."""

    segment: Segment
    params: Mapping[str, Any]


@dataclass(frozen=True)
class _Member:
    number: int
    status: str  # new, busy, ready, recover, done or stopped
    step: int = 0  # where its training stands (the end of its last completed segment)
    latest: TrialView | None = None  # its most recent segment (highest trial number)
    scored: TrialView | None = None  # its most recent completed segment

    @property
    def score(self) -> float | None:
        values = self.scored.values if self.scored is not None else None
        return float(values[0]) if values else None


@dataclass(frozen=True)
class PopulationState:
    """The population as the trials show it; :meth:`next_segments` decides what starts next."""

    spec: StudySpec
    settings: PopulationSettings
    members: tuple[_Member, ...]
    by_number: Mapping[int, TrialView] = field(repr=False)
    unreadable: frozenset[int] = frozenset()  # trials whose checkpoint a segment could not read

    @property
    def trained(self) -> bool:
        """Every member reached ``objective.steps`` or stopped: nothing more will start."""
        return all(m.status in ("done", "stopped") for m in self.members)

    @property
    def stopped(self) -> tuple[int, ...]:
        return tuple(m.number for m in self.members if m.status == "stopped")

    def next_segments(self, seed: int, limit: int) -> tuple[PlannedSegment, ...]:
        """Up to ``limit`` segments for the members that wait for one, the furthest behind first."""
        waiting = [m for m in self.members if m.status in ("new", "ready", "recover")]
        waiting.sort(key=lambda m: (m.step, m.number))
        return tuple(self._next(member, seed) for member in waiting[: max(0, limit)])

    def _next(self, member: _Member, seed: int) -> PlannedSegment:
        if member.status == "new":
            return _first_segment(self.spec, self.settings, member.number, seed)
        if member.status == "recover":
            return self._recover(member)
        return decide_member(self.spec, self.settings, self.members, member, seed, self.unreadable)

    def _recover(self, member: _Member) -> PlannedSegment:
        """Resume the member's last good checkpoint: its latest completed segment's, or the one
        before it, and so on past every checkpoint known to be unreadable (afresh when none is)."""
        failed = member.latest
        assert failed is not None and failed.segment is not None
        load = member.scored.number if member.scored is not None else None
        while load is not None and load in self.unreadable:
            writer = self.by_number.get(load)
            load = writer.segment.load if writer is not None and writer.segment is not None else None
        good = self.by_number.get(load) if load is not None else None
        if good is None or good.segment is None:
            segment = Segment(member.number, failed.segment.index + 1, 0, self._end(0), decision="recover")
            return PlannedSegment(segment, dict(failed.params))
        segment = Segment(
            member=member.number,
            index=failed.segment.index + 1,
            start=good.segment.end,
            end=self._end(good.segment.end),
            parent=good.segment.member,
            load=good.number,
            decision="recover",
        )
        return PlannedSegment(segment, dict(good.params))  # the fixed ones must fit its weights

    def _end(self, start: int) -> int:
        steps = _steps(self.spec)
        return min(start + self.settings.interval_for(steps), steps)


def population_state(
    spec: StudySpec, trials: Sequence[TrialView], live: frozenset[int], max_retries: int
) -> PopulationState:
    """Each member's status from its segments (``trials`` with lost ones already marked FAIL)."""
    settings = population_settings(spec)
    steps = _steps(spec)
    by_member: dict[int, list[TrialView]] = {}
    for trial in trials:
        if trial.segment is not None:
            by_member.setdefault(trial.segment.member, []).append(trial)
    members = []
    for number in range(settings.population):
        own = sorted(by_member.get(number, []), key=lambda t: t.number)
        members.append(_member(number, own, live, max_retries, steps))
    by_number = {t.number: t for t in trials if t.segment is not None}
    unreadable = frozenset(
        t.segment.load
        for t in by_number.values()
        if t.segment is not None
        and t.segment.load is not None
        and t.state == "FAIL"
        and t.reason == CHECKPOINT_UNAVAILABLE
    )
    return PopulationState(spec, settings, tuple(members), by_number, unreadable)


def _member(
    number: int, own: list[TrialView], live: frozenset[int], max_retries: int, steps: int
) -> _Member:
    if not own:
        return _Member(number, "new")
    completed = [t for t in own if t.state == "COMPLETE" and t.values]
    scored = completed[-1] if completed else None
    step = scored.segment.end if scored is not None and scored.segment is not None else 0
    latest = own[-1]
    if any(t.state in IN_FLIGHT or t.number in live for t in own):
        status = "busy"
    elif latest.state == "COMPLETE":
        status = "done" if step >= steps else "ready"
    elif latest.failed_by_infrastructure:
        status = "busy" if latest.attempt < max_retries else "stopped"  # the ordinary retry runs it
    elif latest.state == "FAIL" and latest.reason == CHECKPOINT_UNAVAILABLE and _resumed(latest):
        status = "recover"
    else:
        status = "stopped"  # the objective failed (or no checkpoint could ever be read)
    return _Member(number, status, step, latest, scored)


def _resumed(trial: TrialView) -> bool:
    return trial.segment is not None and trial.segment.load is not None


def quantiles(
    spec: StudySpec, settings: PopulationSettings, members: Sequence[_Member]
) -> tuple[list[_Member], list[_Member]]:
    """The top and bottom quantile of the members with a score, best first within each."""
    sign = -1.0 if spec.objective.metrics[0].direction == "maximize" else 1.0
    ranked = sorted(
        (m for m in members if m.score is not None and m.status != "stopped"),
        key=lambda m: (sign * (m.score or 0.0), m.number),
    )
    size = len(ranked)
    if size < 2:
        return [], []
    count = min(math.ceil(size * settings.quantile), size // 2)
    return ranked[:count], ranked[size - count :]


def decide_member(
    spec: StudySpec,
    settings: PopulationSettings,
    members: Sequence[_Member],
    member: _Member,
    seed: int,
    unreadable: frozenset[int] = frozenset(),
) -> PlannedSegment:
    """Exploit and explore, or continue: the next segment of a member whose segment completed.

    A donor must have steps left to train and a checkpoint no segment failed to read.
    """
    scored = member.scored
    assert scored is not None and scored.segment is not None
    steps = _steps(spec)
    interval = settings.interval_for(steps)
    index = (member.latest.segment.index if member.latest and member.latest.segment else 0) + 1
    top, bottom = quantiles(spec, settings, members)
    if member.number in {m.number for m in bottom}:
        donors = [
            d for d in top if d.step < steps and d.scored is not None and d.scored.number not in unreadable
        ]
        if donors:
            donor = donors[_pick(len(donors), seed, "donor", member.number, index)]
            source = donor.scored
            assert source is not None
            params = explore(spec, settings, source.params, seed, member.number, index)
            segment = Segment(
                member=member.number,
                index=index,
                start=donor.step,
                end=min(donor.step + interval, steps),
                parent=donor.number,
                load=source.number,
                decision="exploit",
            )
            return PlannedSegment(segment, params)
    segment = Segment(
        member=member.number,
        index=index,
        start=member.step,
        end=min(member.step + interval, steps),
        parent=member.number,
        load=scored.number,
        decision="continue",
    )
    return PlannedSegment(segment, dict(scored.params))


def explore(
    spec: StudySpec,
    settings: PopulationSettings,
    params: Mapping[str, Any],
    seed: int,
    member: int,
    index: int,
) -> dict[str, Any]:
    """``params`` with each mutable parameter resampled or perturbed (the fixed ones unchanged)."""
    explored = dict(params)
    for name in mutable_parameters(spec):
        if name not in explored:
            continue
        param = spec.searchSpace[name]
        if _uniform(seed, "resample", member, index, name) < settings.resampleProbability:
            explored[name] = sample_value(param, _uniform(seed, "value", member, index, name))
        else:
            factors = settings.perturbFactors
            factor = factors[_pick(len(factors), seed, "factor", member, index, name)]
            explored[name] = perturb(param, explored[name], factor)
    return explored


def perturb(param: FloatParam | IntParam | CategoricalParam, value: Any, factor: float) -> Any:
    """``value`` times ``factor``, kept inside the range and on the step; a categorical moves to
    the next choice (up for a factor above 1, down below); an int always moves at least one step."""
    if isinstance(param, CategoricalParam):
        position = next((i for i, c in enumerate(param.choices) if c == value), 0)
        shift = 1 if factor > 1 else -1 if factor < 1 else 0
        return param.choices[min(max(position + shift, 0), len(param.choices) - 1)]
    if isinstance(param, IntParam):
        moved = round(value * factor)
        if moved == value and factor != 1:
            moved = value + (param.step if factor > 1 else -param.step)
        return _on_int_grid(param, moved)
    moved_float = float(value) * factor
    return _on_float_grid(param, moved_float)


def sample_value(param: FloatParam | IntParam | CategoricalParam, u: float) -> Any:
    """The value at quantile ``u`` (in [0, 1)) of the parameter's distribution."""
    if isinstance(param, CategoricalParam):
        return param.choices[min(int(u * len(param.choices)), len(param.choices) - 1)]
    if isinstance(param, IntParam):
        if param.log:
            value = math.floor(_log_scale(param.low, param.high + 1, u))
            return min(max(value, param.low), param.high)
        points = param.grid_points()
        return param.low + min(int(u * points), points - 1) * param.step
    if param.log:
        return _on_float_grid(param, _log_scale(param.low, param.high, u))
    if param.step is not None:
        points = param.grid_points() or 1
        return _on_float_grid(param, param.low + min(int(u * points), points - 1) * param.step)
    return param.low + u * (param.high - param.low)


def _log_scale(low: float, high: float, u: float) -> float:
    return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def _on_int_grid(param: IntParam, value: int) -> int:
    value = min(max(value, param.low), param.high)
    return param.low + round((value - param.low) / param.step) * param.step if param.step > 1 else value


def _on_float_grid(param: FloatParam, value: float) -> float:
    value = min(max(value, param.low), param.high)
    if param.step is not None:
        snapped = param.low + round((value - param.low) / param.step) * param.step
        value = min(max(snapped, param.low), param.high)
    return value


def _first_segment(spec: StudySpec, settings: PopulationSettings, member: int, seed: int) -> PlannedSegment:
    """A new member: every parameter drawn from its distribution (conditions respected)."""
    chosen: dict[str, Any] = {}
    for name in ordered_parameters(spec.searchSpace):
        param = spec.searchSpace[name]
        if param.active_given(chosen):
            chosen[name] = sample_value(param, _uniform(seed, "start", member, name))
    steps = _steps(spec)
    segment = Segment(member=member, index=0, start=0, end=min(settings.interval_for(steps), steps))
    return PlannedSegment(segment, chosen)


def _steps(spec: StudySpec) -> int:
    steps = spec.objective.steps
    if steps is None:
        raise ValueError("objective.steps: a population-based study needs it (the spec check says so)")
    return steps


def _uniform(seed: int, *key: object) -> float:
    """A number in [0, 1) determined by the seed and the key (no global random state)."""
    text = ":".join(str(part) for part in (seed, *key))
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _pick(count: int, seed: int, *key: object) -> int:
    return min(int(_uniform(seed, *key) * count), count - 1)
