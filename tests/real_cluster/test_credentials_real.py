"""Database credentials on a real API server, under the chart's RBAC: no study namespace holds the
password (trial pods go through the trial gateway); a rotated password reaches the controller's own
new connections with no restart, and the gateway's once it is restarted, as docs/install.md says,
with no trial lost."""

from __future__ import annotations

import base64
import secrets

import pytest
from optuna.trial import TrialState

from tests.real_cluster.conftest import RealCluster, command_study
from tests.real_cluster.harness import LocalController, TunefleetInstall

pytestmark = [pytest.mark.real_cluster, pytest.mark.timeout(900)]


def _namespace_passwords(cluster: RealCluster, password: str) -> list[str]:
    """The Secrets of the study namespace that hold ``password``."""
    found = []
    for secret in cluster.core.list_namespaced_secret(cluster.namespace).items:
        values = [base64.b64decode(v).decode(errors="replace") for v in (secret.data or {}).values()]
        if any(password in v for v in values):
            found.append(secret.metadata.name)
    return found


def test_password_rotation_under_the_chart(
    real_cluster: RealCluster, tunefleet_install: TunefleetInstall, controller: LocalController
) -> None:
    body = command_study("rotate", real_cluster.image, max_trials=6, parallelism=1, sleep=3)
    real_cluster.apply_study(body)
    real_cluster.wait(lambda: real_cluster.status("rotate").get("trials", {}).get("complete", 0) >= 2,
                      300, "the first trials did not complete")
    old = tunefleet_install.database.password
    assert _namespace_passwords(real_cluster, old) == []

    # What a platform team does: a new password for the role, then the Secret the chart names. Every
    # open session of the role is ended, so the controller and the pods must log in again.
    new = "rotated-" + secrets.token_urlsafe(8) + "@/:%"
    tunefleet_install.rotate_password(new)
    tunefleet_install.database.server.terminate_connections(tunefleet_install.database.role)
    # The gateway reads its password when it starts (the chart sets it from the Secret): roll it.
    tunefleet_install.gateway.password = new
    tunefleet_install.gateway.restart(hard=False)

    real_cluster.wait(lambda: "database password rotated" in controller.log(), 120,
                      "the controller never took the rotated password")
    real_cluster.wait(lambda: real_cluster.status("rotate").get("phase") in ("Succeeded", "Failed"), 600,
                      "the study did not finish after the rotation")
    status = real_cluster.status("rotate")
    assert status["phase"] == "Succeeded" and status["trialsSummary"] == "6/6", status
    source = real_cluster.condition("rotate", "StorageCredentials")
    assert source is not None and (source["status"], source["reason"]) == ("True", "TrialGateway")
    assert _namespace_passwords(real_cluster, new) == []
    # A trial whose session was ended mid-run failed as storageUnavailable and ran again with the
    # same params (infrastructure); every configuration completed.
    trials = real_cluster.trials("rotate")
    firsts = [t for t in trials if "tunefleet.retry_of" not in t.user_attrs]
    assert len(firsts) == 6
    for trial in firsts:
        if trial.state != TrialState.COMPLETE:
            assert trial.user_attrs.get("tunefleet.reason") == "storageUnavailable", trial.user_attrs
            retries = [t.state for t in trials if t.user_attrs.get("tunefleet.retry_of") == trial.number]
            assert TrialState.COMPLETE in retries, f"trial {trial.number} was never completed by a retry"
    assert controller.running, "the controller died on the rotation:\n" + controller.log_tail()
    assert "database password rotated" in controller.log()
    assert "forbidden" not in controller.log().lower()
