"""What a trial pod is charged, computed from its own timestamps (pure, by value)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from controller.budget.accounting import Charge, is_terminal, pod_charge, pod_seconds, worst_case

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0)
PLENTY = Charge(gpu_seconds=10**9, cpu_seconds=10**9)


def terminated(finished: str, exit_code: int = 0) -> dict[str, Any]:
    return {"state": {"terminated": {"exitCode": exit_code, "finishedAt": finished}}}


def pod(
    phase: str = "Succeeded",
    start: str | None = "2026-03-01T10:00:00Z",
    containers: list[Any] | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if start is not None:
        status["startTime"] = start
    if containers is not None:
        status["containerStatuses"] = containers
    return {"metadata": {"name": "s-t0-abcde", "uid": "u-1", **metadata}, "status": status}


def test_a_finished_pod_is_charged_gpus_times_start_to_last_finish() -> None:
    finished = pod(containers=[terminated("2026-03-01T10:05:00Z"), terminated("2026-03-01T10:05:30Z")])
    charge, wall = pod_charge(finished, gpus=2, now=NOW, grace_s=30, reserved=PLENTY)
    assert wall == 330.0
    assert charge == Charge(gpu_seconds=660, cpu_seconds=0)


def test_cpus_are_charged_too_when_asked() -> None:
    finished = pod(containers=[terminated("2026-03-01T10:00:10Z")])
    charge, _ = pod_charge(finished, gpus=0, now=NOW, grace_s=30, reserved=PLENTY, cpus=1.5)
    assert charge == Charge(gpu_seconds=0, cpu_seconds=15)


def test_the_charge_never_exceeds_the_reservation() -> None:
    finished = pod(phase="Failed", containers=[terminated("2026-03-01T11:00:00Z", 137)])
    charge, wall = pod_charge(finished, gpus=1, now=NOW, grace_s=30, reserved=Charge(gpu_seconds=1830))
    assert wall == 3600.0
    assert charge.gpu_seconds == 1830


def test_a_pod_that_never_started_costs_nothing() -> None:
    pending = pod(phase="Pending", start=None, deletionTimestamp="2026-03-01T10:00:30Z")
    assert pod_charge(pending, gpus=4, now=NOW, grace_s=30, reserved=PLENTY) == (Charge(), 0.0)


def test_a_pod_lost_while_being_deleted_is_charged_up_to_its_deletion_deadline() -> None:
    # Kubernetes sets deletionTimestamp to the request time plus the pod's grace period.
    lost = pod(
        phase="Running",
        containers=[{"state": {"running": {}}}],
        deletionTimestamp="2026-03-01T10:10:30Z",
        deletionGracePeriodSeconds=30,
    )
    charge, wall = pod_charge(lost, gpus=1, now=NOW, grace_s=30, reserved=PLENTY)
    assert (charge.gpu_seconds, wall) == (630, 630.0)


def test_a_deletion_mark_without_its_grace_gets_the_controllers_grace_added() -> None:
    lost = pod(phase="Running", deletionTimestamp="2026-03-01T10:10:00Z")
    assert pod_seconds(lost, NOW, grace_s=5) == 605.0


def test_a_pod_that_vanished_with_no_final_status_is_charged_until_now_within_the_reservation() -> None:
    vanished = pod(phase="Running", containers=[{"state": {"running": {}}}])
    charge, wall = pod_charge(vanished, gpus=1, now=NOW, grace_s=30, reserved=Charge(gpu_seconds=3630))
    assert wall == 7200.0
    assert charge.gpu_seconds == 3630


def test_a_pod_that_failed_in_its_init_container_is_charged_until_then() -> None:
    failed = pod(phase="Failed")
    failed["status"]["initContainerStatuses"] = [terminated("2026-03-01T10:00:42Z", 1)]
    assert pod_seconds(failed, NOW, grace_s=30) == 42.0


def test_timestamps_may_be_aware_datetimes_with_an_offset() -> None:
    start = datetime.datetime(2026, 3, 1, 11, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    finished = pod(start=None, containers=[terminated("2026-03-01T10:01:00+00:00")])
    finished["status"]["startTime"] = start
    assert pod_seconds(finished, NOW, grace_s=0) == 60.0


def test_a_bad_timestamp_says_what_was_expected() -> None:
    broken = pod(start="yesterday", containers=[terminated("2026-03-01T10:00:10Z")])
    with pytest.raises(ValueError, match="RFC 3339 timestamp, got 'yesterday'"):
        pod_seconds(broken, NOW, grace_s=0)


def test_terminal_pods() -> None:
    assert is_terminal(pod(phase="Succeeded"))
    assert is_terminal(pod(phase="Running", containers=[terminated("2026-03-01T10:00:10Z")]))
    assert not is_terminal(pod(phase="Running", containers=[{"state": {"running": {}}}]))


def test_the_worst_case_covers_max_duration_plus_grace() -> None:
    assert worst_case(gpus=2, cpus=1, max_duration_s=3600, grace_s=30) == Charge(7260, 3630)
    assert Charge.for_run(1, 1, 0.2) == Charge(1, 1)  # partial seconds round up
