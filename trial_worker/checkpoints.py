"""Checkpoints for population-based training (PBT): what a segment resumes from and saves to.

Under ``strategy.sampler: pbt`` a member of the population trains in segments; each segment is
one trial that trains ``interval`` steps. The objective asks for its segment, restores the state
it should resume from, trains the segment's steps, and saves its state::

    from trial_worker import checkpoints

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)   # mutable: may change per segment
        model = build_model()
        segment = checkpoints.segment(trial)        # None when the study is not PBT
        state = segment.load_state() if segment else None
        if state is not None:
            model.load_state_dict(state["model"])
        for step in segment.steps if segment else range(EPOCHS):
            loss = train_one_epoch(model, lr)
            trial.report(loss, step)
        if segment:
            segment.save_state({"model": model.state_dict()})
        return loss

- :meth:`Segment.load_state` / :meth:`Segment.save_state` pickle one object (``state.pkl``); for
  your own files, read ``segment.load_dir`` inside ``with segment.restoring():`` and write into
  ``segment.save_dir``.
- A checkpoint that is missing fails the segment before the objective runs; one that cannot be
  read (an error inside ``restoring()`` or ``load_state``) fails it too. Either way the reason is
  ``checkpointUnavailable`` and the study retries the member from its last good checkpoint.
- What the objective writes goes to a staging directory that becomes the checkpoint only when
  the trial completes, so a killed segment never leaves half a checkpoint behind. A segment
  that completes without saving anything fails with ``checkpointNotSaved``.
- Command-mode trials get the same through env (``TUNEFLEET_CHECKPOINT_LOAD``, empty for a
  fresh member, ``TUNEFLEET_CHECKPOINT_SAVE``, ``TUNEFLEET_STEP_START``, ``TUNEFLEET_STEP_END``,
  ``TUNEFLEET_MEMBER``) and placeholders (``{{checkpoint.load}}``, ``{{checkpoint.save}}``,
  ``{{segment.start}}``, ``{{segment.end}}``, ``{{member}}``); a command that cannot read its
  checkpoint exits with code 74 (``CHECKPOINT_UNREADABLE_EXIT``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trial_worker.contract import CHECKPOINT_ROOT_ENV, SegmentAssignment

STATE_FILE = "state.pkl"
STAGING_SUFFIX = ".partial"


class CheckpointUnavailable(Exception):
    """The checkpoint a segment resumes from is missing or cannot be read."""


class CheckpointNotSaved(Exception):
    """A segment ended without a checkpoint to hand on (nothing saved, or the save failed)."""


@dataclass(frozen=True)
class Segment:
    """One segment of one population member.

    Attributes:
        member: the member's number (0 .. population - 1).
        index: how many segments the member trained before this one.
        start: the first step to train; ``end``: the step after the last one.
        parent: the member whose checkpoint this segment resumes (itself when it continues,
            another when it exploited a better one; None for a fresh member).
        load_dir: the checkpoint directory to resume from, or None for a fresh member.
        save_dir: where to write this segment's checkpoint.
    """

    member: int
    index: int
    start: int
    end: int
    parent: int | None
    load_dir: Path | None
    save_dir: Path

    @property
    def steps(self) -> range:
        """The steps this segment trains: report intermediate values at these."""
        return range(self.start, self.end)

    @contextlib.contextmanager
    def restoring(self) -> Iterator[Path | None]:
        """Yields ``load_dir``; any error raised inside becomes :class:`CheckpointUnavailable`."""
        try:
            yield self.load_dir
        except CheckpointUnavailable:
            raise
        except Exception as exc:
            raise CheckpointUnavailable(
                f"the checkpoint of member {self.parent} at {self.load_dir} cannot be read: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def load_state(self, name: str = STATE_FILE) -> Any:
        """The object the previous segment saved with :meth:`save_state` (None for a fresh member)."""
        if self.load_dir is None:
            return None
        with self.restoring(), (self.load_dir / name).open("rb") as handle:
            return pickle.load(handle)

    def save_state(self, state: Any, name: str = STATE_FILE) -> None:
        """Pickle ``state`` (e.g. ``{"model": model.state_dict(), "optimizer": ...}``)."""
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with (self.save_dir / name).open("wb") as handle:
            pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)


_active: tuple[int, Segment] | None = None  # (trial number, segment) while the worker runs it


def segment(trial: Any) -> Segment | None:
    """The segment ``trial`` trains, or None when the study does not use population-based training.

    Args:
        trial: the ``optuna.Trial`` passed to the objective.
    """
    if _active is None:
        return None
    number, current = _active
    if getattr(trial, "number", number) != number:
        raise RuntimeError(f"checkpoints.segment: trial {trial.number} is not the trial this worker runs")
    return current


# -- the worker's side ------------------------------------------------------------------------------


def prepare(assignment: SegmentAssignment, environ: dict[str, str] | None = None) -> Segment:
    """Resolve the directories and check that the checkpoint to resume from is there.

    Raises :class:`CheckpointUnavailable` naming the missing directory or root.
    """
    env = os.environ if environ is None else environ
    root_text = assignment.root or env.get(CHECKPOINT_ROOT_ENV)
    if not root_text:
        raise CheckpointUnavailable(
            f"no checkpoint directory: the assignment names none and {CHECKPOINT_ROOT_ENV} is not set "
            "(on a cluster, set spec.checkpoints.persistentVolumeClaim)"
        )
    root = Path(root_text)
    load_dir = root / assignment.load if assignment.load is not None else None
    if load_dir is not None and not (load_dir.is_dir() and os.access(load_dir, os.R_OK | os.X_OK)):
        raise CheckpointUnavailable(
            f"the checkpoint of member {assignment.parent} to resume from is missing or unreadable: "
            f"{load_dir}"
        )
    final = root / assignment.save
    staging = final.with_name(final.name + STAGING_SUFFIX)
    try:
        if staging.exists():
            shutil.rmtree(staging)  # left by an earlier attempt of this very trial
        staging.mkdir(parents=True)
    except OSError as exc:
        raise CheckpointNotSaved(f"cannot create the checkpoint directory {staging}: {exc}") from exc
    return Segment(
        member=assignment.member,
        index=assignment.index,
        start=assignment.start_step,
        end=assignment.end_step,
        parent=assignment.parent,
        load_dir=load_dir,
        save_dir=staging,
    )


@contextlib.contextmanager
def active(trial_number: int, current: Segment) -> Iterator[Segment]:
    """Make ``current`` what :func:`segment` returns while the objective runs."""
    global _active
    _active = (trial_number, current)
    try:
        yield current
    finally:
        _active = None


def promote(current: Segment) -> Path:
    """Turn the staging directory into the segment's checkpoint; returns its final path.

    Raises :class:`CheckpointNotSaved` when nothing was saved or the rename failed.
    """
    staging = current.save_dir
    final = staging.with_name(staging.name.removesuffix(STAGING_SUFFIX))
    try:
        saved = staging.is_dir() and any(staging.iterdir())
    except OSError as exc:
        raise CheckpointNotSaved(f"cannot read the saved checkpoint {staging}: {exc}") from exc
    if not saved:
        raise CheckpointNotSaved(
            "the segment completed without saving a checkpoint: call segment.save_state(...) or "
            f"write files into segment.save_dir ({staging})"
        )
    try:
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except OSError as exc:
        raise CheckpointNotSaved(f"cannot store the checkpoint at {final}: {exc}") from exc
    return final


def discard(current: Segment) -> None:
    """Remove the staging directory of a segment that did not complete."""
    shutil.rmtree(current.save_dir, ignore_errors=True)


def command_values(current: Segment) -> dict[str, str]:
    """The placeholders a command-mode segment may use, by name (see the contract)."""
    return {
        "checkpoint.load": str(current.load_dir) if current.load_dir is not None else "",
        "checkpoint.save": str(current.save_dir),
        "segment.start": str(current.start),
        "segment.end": str(current.end),
        "member": str(current.member),
    }


def command_env(current: Segment) -> dict[str, str]:
    values = command_values(current)
    return {
        "TUNEFLEET_CHECKPOINT_LOAD": values["checkpoint.load"],
        "TUNEFLEET_CHECKPOINT_SAVE": values["checkpoint.save"],
        "TUNEFLEET_STEP_START": values["segment.start"],
        "TUNEFLEET_STEP_END": values["segment.end"],
        "TUNEFLEET_MEMBER": values["member"],
        "TUNEFLEET_SEGMENT": str(current.index),
    }
