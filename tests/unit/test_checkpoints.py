"""The worker's checkpoint API (trial_worker.checkpoints): directories, staged saves, and clear
failures for a missing or unreadable checkpoint."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from trial_worker import checkpoints
from trial_worker.checkpoints import CheckpointNotSaved, CheckpointUnavailable
from trial_worker.contract import CHECKPOINT_ROOT_ENV, SegmentAssignment


def assignment(load: str | None = "member-1/trial-4", root: str | None = None) -> SegmentAssignment:
    return SegmentAssignment(
        member=2, index=3, start_step=10, end_step=15, parent=1, load=load, save="member-2/trial-9", root=root
    )


def test_a_segment_resumes_what_the_previous_one_saved_once_it_is_promoted(tmp_path: Path) -> None:
    first = checkpoints.prepare(assignment(load=None, root=str(tmp_path)))
    assert first.load_dir is None and first.load_state() is None
    assert list(first.steps) == [10, 11, 12, 13, 14]
    first.save_state({"w": [1.0, 2.0]})
    assert not (tmp_path / "member-2/trial-9").exists()  # staged until the trial completes
    assert checkpoints.promote(first) == tmp_path / "member-2/trial-9"
    resumed = checkpoints.prepare(
        SegmentAssignment(member=2, index=4, start_step=15, end_step=20, parent=2,
                          load="member-2/trial-9", save="member-2/trial-11", root=str(tmp_path))
    )
    assert resumed.load_state() == {"w": [1.0, 2.0]}


def test_the_root_comes_from_the_environment_on_a_cluster(tmp_path: Path) -> None:
    (tmp_path / "member-1/trial-4").mkdir(parents=True)
    segment = checkpoints.prepare(assignment(), {CHECKPOINT_ROOT_ENV: str(tmp_path)})
    assert segment.load_dir == tmp_path / "member-1/trial-4"
    with pytest.raises(CheckpointUnavailable, match=CHECKPOINT_ROOT_ENV):
        checkpoints.prepare(assignment(), {})


def test_a_missing_checkpoint_fails_before_the_objective_naming_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointUnavailable) as caught:
        checkpoints.prepare(assignment(root=str(tmp_path)))
    assert "checkpoint of member 1" in str(caught.value) and "member-1/trial-4" in str(caught.value)


def test_an_unreadable_checkpoint_is_reported_as_such(tmp_path: Path) -> None:
    (tmp_path / "member-1/trial-4").mkdir(parents=True)
    (tmp_path / "member-1/trial-4/state.pkl").write_bytes(b"not a pickle")
    segment = checkpoints.prepare(assignment(root=str(tmp_path)))
    with pytest.raises(CheckpointUnavailable, match="cannot be read: UnpicklingError"):
        segment.load_state()
    unreadable = pytest.raises(CheckpointUnavailable, match="cannot be read: FileNotFoundError")
    with unreadable, segment.restoring() as found:
        assert found is not None
        (found / "weights.bin").read_bytes()


def test_a_segment_that_saved_nothing_is_not_promoted(tmp_path: Path) -> None:
    segment = checkpoints.prepare(assignment(load=None, root=str(tmp_path)))
    with pytest.raises(CheckpointNotSaved, match="without saving a checkpoint"):
        checkpoints.promote(segment)
    segment.save_state(1)
    checkpoints.discard(segment)
    assert not segment.save_dir.exists()


def test_the_objective_sees_its_segment_only_while_it_runs(tmp_path: Path) -> None:
    segment = checkpoints.prepare(assignment(load=None, root=str(tmp_path)))
    trial = SimpleNamespace(number=9)
    assert checkpoints.segment(trial) is None
    with checkpoints.active(9, segment):
        assert checkpoints.segment(trial) is segment
        with pytest.raises(RuntimeError, match="not the trial this worker runs"):
            checkpoints.segment(SimpleNamespace(number=8))
    assert checkpoints.segment(trial) is None


def test_command_mode_gets_the_directories_and_steps(tmp_path: Path) -> None:
    (tmp_path / "member-1/trial-4").mkdir(parents=True)
    segment = checkpoints.prepare(assignment(root=str(tmp_path)))
    values = checkpoints.command_values(segment)
    assert values["checkpoint.load"] == str(tmp_path / "member-1/trial-4")
    assert values["checkpoint.save"] == str(segment.save_dir)
    assert (values["segment.start"], values["segment.end"], values["member"]) == ("10", "15", "2")
    env = checkpoints.command_env(segment)
    assert env["TUNEFLEET_STEP_END"] == "15" and env["TUNEFLEET_SEGMENT"] == "3"
