"""Population-based training in the study storage: starting the segments the planner chose, and
telling each segment's worker where its checkpoints are.

Both processes that start trials (the local runner, the cluster's executor) go through
:func:`new_trial_starts`: it asks the sampler for ordinary studies and starts the planned
segments for population-based ones, so reservations, retries and settlement stay the same.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from controller.planner import Plan
from controller.planner.population import PlannedSegment
from controller.planner.segments import ATTR_SEGMENT, Segment, checkpoint_path
from controller.spec import StudySpec
from controller.studies.asking import ask_new_trial, distribution_of, trial_seed
from trial_worker.contract import ATTR_SEED, SegmentAssignment


def new_trial_starts(
    study: optuna.Study, spec: StudySpec, plan: Plan, study_seed: int
) -> list[Callable[[], optuna.Trial]]:
    """One callable per new trial of ``plan``: a planned segment, or a trial asked of the sampler."""
    if plan.segments:
        return [partial(start_segment, study, spec, planned, study_seed) for planned in plan.segments]
    return [partial(ask_new_trial, study, spec.searchSpace, study_seed)] * plan.start_new


def start_segment(
    study: optuna.Study, spec: StudySpec, planned: PlannedSegment, study_seed: int
) -> optuna.Trial:
    """A RUNNING trial with the segment's parameters and its record (``tunefleet.segment``).

    Created directly in the storage: the sampler is not asked (the planner chose the values).
    """
    params = {name: value for name, value in planned.params.items() if name in spec.searchSpace}
    distributions = {name: distribution_of(spec.searchSpace[name]) for name in params}
    template = FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=datetime.datetime.now(),
        datetime_complete=None,
        params=params,
        distributions=distributions,
        user_attrs={ATTR_SEGMENT: planned.segment.to_attr()},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    trial = optuna.Trial(study, trial_id)
    trial.set_user_attr(ATTR_SEED, trial_seed(study_seed, trial.number))
    return trial


def segment_of(user_attrs: Mapping[str, Any]) -> Segment | None:
    return Segment.from_attr(user_attrs.get(ATTR_SEGMENT))


def segment_assignment(
    user_attrs: Mapping[str, Any], trial_number: int, *, root: str | None, prefix: str = ""
) -> SegmentAssignment | None:
    """The worker's view of a segment trial: steps, and checkpoint directories under ``root``.

    Args:
        user_attrs: the trial's user attributes (None is returned when it is not a segment).
        trial_number: the trial; its checkpoint is saved under its own number, so a retry never
            overwrites what an earlier attempt left.
        root: the study's checkpoint directory (local runs), or None for the directory in the
            worker's ``TUNEFLEET_CHECKPOINT_ROOT`` (a cluster's mounted volume).
        prefix: a directory below the root for this study (on a shared volume).
    """
    segment = segment_of(user_attrs)
    if segment is None:
        return None
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    load = (
        base + checkpoint_path(segment.parent, segment.load)
        if segment.load is not None and segment.parent is not None
        else None
    )
    return SegmentAssignment(
        member=segment.member,
        index=segment.index,
        start_step=segment.start,
        end_step=segment.end,
        parent=segment.parent,
        load=load,
        save=base + checkpoint_path(segment.member, trial_number),
        root=root,
    )
