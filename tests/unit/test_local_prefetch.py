"""How far the local runner asks ahead of its busy workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from controller.local.prefetch import prefetch_depth
from controller.local.runner import LocalRunner, RunOptions
from controller.spec import parse_study_text
from tests.support.specs import study_document


def test_nothing_is_asked_ahead_before_three_trials_have_finished() -> None:
    assert prefetch_depth(1.0, []) == 0
    assert prefetch_depth(1.0, [0.01, 0.01]) == 0


def test_trials_long_next_to_an_ask_are_asked_when_a_worker_is_free() -> None:
    # 40 ms to start a trial of 10 s: 0.4 %, so each sample sees every result finished by then.
    assert prefetch_depth(0.04, [10.0, 10.0, 10.0]) == 0


def test_short_trials_get_one_queued_and_very_short_ones_two() -> None:
    assert prefetch_depth(0.04, [1.0, 1.0, 1.0]) == 1  # 4 %
    assert prefetch_depth(0.04, [0.1, 0.08, 0.12]) == 2  # 40 %: a pruned trial ends before the next ask


def test_the_median_trial_decides_not_an_outlier() -> None:
    assert prefetch_depth(0.04, [0.1, 0.1, 0.1, 60.0]) == 2
    assert prefetch_depth(0.04, [10.0, 10.0, 10.0, 0.01]) == 0


# -- which busy worker a trial asked ahead goes to (no processes: stand-in workers) -------------


@dataclass
class _BusyWorker:
    name: str
    queued: int
    trial_number: int | None = 0
    exited: bool = False


def _runner(tmp_path: Path, workers: list[_BusyWorker], depth: int) -> LocalRunner:
    manifest = parse_study_text(yaml.safe_dump(study_document(parallelism=len(workers))))
    runner = LocalRunner(manifest, RunOptions(storage_url=f"sqlite:///{tmp_path}/s.db", log_dir=tmp_path))
    runner._pool.workers = {i: w for i, w in enumerate(workers)}  # type: ignore[misc]
    runner._queue_depth = depth
    return runner


def _taken(runner: LocalRunner) -> str | None:
    taken = runner._take_worker()
    if taken is None:
        return None
    worker, behind = taken
    assert behind
    worker.queued += 1  # type: ignore[misc]  # what handing it the trial does
    return worker.name  # type: ignore[attr-defined, no-any-return]


def test_two_ahead_fills_the_shortest_queue_first_and_stops_at_two_each(tmp_path: Path) -> None:
    runner = _runner(tmp_path, [_BusyWorker("a", queued=1), _BusyWorker("b", queued=0)], depth=2)
    assert [_taken(runner) for _ in range(4)] == ["b", "a", "b", None]


def test_one_ahead_queues_one_behind_each_worker(tmp_path: Path) -> None:
    runner = _runner(tmp_path, [_BusyWorker("a", queued=0), _BusyWorker("b", queued=0)], depth=1)
    assert [_taken(runner) for _ in range(3)] == ["a", "b", None]


def test_a_queued_trial_can_move_to_a_busy_worker_even_with_prefetch_off(tmp_path: Path) -> None:
    """A worker died with a trial queued: it goes behind another even when trials are now long."""
    runner = _runner(tmp_path, [_BusyWorker("a", queued=0), _BusyWorker("b", queued=1)], depth=0)
    assert [_taken(runner) for _ in range(2)] == ["a", None]


def test_no_trial_queues_behind_an_exited_or_idle_worker(tmp_path: Path) -> None:
    gone = _BusyWorker("gone", queued=0, exited=True)
    idle = _BusyWorker("idle", queued=0, trial_number=None)
    runner = _runner(tmp_path, [gone, idle], depth=2)
    assert _taken(runner) is None
