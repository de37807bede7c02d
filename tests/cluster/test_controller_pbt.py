"""Population-based training on the cluster tier: segments as Jobs, checkpoints on a volume (the
emulator's PersistentVolumeClaim is a host directory), a segment's pod deleted mid-run, and the
controller killed between a segment's end and the next segment's start."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial

from controller.budget.ledger import Ledger
from controller.planner.segments import ATTR_SEGMENT, Segment
from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    ControllerProcess,
    optuna_key,
    prepare_cluster,
    study_manifest,
    study_status,
    trial_pods,
    wait_for,
)
from tests.cluster.emulator import KubeEmulator
from trial_worker.contract import ATTR_REASON, ATTR_RETRY_OF

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # two controller starts, five segment pods

CLAIM = "pbt-checkpoints"
STUDY = "pbt"
POPULATION, STEPS, INTERVAL = 2, 4, 2  # small on purpose (CI time): the worse member still exploits


def pbt_study(step_sleep_s: float) -> dict[str, Any]:
    body = study_manifest(STUDY, objective="tests.support.pbt_objectives:pure_python", parallelism=POPULATION)
    spec = body["spec"]
    spec["objective"]["steps"] = STEPS
    spec["searchSpace"] = {"lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True, "mutable": True}}
    spec["strategy"] = {"sampler": "pbt", "seed": 3,
                        "settings": {"population": POPULATION, "interval": INTERVAL}}
    spec["budget"] = {}
    spec["checkpoints"] = {"persistentVolumeClaim": CLAIM, "path": "/studies"}
    spec["trial"]["template"]["spec"]["containers"] = [
        {"name": "trial", "env": [{"name": "TUNEFLEET_TEST_SLEEP", "value": str(step_sleep_s)}]}
    ]
    return body


def segments(storage: optuna.storages.BaseStorage) -> list[tuple[FrozenTrial, Segment]]:
    prefix = f"{NAMESPACE}/{STUDY}"  # the Optuna study is keyed by the object too: <prefix>/<uid>
    keys = [s.study_name for s in storage.get_all_studies() if s.study_name.startswith(prefix + "/")]
    if not keys:
        return []
    trials = optuna.load_study(study_name=keys[-1], storage=storage).get_trials(deepcopy=False)
    found = [(t, Segment.from_attr(t.user_attrs.get(ATTR_SEGMENT))) for t in trials]
    return [(t, s) for t, s in found if s is not None]


def resuming_segment_running(
    kube: KubeEmulator, storage: optuna.storages.BaseStorage
) -> tuple[FrozenTrial, dict[str, Any]] | None:
    """A running segment that has loaded the checkpoint it resumes, and its pod."""
    by_number = {
        t.number: t for t, s in segments(storage) if t.state.name == "RUNNING" and s.load is not None
    }
    for pod in trial_pods(kube, STUDY):
        number = int(pod["metadata"]["labels"]["tunefleet.dev/trial"])
        running = (pod.get("status") or {}).get("phase") == "Running"
        if number in by_number and running and by_number[number].user_attrs.get("loaded"):
            return by_number[number], pod
    return None


@pytest.fixture
def storage(postgres_url: str) -> Iterator[optuna.storages.RDBStorage]:
    """One storage for every poll: a URL would open (and check) the database each time, CPU
    taken from the controller and the pods on a busy machine."""
    opened = optuna.storages.RDBStorage(postgres_url)
    yield opened
    opened.engine.dispose()


def test_a_pbt_study_moves_checkpoints_on_a_volume_through_a_controller_crash_and_pod_loss(
    kube_emulator: KubeEmulator, postgres_url: str, storage: optuna.storages.RDBStorage, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    kube_emulator.api.create("persistentvolumeclaims", {"metadata": {"name": CLAIM}, "spec": {
        "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}, NAMESPACE)
    first = ControllerProcess(kube_emulator, postgres_url, tmp_path, name="first").start()
    try:
        kube_emulator.api.create(STUDIES, pbt_study(step_sleep_s=0.5), NAMESPACE)
        # Freeze the controller while the first segments run, let one end, then kill it: it dies
        # between that segment's end and the start of its member's next segment.
        wait_for(lambda: len([t for t, _ in segments(storage) if t.state.name == "RUNNING"])
                 == POPULATION, 120, lambda: "the first segments never ran\n" + first.log()[-3000:])
        assert first.process is not None
        os.killpg(first.process.pid, signal.SIGSTOP)
        ended = wait_for(lambda: next((t for t, _ in segments(storage) if t.state.name == "COMPLETE"),
                                      None), 60, "no segment ended while the controller was stopped")
    finally:
        first.kill()
    assert ended is not None
    member = Segment.from_attr(ended.user_attrs[ATTR_SEGMENT])
    assert member is not None and member.end < STEPS
    before = {t.number for t, _ in segments(storage)}
    assert len(before) == POPULATION  # no next segment was started

    second = ControllerProcess(kube_emulator, postgres_url, tmp_path, name="second").start()
    try:
        # A segment that resumed a checkpoint loses its pod mid-run: retried, from the same one.
        found = wait_for(lambda: resuming_segment_running(kube_emulator, storage), 120,
                         lambda: "no resuming segment ran\n" + second.log()[-3000:])
        assert found is not None
        deleted, pod = found
        kube_emulator.api.delete("pods", NAMESPACE, pod["metadata"]["name"])
        wait_for(lambda: study_status(kube_emulator, STUDY).get("phase") in ("Succeeded", "Failed"), 240,
                 lambda: "the study did not finish\n" + second.log()[-3000:])
    finally:
        second.stop()
    assert study_status(kube_emulator, STUDY)["stopReason"] == "PopulationTrained"

    found_all = segments(storage)
    by_number = {t.number: t for t, _ in found_all}
    # The deleted pod's trial failed for the platform and its retry resumed the same checkpoint.
    assert by_number[deleted.number].user_attrs[ATTR_REASON] in ("killed", "lost")
    retry = next(t for t, _ in found_all if t.user_attrs.get(ATTR_RETRY_OF) == deleted.number)
    assert retry.state.name == "COMPLETE"
    assert retry.user_attrs[ATTR_SEGMENT] == deleted.user_attrs[ATTR_SEGMENT]
    assert retry.user_attrs["loaded"] == deleted.user_attrs["loaded"]
    # Every resumed segment started from exactly the weights its source saved, on the volume.
    resumed = [(t, s) for t, s in found_all if t.state.name == "COMPLETE" and s.load is not None]
    assert resumed
    for trial, segment in resumed:
        assert trial.user_attrs["loaded"] == by_number[segment.load].user_attrs["saved"]  # type: ignore[index]
    # Nothing asked twice across the crash: one completed segment per member and segment count.
    completed = [(s.member, s.index) for t, s in found_all if t.state.name == "COMPLETE"]
    assert len(completed) == len(set(completed)) == POPULATION * STEPS // INTERVAL
    for number in range(POPULATION):
        assert max(s.end for t, s in found_all if s.member == number and t.state.name == "COMPLETE") == STEPS
    volume = kube_emulator.claim_path(NAMESPACE, CLAIM) / "studies" / STUDY
    saved = {p.name for p in volume.glob("member-*/trial-*") if (p / "state.pkl").is_file()}
    assert {f"trial-{t.number}" for t, _ in found_all if t.state.name == "COMPLETE"} <= saved
    with Ledger(postgres_url) as ledger:
        assert ledger.open_reservations(optuna_key(postgres_url, STUDY)) == {}
