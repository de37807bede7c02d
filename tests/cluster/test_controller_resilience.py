"""The controller survives itself: killed and restarted, two replicas, PostgreSQL restarted."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    ControllerProcess,
    cluster_snapshot,
    finished,
    load_trials,
    prepare_cluster,
    study_manifest,
    study_status,
    trial_jobs,
    trial_pods,
    wait_for,
    with_sleep,
)
from tests.cluster.emulator import KubeEmulator
from tests.support.postgres import PostgresServer
from trial_worker.contract import ASSIGNMENT_ENV, ATTR_REASON, ATTR_RETRY_OF, Assignment, ExitCode

INCOMPLETE_REASON = ExitCode.INCOMPLETE.reason

pytestmark = pytest.mark.timeout(300)


def _complete(storage_url: str, name: str) -> int:
    try:
        return sum(t.state.name == "COMPLETE" for t in load_trials(storage_url, name))
    except KeyError:  # the controller has not created the study yet
        return 0


def _assert_consistent(kube: KubeEmulator, storage_url: str, name: str, max_trials: int) -> None:
    """No trial RUNNING, one Job per trial and none without one, every pod released.

    A trial failed ``incomplete`` was asked but never started (the database went away between
    writing the trial and its parameters): it has no Job and counts towards nothing.
    """
    everything = load_trials(storage_url, name)
    assert not [t.number for t in everything if t.state.name == "RUNNING"]
    never_ran = [t for t in everything if t.user_attrs.get(ATTR_REASON) == INCOMPLETE_REASON]
    trials = [t for t in everything if t not in never_ran]
    logical = {t.user_attrs.get(ATTR_RETRY_OF, t.number) for t in trials}
    assert len(logical) == max_trials, [(t.number, t.state.name, t.user_attrs) for t in everything]
    jobs = sorted(j["metadata"]["name"] for j in trial_jobs(kube, name))
    assert jobs == sorted(f"{name}-t{t.number}" for t in trials)
    assert all(
        "tunefleet.dev/gpu-accounting" not in (p["metadata"].get("finalizers") or [])
        for p in trial_pods(kube, name)
    )
    assert study_status(kube, name)["trialsSummary"] == f"{max_trials}/{max_trials}"


def test_a_controller_killed_mid_study_is_restarted_without_duplicates(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    first = ControllerProcess(kube_emulator, postgres_url, tmp_path, name="first").start()
    second = ControllerProcess(kube_emulator, postgres_url, tmp_path, name="second")
    try:
        kube_emulator.api.create(
            STUDIES, with_sleep(study_manifest("crash", max_trials=8, parallelism=3), 3), NAMESPACE
        )
        wait_for(lambda: len(trial_jobs(kube_emulator, "crash")) >= 3, 60, "no Jobs started")
        first.kill()
        time.sleep(4)  # trials finish while no controller runs
        second.start()
        wait_for(
            lambda: finished(kube_emulator, "crash"),
            150,
            lambda: "the study did not finish after the restart\n" + second.log()[-3000:],
        )
    finally:
        first.kill()
        second.stop()
    _assert_consistent(kube_emulator, postgres_url, "crash", 8)
    assert all(t.state.name == "COMPLETE" for t in load_trials(postgres_url, "crash"))


def test_two_replicas_one_acts_and_the_other_takes_over_when_it_dies(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    replicas = [
        ControllerProcess(kube_emulator, postgres_url, tmp_path, "--peering", "tunefleet", name=f"r{i}")
        for i in range(2)
    ]
    for replica in replicas:
        replica.start()
    try:
        wait_for(
            lambda: sum("this replica now leads" in r.log() for r in replicas) == 1,
            60,
            "no single leader emerged",
        )
        time.sleep(3)
        assert sum("this replica now leads" in r.log() for r in replicas) == 1
        leader = next(r for r in replicas if "this replica now leads" in r.log())
        standby = next(r for r in replicas if r is not leader)
        kube_emulator.api.create(
            STUDIES, with_sleep(study_manifest("duo", max_trials=8, parallelism=2), 2), NAMESPACE
        )
        wait_for(lambda: len(trial_jobs(kube_emulator, "duo")) >= 3, 60, "no Jobs started")
        leader.kill()
        wait_for(lambda: "this replica now leads" in standby.log(), 60, "the standby never took over")
        wait_for(
            lambda: finished(kube_emulator, "duo"),
            150,
            lambda: "the study did not finish on the standby\n" + standby.log()[-3000:],
        )
    finally:
        for replica in replicas:
            replica.stop()
    _assert_consistent(kube_emulator, postgres_url, "duo", 8)


def test_postgres_restarted_mid_study_loses_no_finished_trial(
    kube_emulator: KubeEmulator, postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    try:
        kube_emulator.api.create(
            STUDIES, with_sleep(study_manifest("pg", max_trials=8, parallelism=2), 2), NAMESPACE
        )
        wait_for(lambda: _complete(postgres_url, "pg") >= 2, 90, "no trial completed")
        done_before = {
            t.number: t.value for t in load_trials(postgres_url, "pg") if t.state.name == "COMPLETE"
        }
        postgres_server.stop("immediate")
        time.sleep(6)  # running workers try to report while the database is away
        postgres_server.start()
        wait_for(
            lambda: finished(kube_emulator, "pg"),
            180,
            lambda: "the study did not finish after the restart\n"
            + controller.log()[-6000:]
            + "\n"
            + cluster_snapshot(kube_emulator, postgres_url, "pg"),
        )
    finally:
        controller.stop()
    trials = load_trials(postgres_url, "pg")
    after = {t.number: t.value for t in trials if t.state.name == "COMPLETE"}
    assert done_before.items() <= after.items(), "a finished trial was lost"
    for trial in trials:
        if trial.user_attrs.get(ATTR_REASON) in ("storageUnavailable", "lost", "killed"):
            assert any(t.user_attrs.get(ATTR_RETRY_OF) == trial.number for t in trials), trial
    _assert_consistent(kube_emulator, postgres_url, "pg", 8)


def test_a_worker_that_could_not_store_its_result_is_retried_not_dropped(
    kube_emulator_factory: Callable[..., KubeEmulator], postgres_url: str, tmp_path: Path
) -> None:
    """The pod exits with ExitCode.STORAGE_UNAVAILABLE (its report never reached the database)."""
    tellers = concurrent.futures.ThreadPoolExecutor(2)
    storage = optuna.storages.RDBStorage(postgres_url)
    attempts: list[int] = []

    def tell(assignment: Assignment) -> None:
        study_id = storage.get_study_id_from_name(assignment.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, assignment.trial_number)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, [1.0])

    def behaviour(pod: dict[str, Any]) -> tuple[float, int]:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
        assignment = Assignment.model_validate_json(env[ASSIGNMENT_ENV])
        attempts.append(assignment.trial_number)
        if assignment.trial_number == 0:
            return (0.5, int(ExitCode.STORAGE_UNAVAILABLE))  # ran, but could not store the outcome
        tellers.submit(tell, assignment)
        return (1.0, 0)

    kube = kube_emulator_factory(mode="simulate", behaviour=behaviour)
    prepare_cluster(kube)
    controller = ControllerProcess(kube, postgres_url, tmp_path).start()
    try:
        kube.api.create(STUDIES, study_manifest("unsaved", max_trials=2, parallelism=1), NAMESPACE)
        wait_for(
            lambda: finished(kube, "unsaved"), 90,
            lambda: "the study did not finish\n" + controller.log()[-3000:],
        )
    finally:
        controller.stop()
        tellers.shutdown(wait=True)
    trials = {t.number: t for t in load_trials(postgres_url, "unsaved")}
    assert trials[0].state.name == "FAIL"
    assert trials[0].user_attrs[ATTR_REASON] == "storageUnavailable"
    retry = next(t for t in trials.values() if t.user_attrs.get(ATTR_RETRY_OF) == 0)
    assert retry.params == trials[0].params
    assert retry.state.name == "COMPLETE"
    assert study_status(kube, "unsaved")["trialsSummary"] == "2/2"
