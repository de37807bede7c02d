"""GPU-hour budgets enforced by the controller against the emulated API (pods run as processes).

Figures printed (run with ``-s``): overspend, and the accounting error of every settlement
against its pod's own timestamps.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from controller.budget.ledger import Ledger
from controller.budget.schema import settlements
from controller.kube.manifests import DEADLINE_GRACE_SECONDS, TERMINATION_GRACE_SECONDS
from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    ControllerProcess,
    load_trials,
    prepare_cluster,
    study_manifest,
    study_status,
    trial_pods,
    wait_for,
    with_sleep,
)
from tests.cluster.emulator import KubeEmulator

pytestmark = pytest.mark.timeout(300)
MAX_DURATION_S = 20
WORST_CASE_S = MAX_DURATION_S + DEADLINE_GRACE_SECONDS + TERMINATION_GRACE_SECONDS  # one GPU


def gpu_study(name: str, trials_fitting: int, **spec: Any) -> dict[str, Any]:
    body = study_manifest(name, max_duration=f"{MAX_DURATION_S}s", **spec)
    body["spec"]["trial"]["gpus"] = 1
    body["spec"]["budget"]["gpuHours"] = trials_fitting * WORST_CASE_S / 3600
    return body


def _seconds(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def pod_gpu_seconds(pod: dict[str, Any]) -> int:
    """gpus x (last container finishedAt - startTime), straight from the pod's status."""
    status = pod["status"]
    finished = max(_seconds(c["state"]["terminated"]["finishedAt"]) for c in status["containerStatuses"])
    return int((finished - _seconds(status["startTime"])).total_seconds())


def settled_by_pod(storage_url: str) -> dict[str, int]:
    engine = sa.create_engine(storage_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(settlements.c.key, settlements.c.gpu_seconds)).all()
    engine.dispose()
    return {str(key): int(gpu) for key, gpu in rows}


def test_a_budget_worth_three_trials_admits_three_at_a_time_and_bills_pods_exactly(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    peak = 0
    try:
        body = with_sleep(gpu_study("gpus", 3, max_trials=6, parallelism=5), 1.5)
        kube_emulator.api.create(STUDIES, body, NAMESPACE)

        def done() -> bool:
            nonlocal peak
            active = [
                p
                for p in trial_pods(kube_emulator, "gpus")
                if (p.get("status") or {}).get("phase") in ("Pending", "Running")
                and not p["metadata"].get("deletionTimestamp")
            ]
            peak = max(peak, len(active))
            return study_status(kube_emulator, "gpus").get("phase") in ("Succeeded", "Failed")

        wait_for(done, 240, "the study did not finish\n" + controller.log()[-3000:])
    finally:
        controller.stop()

    limit = 3 * WORST_CASE_S
    with Ledger(postgres_url) as ledger:
        totals = ledger.totals(f"{NAMESPACE}/gpus")
        assert ledger.open_reservations(f"{NAMESPACE}/gpus") == {}
    pods = trial_pods(kube_emulator, "gpus")
    settled = settled_by_pod(postgres_url)
    errors = [settled[p["metadata"]["uid"]] - pod_gpu_seconds(p) for p in pods]
    print(
        f"cluster budget: limit {limit} GPU-s, settled {totals.settled.gpu_seconds} GPU-s, "
        f"overspend {max(0, totals.settled.gpu_seconds - limit)}, peak concurrent pods {peak}, "
        f"accounting error per pod {errors}"
    )
    assert peak <= 3  # the 4th trial waited for a settlement: 3 worst cases fill the budget
    assert totals.settled.gpu_seconds <= limit
    assert len(pods) == len(load_trials(postgres_url, "gpus")) == 6
    assert set(settled) == {p["metadata"]["uid"] for p in pods}
    assert errors == [0] * len(pods)
    assert totals.settled.gpu_seconds == sum(pod_gpu_seconds(p) for p in pods)


def test_drain_stops_running_trials_when_no_further_trial_fits(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    try:
        body = with_sleep(gpu_study("drain", 2, max_trials=10, parallelism=2), 15)
        body["spec"]["budget"]["onExhausted"] = "drain"
        kube_emulator.api.create(STUDIES, body, NAMESPACE)
        wait_for(
            lambda: study_status(kube_emulator, "drain").get("phase") in ("Succeeded", "Failed"),
            120,
            "the drained study did not end\n" + controller.log()[-3000:],
        )
    finally:
        controller.stop()
    trials = load_trials(postgres_url, "drain")
    assert [(t.state.name, t.user_attrs.get("tunefleet.reason")) for t in trials] == [("FAIL", "budget")] * 2
    assert study_status(kube_emulator, "drain").get("stopReason") == "BudgetExhausted"
    with Ledger(postgres_url) as ledger:
        totals = ledger.totals(f"{NAMESPACE}/drain")
    assert totals.settled.gpu_seconds <= 2 * WORST_CASE_S
    print(f"drain: settled {totals.settled.gpu_seconds} of {2 * WORST_CASE_S} GPU-s, overspend 0")
