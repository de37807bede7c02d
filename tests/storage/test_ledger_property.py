"""The ledger under random interleavings of reserve, settle, crash and restart (hypothesis).

Several controllers run at once, each a thread with its own :class:`Ledger` (its own connections)
on one database, each owning a study; all studies draw from one namespace budget. A controller
may crash at any step of a trial's life (after reserving provisionally, before the trial exists;
after reserving, before the pod exists; after the pod ended, before settling; after settling,
before removing the finalizer) and restart with a new Ledger, then recover as the operator does.
Throughout and at the end:

- settled + open reservations never exceed the namespace budget, nor any study's limit;
- every settled amount equals its pod's GPU-seconds from the pod's timestamps;
- nothing is settled twice, and nothing stays reserved once every controller has recovered.
"""

from __future__ import annotations

import datetime
import itertools
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.budget.accounting import Charge, pod_charge, worst_case
from controller.budget.ledger import PROVISIONAL_TRIAL, Ledger, provisional_key
from controller.budget.schema import settlements

NAMESPACE = "team-a"
MAX_DURATION = 60
GRACE = 30
T0 = datetime.datetime(2026, 3, 4, 10, 0, 0)
CRASH_POINTS = (None, "after_provisional", "before_pod", "before_settle", "before_finalizer")


class Crash(Exception):
    """The controller process died here."""


@dataclass
class Pod:
    uid: str
    study: str
    reservation_key: str
    gpus: int
    seconds: int
    finalizer: bool = True

    def manifest(self) -> dict[str, Any]:
        finished = T0 + datetime.timedelta(seconds=self.seconds)
        return {
            "metadata": {
                "uid": self.uid,
                "finalizers": ["tunefleet.dev/gpu-accounting"] if self.finalizer else [],
            },
            "status": {
                "phase": "Succeeded",
                "startTime": T0.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "containerStatuses": [
                    {"state": {"terminated": {"finishedAt": finished.strftime("%Y-%m-%dT%H:%M:%SZ")}}}
                ],
            },
        }


class Cluster:
    """The pods that exist: what a controller finds when it (re)starts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pods: dict[str, Pod] = {}
        self.uids = itertools.count()

    def create_pod(self, study: str, reservation_key: str, gpus: int, seconds: int) -> Pod:
        with self.lock:
            pod = Pod(f"uid-{next(self.uids)}", study, reservation_key, gpus, seconds)
            self.pods[pod.uid] = pod
            return pod

    def pods_of(self, study: str) -> list[Pod]:
        with self.lock:
            return [p for p in self.pods.values() if p.study == study]


Trial = tuple[int, float, str | None]  # gpus, fraction of the worst case the pod runs, crash point
trial_strategy = st.tuples(st.integers(1, 4), st.floats(0.0, 1.0), st.sampled_from(CRASH_POINTS))
controllers_strategy = st.lists(
    st.tuples(st.lists(trial_strategy, min_size=1, max_size=6), st.integers(200, 2000)),
    min_size=2,
    max_size=3,
)


class Controller:
    def __init__(self, url: str, study: str, cluster: Cluster) -> None:
        self.url = url
        self.study = study
        self.cluster = cluster
        self.ledger = Ledger(url)
        self.next_trial = 0

    def run(self, trials: list[Trial]) -> None:
        for gpus, fraction, crash in trials:
            try:
                self.run_trial(gpus, fraction, crash)
            except Crash:
                self.restart()

    def run_trial(self, gpus: int, fraction: float, crash: str | None) -> None:
        # As the executor does: reserve provisionally, then ask the trial, then rekey to it.
        worst = worst_case(gpus, 0, MAX_DURATION, GRACE)
        provisional = provisional_key(self.study)
        if not self.ledger.reserve(provisional, self.study, PROVISIONAL_TRIAL, worst, NAMESPACE, T0):
            return
        if crash == "after_provisional":
            raise Crash
        number = self.next_trial
        self.next_trial += 1
        key = f"{self.study}/{number}/0"
        assert self.ledger.rekey(provisional, key, number)
        if crash == "before_pod":
            raise Crash
        # activeDeadlineSeconds + grace bound the pod: it never runs past the worst case.
        pod = self.cluster.create_pod(self.study, key, gpus, int(fraction * (MAX_DURATION + GRACE)))
        if crash == "before_settle":
            raise Crash
        self.settle(pod)
        if crash == "before_finalizer":
            raise Crash
        pod.finalizer = False

    def settle(self, pod: Pod) -> None:
        reserved = worst_case(pod.gpus, 0, MAX_DURATION, GRACE)
        charge, wall = pod_charge(pod.manifest(), pod.gpus, T0, GRACE, reserved)
        self.ledger.settle(pod.uid, pod.reservation_key, charge, wall)

    def restart(self) -> None:
        """A new process: new connections, then settle what ended and release what never ran."""
        self.ledger.close()
        self.ledger = Ledger(self.url)
        self.ledger.release_provisional(self.study)  # as the reconciler does on taking a study over
        pods = self.cluster.pods_of(self.study)
        for pod in pods:
            if pod.finalizer:
                self.settle(pod)
                pod.finalizer = False
        with_pods = {p.reservation_key for p in pods}
        for key in self.ledger.open_reservations(self.study):
            if key not in with_pods:
                self.ledger.release(key)


def _check_caps(ledger: Ledger, namespace_limit: int, study_limits: dict[str, int]) -> list[str]:
    problems = []
    spent = ledger.namespace_totals(NAMESPACE, T0)
    assert spent is not None
    if spent.used + spent.reserved > namespace_limit:
        problems.append(f"namespace: {spent.used} + {spent.reserved} > {namespace_limit}")
    for study, limit in study_limits.items():
        totals = ledger.totals(study)
        if totals.settled.gpu_seconds + totals.reserved.gpu_seconds > limit:
            problems.append(f"{study}: {totals.settled} + {totals.reserved} > {limit}")
    return problems


def run_scenario(url: str, namespace_limit: int, plans: list[tuple[list[Trial], int]]) -> None:
    setup = Ledger(url)
    setup.set_namespace_budget(NAMESPACE, namespace_limit, "none", None, T0)
    study_limits = {f"{NAMESPACE}/s{i}": limit for i, (_, limit) in enumerate(plans)}
    for study, limit in study_limits.items():
        setup.set_study_limits(study, limit, None)
    cluster = Cluster()
    controllers = [Controller(url, study, cluster) for study in study_limits]
    problems: list[str] = []
    done = threading.Event()

    def watch() -> None:
        with Ledger(url) as observer:
            while not done.wait(0.002):
                problems.extend(_check_caps(observer, namespace_limit, study_limits))

    watcher = threading.Thread(target=watch)
    workers = [
        threading.Thread(target=c.run, args=(plan,)) for c, (plan, _) in zip(controllers, plans, strict=True)
    ]
    watcher.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    watcher.join()
    for controller in controllers:
        controller.restart()  # every controller comes back once more at the end
        controller.ledger.close()

    assert problems == []
    assert _check_caps(setup, namespace_limit, study_limits) == []
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(settlements.c.key, settlements.c.gpu_seconds)).all()
    engine.dispose()
    settled = {str(key): int(gpu_seconds) for key, gpu_seconds in rows}
    assert len(settled) == len(rows)
    assert set(settled) == set(cluster.pods), "every pod settled once, and only pods"
    for uid, pod in cluster.pods.items():
        assert settled[uid] == pod.gpus * pod.seconds, (
            f"{uid}: charged {settled[uid]}, pod used {pod.gpus * pod.seconds}"
        )
    for study in study_limits:
        assert setup.open_reservations(study) == {}
        assert setup.totals(study).settled == Charge(
            gpu_seconds=sum(p.gpus * p.seconds for p in cluster.pods.values() if p.study == study)
        )
    setup.close()


PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(namespace_limit=st.integers(0, 3000), plans=controllers_strategy)
def test_sqlite_ledger_holds_under_crashes_and_concurrent_controllers(
    namespace_limit: int, plans: list[tuple[list[Trial], int]]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        run_scenario(f"sqlite:///{Path(directory) / 'study.db'}", namespace_limit, plans)


@PROPERTY_SETTINGS
@given(namespace_limit=st.integers(0, 3000), plans=controllers_strategy)
def test_postgres_ledger_holds_under_crashes_and_concurrent_controllers(
    postgres_server: Any, namespace_limit: int, plans: list[tuple[list[Trial], int]]
) -> None:
    run_scenario(postgres_server.create_database(), namespace_limit, plans)


@pytest.mark.parametrize("seconds", [0, 45, 90])
def test_the_scenario_checks_can_fail(sqlite_url: str, seconds: int) -> None:
    """A ledger that charged more than the pod used would be caught by the end-state check."""
    cluster = Cluster()
    controller = Controller(sqlite_url, f"{NAMESPACE}/s0", cluster)
    controller.ledger.set_study_limits(controller.study, 1000, None)
    controller.run_trial(1, seconds / (MAX_DURATION + GRACE), None)
    pod = next(iter(cluster.pods.values()))
    assert controller.ledger.settlement(pod.uid) == Charge(gpu_seconds=pod.seconds)
    controller.ledger.close()
