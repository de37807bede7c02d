"""What a local worker is handed for one trial: its Assignment, built from the spec and the trial.

The runner decides when a trial starts and on which worker; this decides what the worker runs
(objective, seed, active parameters, log file, rendezvous, PBT segment).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna

from controller.local.gang import local_rendezvous
from controller.spec import StudySpec
from controller.studies.asking import active_parameters
from controller.studies.confirming import pruner_for
from controller.studies.segments import segment_assignment
from trial_worker.contract import (
    ATTR_SEED,
    Assignment,
    CommandObjective,
    MetricDirection,
    PrunerConfig,
    PythonObjective,
    SegmentAssignment,
)


@dataclass(frozen=True)
class LocalAssignments:
    """The study-wide part of every local trial's Assignment."""

    spec: StudySpec
    storage_url: str
    study_name: str
    workdir: str
    log_dir: Path
    checkpoint_dir: Path

    def for_trial(self, trial: optuna.Trial, pruner: PrunerConfig, queued: bool) -> Assignment:
        """``pruner`` is the study's current one; a confirmation run is never pruned."""
        entry = self.spec.trial
        objective = (
            PythonObjective(entry=entry.python)
            if entry.python
            else CommandObjective(argv=entry.command or [])
        )
        return Assignment(
            storage_url=self.storage_url,
            study_name=self.study_name,
            trial_number=trial.number,
            objective=objective,
            metrics=[
                MetricDirection(name=m.name, direction=m.direction) for m in self.spec.objective.metrics
            ],
            constraints=self.spec.objective.constraints,
            pruner=pruner_for(trial.user_attrs, pruner),
            seed=int(trial.user_attrs[ATTR_SEED]),  # the trial is complete: never a default seed
            active_params=active_parameters(self.spec.searchSpace, trial.params),
            max_duration_s=entry.maxDuration,
            deterministic=self.spec.reproducibility.deterministic,
            workdir=self.workdir,
            log_path=str((self.log_dir / f"trial-{trial.number}.log").resolve()),
            queued=queued,
            rendezvous=local_rendezvous(entry.nodes) if entry.nodes > 1 else None,
            segment=self._segment(trial),
        )

    def _segment(self, trial: optuna.Trial) -> SegmentAssignment | None:
        """A PBT segment's steps and checkpoints (its record is read only for PBT studies)."""
        if not self.spec.is_population_based:
            return None
        return segment_assignment(trial.user_attrs, trial.number, root=str(self.checkpoint_dir))
