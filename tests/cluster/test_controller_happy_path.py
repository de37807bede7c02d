"""A Study becomes trial Jobs that share one Postgres study, and its status tells how it went."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.kube.trial_access import gateway_secret_name
from tests.cluster.controller_harness import (
    DB_PASSWORD,
    NAMESPACE,
    STUDIES,
    ControllerProcess,
    load_trials,
    prepare_cluster,
    study_manifest,
    study_status,
    trial_jobs,
    trial_pods,
    wait_for,
)
from tests.cluster.emulator import KubeEmulator

pytestmark = pytest.mark.timeout(240)


def test_eight_trials_three_at_a_time_end_with_the_best_in_status(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    peak_running = 0
    try:
        kube_emulator.api.create(STUDIES, study_manifest("quad", max_trials=8, parallelism=3), NAMESPACE)

        def done() -> bool:
            nonlocal peak_running
            active = [
                p
                for p in trial_pods(kube_emulator, "quad")
                if (p.get("status") or {}).get("phase") in ("Pending", "Running")
            ]
            peak_running = max(peak_running, len(active))
            return study_status(kube_emulator, "quad").get("phase") == "Succeeded"

        wait_for(done, 180, lambda: "the study did not succeed\n" + controller.log()[-3000:])
    finally:
        controller.stop()

    trials = load_trials(postgres_url, "quad")
    assert len(trials) == 8
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert peak_running <= 3

    status = study_status(kube_emulator, "quad")
    best = min(trials, key=lambda t: t.value)
    assert status["bestTrial"]["number"] == best.number
    assert status["bestTrial"]["params"] == best.params
    assert status["trialsSummary"] == "8/8"
    assert status["trials"]["complete"] == 8
    assert status["trials"]["running"] == 0
    assert status["stopReason"] == "MaxTrialsReached"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"

    jobs = trial_jobs(kube_emulator, "quad")
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(f"quad-t{n}" for n in range(8))
    study = kube_emulator.api.get(STUDIES, NAMESPACE, "quad")
    for job in jobs:
        owner = job["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("Study", study["metadata"]["uid"])
        assert DB_PASSWORD not in json.dumps(job)
    # Every pod was settled and let go.
    assert all(
        "tunefleet.dev/gpu-accounting" not in (p["metadata"].get("finalizers") or [])
        for p in trial_pods(kube_emulator, "quad")
    )

    best_config = kube_emulator.api.get("configmaps", NAMESPACE, "quad-best")
    assert json.loads(best_config["data"]["best_config.json"])["trial"] == best.number
    if controller.gateway is None:  # TUNEFLEET_TEST_GATEWAY=0: the mirrored password, as before
        secret = kube_emulator.api.get("secrets", NAMESPACE, "tunefleet-db-credentials")
        assert "password" in secret["data"]
    else:  # each trial's token, in a Secret its Job owns; no password in the namespace
        assert kube_emulator.api.find("secrets", NAMESPACE, "tunefleet-db-credentials") is None
        for job in jobs:
            name = gateway_secret_name(job["metadata"]["name"], job["metadata"]["labels"])
            secret = kube_emulator.api.get("secrets", NAMESPACE, name)
            assert secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    account = kube_emulator.api.get("serviceaccounts", NAMESPACE, "tunefleet-trial")
    assert account["automountServiceAccountToken"] is False
    reasons = {e.get("reason") for e in kube_emulator.api.list("events", NAMESPACE)}
    assert {"StudyStarted", "StudyFinished"} <= reasons
