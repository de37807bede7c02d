"""Database credentials under the chart's RBAC: a Secret the controller may not read is said out loud
(condition, Event, error log line) and never replaced by another password in silence; the chart
grants what the controller reads, so a rotated database Secret reaches new trial pods.

The first test is the controller's way without the trial gateway (``gateway=False``: it mirrors
the password into study namespaces, as before the gateway); with it (the chart's way) a rotated
Secret concerns the controller's own connections only. test_gateway_tenancy.py covers the rest."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    ControllerProcess,
    condition,
    prepare_cluster,
    study_manifest,
    trial_jobs,
    wait_for,
    with_sleep,
)
from tests.cluster.emulator import KubeEmulator
from tests.support.chart_install import DB_SECRET, RELEASE_NAMESPACE

# Secrets are read once per this many seconds; short, so a changed Secret counts at once.
FAST = {"TUNEFLEET_LIST_RESYNC_S": "1"}


def _secret(name: str, password: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "data": {"password": base64.b64encode(password.encode()).decode()}}


def _mirrored(kube: KubeEmulator) -> str | None:
    secret = kube.api.find("secrets", NAMESPACE, "tunefleet-db-credentials")
    return base64.b64decode(secret["data"]["password"]).decode() if secret else None


def _error_lines(controller: ControllerProcess) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in controller.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("level") == "error"]


@pytest.mark.slow
def test_a_secret_ref_the_controller_may_not_read_is_a_condition_an_event_and_an_error(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    kube_emulator.api.create("secrets", _secret("team-db", "team-password"), NAMESPACE)
    body = study_manifest("guarded", max_trials=1, parallelism=1, storage={"secretRef": "team-db"})
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path, env=FAST, gateway=False).start()
    try:
        kube_emulator.api.create(STUDIES, body, NAMESPACE)
        blocked = wait_for(lambda: condition(kube_emulator, "guarded", "StorageCredentials"), 60,
                           lambda: "no StorageCredentials condition\n" + controller.log()[-3000:])
        assert blocked["status"] == "False" and blocked["reason"] == "SecretForbidden"
        assert f"Secret {NAMESPACE}/team-db is forbidden" in blocked["message"]
        assert "rbac.storageSecretNames" in blocked["message"]
        ready = condition(kube_emulator, "guarded", "Ready")
        assert ready is not None and ready["status"] == "False" and ready["reason"] == "SecretForbidden"
        events = [e for e in kube_emulator.api.list("events", NAMESPACE)
                  if e.get("reason") == "SecretForbidden"]
        assert len(events) == 1 and events[0]["type"] == "Warning"
        assert any("team-db" in str(line.get("detail")) for line in _error_lines(controller))
        assert trial_jobs(kube_emulator, "guarded") == []  # no trial with some other password
        assert _mirrored(kube_emulator) is None
    finally:
        controller.stop()

    # The platform team grants the name (a chart value): trial pods get that password.
    granted = ControllerProcess(kube_emulator, postgres_url, tmp_path, env=FAST, name="granted",
                                chart_values={"rbac": {"storageSecretNames": ["team-db"]}},
                                gateway=False).start()
    try:
        wait_for(lambda: _mirrored(kube_emulator) == "team-password", 60,
                 lambda: "the granted Secret's password never reached the trial pods\n"
                 + granted.log()[-3000:])
        now = wait_for(lambda: (c := condition(kube_emulator, "guarded", "StorageCredentials"))
                       and c["status"] == "True" and c, 30, "the condition never cleared")
        assert f"{NAMESPACE}/team-db" in now["message"]
    finally:
        granted.stop()


@pytest.mark.slow
def test_a_rotated_database_secret_reaches_the_controllers_own_connections(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    # With the trial gateway (the chart's way) no trial pod holds the password: a rotation concerns
    # the controller's own new connections only, and nothing is mirrored into the namespace.
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path, env=FAST, gateway=True).start()
    try:
        body = with_sleep(study_manifest("rotate", max_trials=1, parallelism=1), 30)
        kube_emulator.api.create(STUDIES, body, NAMESPACE)
        source = wait_for(lambda: condition(kube_emulator, "rotate", "StorageCredentials"), 60,
                          lambda: "no StorageCredentials condition\n" + controller.log()[-3000:])
        assert source is not None and (source["status"], source["reason"]) == ("True", "TrialGateway")
        assert "only through the trial gateway" in source["message"]
        kube_emulator.api.patch(
            "secrets", RELEASE_NAMESPACE, DB_SECRET, {"data": _secret(DB_SECRET, "rotated-password")["data"]}
        )
        wait_for(lambda: "database password rotated" in controller.log(), 30,
                 lambda: "the controller never took the rotated password\n" + controller.log()[-3000:])
        assert _mirrored(kube_emulator) is None
        assert _error_lines(controller) == []
    finally:
        controller.stop()
