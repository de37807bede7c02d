"""GPU-hour budgets enforced by the controller against the emulated API (pods run as processes).

Figures printed (run with ``-s``): overspend, and the accounting error of every settlement
against its pod's own timestamps.
"""

from __future__ import annotations

import datetime
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from controller.budget.ledger import Ledger
from controller.budget.schema import settlements
from controller.kube.manifests import DEADLINE_GRACE_SECONDS, KUBELET_REACTION_SECONDS
from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    TRIAL_TERMINATION_GRACE_S,
    ControllerProcess,
    condition,
    load_trials,
    optuna_key,
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
WORST_CASE_S = (  # what one one-GPU trial reserves
    MAX_DURATION_S + DEADLINE_GRACE_SECONDS + TRIAL_TERMINATION_GRACE_S + KUBELET_REACTION_SECONDS
)


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

        wait_for(done, 240, lambda: "the study did not finish\n" + controller.log()[-3000:])
    finally:
        controller.stop()

    limit = 3 * WORST_CASE_S
    with Ledger(postgres_url) as ledger:
        totals = ledger.totals(optuna_key(postgres_url, "gpus"))
        assert ledger.open_reservations(optuna_key(postgres_url, "gpus")) == {}
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
            lambda: "the drained study did not end\n" + controller.log()[-3000:],
        )
    finally:
        controller.stop()
    trials = load_trials(postgres_url, "drain")
    assert [(t.state.name, t.user_attrs.get("tunefleet.reason")) for t in trials] == [("FAIL", "budget")] * 2
    assert study_status(kube_emulator, "drain").get("stopReason") == "BudgetExhausted"
    with Ledger(postgres_url) as ledger:
        totals = ledger.totals(optuna_key(postgres_url, "drain"))
    assert totals.settled.gpu_seconds <= 2 * WORST_CASE_S
    print(f"drain: settled {totals.settled.gpu_seconds} of {2 * WORST_CASE_S} GPU-s, overspend 0")


# -- GPUBudgets, crashes and races ----------------------------------------------------------------

GPUBUDGETS = "gpubudgets.tunefleet.dev"
T = TypeVar("T")


def gpubudget(gpu_seconds: int, period: str = "none", name: str = "team") -> dict[str, Any]:
    return {
        "apiVersion": "tunefleet.dev/v1alpha1",
        "kind": "GPUBudget",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"gpuHours": gpu_seconds / 3600, "period": period},
    }


def namespace_study(name: str, shard: str | None = None, **spec: Any) -> dict[str, Any]:
    """A one-GPU study with no budget of its own: only the namespace's GPUBudget caps it."""
    body = study_manifest(name, max_duration=f"{MAX_DURATION_S}s", **spec)
    body["spec"]["trial"]["gpus"] = 1
    if shard is not None:
        body["metadata"]["labels"] = {"shard": shard}
    return body


class BudgetWatch:
    """Samples the ledger while a test runs: settled + open reservations against the limit."""

    def __init__(self, storage_url: str, limit: int, study: str | None = None) -> None:
        self.ledger = Ledger(storage_url)
        self.storage_url = storage_url
        self.limit = limit
        self.study = study
        self.overspend = 0
        self.samples = 0

    def sample(self) -> None:
        if self.study is not None:
            totals = self.ledger.totals(optuna_key(self.storage_url, self.study))
            committed = totals.settled.gpu_seconds + totals.reserved.gpu_seconds
        else:
            spent = self.ledger.namespace_totals(NAMESPACE)
            committed = 0 if spent is None else spent.used + spent.reserved
        self.overspend = max(self.overspend, committed - self.limit)
        self.samples += 1

    def sampling(self, predicate: Callable[[], T]) -> Callable[[], T]:
        """``predicate``, sampling the ledger first each time ``wait_for`` calls it."""

        def sampled() -> T:
            self.sample()
            return predicate()

        return sampled

    def close(self) -> None:
        self.ledger.close()


def active_pods(kube: KubeEmulator, *names: str) -> int:
    return sum(
        1
        for name in names
        for p in trial_pods(kube, name)
        if (p.get("status") or {}).get("phase") in ("Pending", "Running")
        and not p["metadata"].get("deletionTimestamp")
    )


def accounting_errors(kube: KubeEmulator, storage_url: str, *names: str) -> list[int]:
    """Settled GPU-seconds minus the pod's own timestamps, for every trial pod (each settled once:
    settlements are keyed by pod UID, so a second settlement would be a missing or extra key)."""
    settled = settled_by_pod(storage_url)
    pods = [p for name in names for p in trial_pods(kube, name)]
    assert set(settled) == {p["metadata"]["uid"] for p in pods}, "every pod settled, and only pods"
    return [settled[p["metadata"]["uid"]] - pod_gpu_seconds(p) for p in pods]


class MetricsController(ControllerProcess):
    """The controller, scraped on the metrics port the chart gives it."""

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def wait_for_gpubudget(kube: KubeEmulator, name: str = "team") -> dict[str, Any]:
    def written() -> dict[str, Any] | None:
        status = (kube.api.find(GPUBUDGETS, NAMESPACE, name) or {}).get("status") or {}
        return dict(status) if status.get("periodStart") else None

    found = wait_for(written, 60, "the controller never wrote the GPUBudget's status")
    assert found is not None
    return found


def crash_then_recover(
    kube: KubeEmulator, storage_url: str, tmp_path: Path, point: str, study: str
) -> tuple[BudgetWatch, ControllerProcess]:
    """Run a study under a controller that SIGKILLs itself at ``point``, then under a fresh one."""
    prepare_cluster(kube)
    watch = BudgetWatch(storage_url, 2 * WORST_CASE_S, study=study)
    doomed = ControllerProcess(
        kube, storage_url, tmp_path, env={"TUNEFLEET_CRASH_AT": point}, name="doomed"
    ).start()
    kube.api.create(STUDIES, with_sleep(gpu_study(study, 2, max_trials=3, parallelism=1), 0.5), NAMESPACE)
    wait_for(lambda: doomed.process is not None and doomed.process.poll() is not None, 120,
             lambda: f"the controller never reached {point}\n" + doomed.log()[-3000:])
    assert "crash point reached" in doomed.log()
    watch.sample()
    return watch, ControllerProcess(kube, storage_url, tmp_path, name="recovered")


def finish_and_check(
    kube: KubeEmulator, storage_url: str, watch: BudgetWatch, controller: ControllerProcess, study: str
) -> list[int]:
    controller.start()
    try:
        wait_for(
            watch.sampling(lambda: study_status(kube, study).get("phase") in ("Succeeded", "Failed")),
            180,
            lambda: "the study did not finish after the restart\n" + controller.log()[-3000:],
        )
    finally:
        controller.stop()
    watch.sample()
    watch.close()
    trials = load_trials(storage_url, study)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3  # nothing asked twice, none lost
    with Ledger(storage_url) as ledger:
        assert ledger.open_reservations(optuna_key(storage_url, study)) == {}
        totals = ledger.totals(optuna_key(storage_url, study))
    errors = accounting_errors(kube, storage_url, study)
    assert len(errors) == 3
    print(
        f"{study}: limit {watch.limit} GPU-s, settled {totals.settled.gpu_seconds} GPU-s "
        f"({totals.settled.gpu_seconds / watch.limit:.3f} of it), overspend {watch.overspend} "
        f"over {watch.samples} samples, accounting error per pod {errors} s"
    )
    assert watch.overspend <= 0
    assert errors == [0, 0, 0]
    return errors


def test_a_controller_killed_between_reservation_and_job_creation_still_ends_exact(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    watch, fresh = crash_then_recover(kube_emulator, postgres_url, tmp_path, "after-reserve", "crash-reserve")
    # Died with the reservation committed and no Job: the room is held, nothing runs.
    with Ledger(postgres_url) as ledger:
        assert list(ledger.open_reservations(optuna_key(postgres_url, "crash-reserve")).values()) == [0]
    assert trial_jobs_of(kube_emulator, "crash-reserve") == []
    finish_and_check(kube_emulator, postgres_url, watch, fresh, "crash-reserve")


def test_a_controller_killed_after_its_provisional_reservation_asks_no_trial_twice(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    watch, fresh = crash_then_recover(
        kube_emulator, postgres_url, tmp_path, "after-provisional", "crash-provisional"
    )
    # Died holding room under a provisional key, before asking: no trial, no Job; the fresh
    # controller releases the room when it takes the study over.
    with Ledger(postgres_url) as ledger:
        assert list(ledger.open_reservations(optuna_key(postgres_url, "crash-provisional")).values()) == [-1]
    assert load_trials(postgres_url, "crash-provisional") == []
    assert trial_jobs_of(kube_emulator, "crash-provisional") == []
    finish_and_check(kube_emulator, postgres_url, watch, fresh, "crash-provisional")
    assert "released provisional reservations" in fresh.log()


def test_a_controller_killed_between_ask_and_rekey_adopts_the_trial_it_asked(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    watch, fresh = crash_then_recover(kube_emulator, postgres_url, tmp_path, "after-ask", "crash-ask")
    # Died with trial 0 asked (RUNNING) and its room still held under the provisional key.
    with Ledger(postgres_url) as ledger:
        assert list(ledger.open_reservations(optuna_key(postgres_url, "crash-ask")).values()) == [-1]
    assert [(t.number, t.state.name) for t in load_trials(postgres_url, "crash-ask")] == [(0, "RUNNING")]
    assert trial_jobs_of(kube_emulator, "crash-ask") == []
    finish_and_check(kube_emulator, postgres_url, watch, fresh, "crash-ask")
    assert "released provisional reservations" in fresh.log()


def test_a_controller_killed_between_pod_end_and_settlement_still_ends_exact(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    watch, fresh = crash_then_recover(kube_emulator, postgres_url, tmp_path, "before-settle", "crash-settle")
    # Died with a finished pod unsettled: its finalizer still holds it, the ledger has no charge.
    pods = trial_pods(kube_emulator, "crash-settle")
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Succeeded"
    assert "tunefleet.dev/gpu-accounting" in pods[0]["metadata"]["finalizers"]
    assert settled_by_pod(postgres_url) == {}
    finish_and_check(kube_emulator, postgres_url, watch, fresh, "crash-settle")


def trial_jobs_of(kube: KubeEmulator, name: str) -> list[dict[str, Any]]:
    return kube.api.list("jobs.batch", NAMESPACE, label_selector=f"tunefleet.dev/study={name}")


def test_two_controllers_racing_on_one_namespace_budget_never_overspend(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    """Two standalone controllers (no leader election), each owning one study of the namespace."""
    prepare_cluster(kube_emulator)
    limit = 3 * WORST_CASE_S
    kube_emulator.api.create(GPUBUDGETS, gpubudget(limit), NAMESPACE)
    controllers = [
        ControllerProcess(kube_emulator, postgres_url, tmp_path, name=f"controller-{shard}",
                          env={"TUNEFLEET_STUDY_SELECTOR": f"shard={shard}"}).start()
        for shard in ("a", "b")
    ]
    watch = BudgetWatch(postgres_url, limit)
    peak = 0
    try:
        wait_for_gpubudget(kube_emulator)
        for shard in ("a", "b"):
            body = with_sleep(namespace_study(f"race-{shard}", shard, max_trials=4, parallelism=3), 1.5)
            kube_emulator.api.create(STUDIES, body, NAMESPACE)

        def done() -> bool:
            nonlocal peak
            watch.sample()
            peak = max(peak, active_pods(kube_emulator, "race-a", "race-b"))
            return all(study_status(kube_emulator, f"race-{s}").get("phase") == "Succeeded" for s in "ab")

        wait_for(done, 240, "the racing studies did not finish\n" + controllers[0].log()[-2000:]
                 + controllers[1].log()[-2000:])
    finally:
        for controller in controllers:
            controller.stop()
    watch.sample()
    watch.close()
    errors = accounting_errors(kube_emulator, postgres_url, "race-a", "race-b")
    with Ledger(postgres_url) as ledger:
        spent = ledger.namespace_totals(NAMESPACE)
    assert spent is not None
    print(
        f"two controllers: namespace limit {limit} GPU-s, settled {spent.used} GPU-s "
        f"({spent.used / limit:.3f}), overspend {watch.overspend} over {watch.samples} samples, "
        f"peak concurrent pods {peak}, accounting error per pod {errors} s"
    )
    assert watch.overspend <= 0
    assert peak <= 3  # the shared budget held 3 worst cases, whichever controller reserved them
    assert spent.reserved == 0 and spent.used == sum(pod_gpu_seconds(p) for s in "ab"
                                                      for p in trial_pods(kube_emulator, f"race-{s}"))
    # The room is reserved (provisionally) before a trial is asked: a reservation refused because
    # the other controller took the room first leaves no trial behind, so each study runs exactly
    # maxTrials trials, all COMPLETE, each one pod billed exactly.
    per_study = {s: load_trials(postgres_url, f"race-{s}") for s in "ab"}
    trials = [t for s in "ab" for t in per_study[s]]
    refused = [t for t in trials if t.user_attrs.get("tunefleet.reason") == "budget"]
    stops = {s: study_status(kube_emulator, f"race-{s}").get("stopReason") for s in "ab"}
    print(f"two controllers: {len(trials)} trials, {len(refused)} refused by the budget at reserve time, "
          f"trials per study {({s: len(per_study[s]) for s in 'ab'})}, stop reasons {stops}")
    assert refused == []
    assert {s: [t.state.name for t in per_study[s]] for s in "ab"} == {s: ["COMPLETE"] * 4 for s in "ab"}
    assert errors == [0] * len(trials)


def test_a_gpubudget_shared_by_two_studies_ends_both_budget_exhausted(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    """period: none; room for one worst case plus a few seconds: trials run one at a time until the
    room left is less than a worst case. Also scrapes the controller's /metrics over HTTP."""
    prepare_cluster(kube_emulator)
    limit = WORST_CASE_S + 8
    kube_emulator.api.create(GPUBUDGETS, gpubudget(limit), NAMESPACE)
    controller = MetricsController(kube_emulator, postgres_url, tmp_path).start()
    watch = BudgetWatch(postgres_url, limit)
    peak = 0
    names = ("shared-a", "shared-b")
    try:
        status = wait_for_gpubudget(kube_emulator)
        assert status["remaining"] == round(limit / 3600, 4) and status["used"] == 0
        for name in names:
            kube_emulator.api.create(
                STUDIES, with_sleep(namespace_study(name, max_trials=50, parallelism=2), 1.0), NAMESPACE
            )

        def done() -> bool:
            nonlocal peak
            watch.sample()
            peak = max(peak, active_pods(kube_emulator, *names))
            return all(study_status(kube_emulator, n).get("phase") in ("Succeeded", "Failed") for n in names)

        wait_for(done, 240, lambda: "the studies did not end\n" + controller.log()[-3000:])
        with Ledger(postgres_url) as ledger:
            spent = ledger.namespace_totals(NAMESPACE)
            per_study = {n: ledger.totals(optuna_key(postgres_url, n)).settled.gpu_seconds for n in names}
        assert spent is not None
        wait_for(
            lambda: kube_emulator.api.get(GPUBUDGETS, NAMESPACE, "team")["status"]["used"]
            == round(spent.used / 3600, 4),
            30,
            "the GPUBudget status did not catch up with the ledger",
        )
        metrics = wait_for(controller.scrape, 30, "no /metrics")
    finally:
        controller.stop()
    watch.sample()
    watch.close()
    errors = accounting_errors(kube_emulator, postgres_url, *names)
    print(
        f"shared GPUBudget: limit {limit} GPU-s, settled {spent.used} GPU-s ({spent.used / limit:.3f} "
        f"of it; a worst case is {WORST_CASE_S}), overspend {watch.overspend} over {watch.samples} "
        f"samples, trials {len(errors)}, accounting error per pod {errors} s"
    )
    assert watch.overspend <= 0 and peak <= 1
    assert errors == [0] * len(errors) and len(errors) >= 2
    assert spent.reserved == 0 and limit - spent.used < WORST_CASE_S  # no further trial could fit
    for name in names:
        status = study_status(kube_emulator, name)
        assert status["stopReason"] == "BudgetExhausted"
        assert status["budget"]["gpuSecondsUsed"] == per_study[name]
        assert status["budget"]["gpuSecondsReserved"] == 0
        # A snapshot from the study's last reconcile: the other study may have held a reservation.
        assert status["budget"]["gpuHoursRemaining"] * 3600 < WORST_CASE_S
        assert status["budget"]["summary"] == f"{per_study[name] / 3600:.2f}".rstrip("0").rstrip(".") + (
            f"/{limit / 3600:.2f}".rstrip("0").rstrip(".")
        ) or per_study[name] == 0
        labels = (("namespace", NAMESPACE), ("study", name))
        assert metrics[("tunefleet_gpu_seconds_used_total", labels)] == per_study[name]
        assert metrics[("tunefleet_gpu_seconds_reserved", labels)] == 0
        assert metrics[("tunefleet_gpu_seconds_remaining", labels)] < WORST_CASE_S
        complete = metrics[("tunefleet_trials", tuple(sorted((*labels, ("state", "COMPLETE")))))]
        assert complete == sum(t.state.name == "COMPLETE" for t in load_trials(postgres_url, name))
    assert metrics[("tunefleet_namespace_gpu_seconds_used", (("namespace", NAMESPACE),))] == spent.used
    reconciles = sum(v for (n, _), v in metrics.items() if n == "tunefleet_reconcile_duration_seconds_count")
    assert reconciles > 0


def test_an_empty_daily_gpubudget_makes_studies_wait_until_it_is_raised(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    limit = WORST_CASE_S + 4
    kube_emulator.api.create(GPUBUDGETS, gpubudget(limit, period="daily"), NAMESPACE)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    watch = BudgetWatch(postgres_url, limit)
    try:
        wait_for_gpubudget(kube_emulator)
        body = with_sleep(namespace_study("waits", max_trials=4, parallelism=1), 1.0)
        kube_emulator.api.create(STUDIES, body, NAMESPACE)

        def waiting_condition() -> dict[str, Any] | None:
            found = condition(kube_emulator, "waits", "BudgetWaiting")
            return found if found is not None and found["status"] == "True" else None

        waiting = wait_for(
            watch.sampling(waiting_condition),
            180,
            lambda: "the study never waited for the budget\n" + controller.log()[-3000:],
        )
        tomorrow = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).strftime("%Y-%m-%d")
        assert waiting is not None and f"refills at {tomorrow}T00:00:00Z" in waiting["message"]
        assert study_status(kube_emulator, "waits").get("phase") not in ("Succeeded", "Failed")
        watch.sample()
        kube_emulator.api.patch(GPUBUDGETS, NAMESPACE, "team", {"spec": {"gpuHours": 1.0}})
        watch.limit = 3600  # from now on the raised budget is the cap
        wait_for(
            watch.sampling(lambda: study_status(kube_emulator, "waits").get("phase") == "Succeeded"),
            240,
            lambda: "the study did not go on after the GPUBudget was raised\n" + controller.log()[-3000:],
        )
    finally:
        controller.stop()
    watch.close()
    assert study_status(kube_emulator, "waits")["stopReason"] == "MaxTrialsReached"
    assert (condition(kube_emulator, "waits", "BudgetWaiting") or {}).get("status") == "False"
    assert accounting_errors(kube_emulator, postgres_url, "waits") == [0] * 4
    print(f"BudgetWaiting: overspend {watch.overspend} over {watch.samples} samples (limit {limit} GPU-s "
          "until raised to 3600)")
    assert watch.overspend <= 0
