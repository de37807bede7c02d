"""Tenancy through the trial gateway, adversarially: a trial pod holds no password, and its token
buys its own trial and nothing else.

One scenario (a module fixture, ~1 min) runs under the chart's controller with the gateway on: an
earlier version's mirrored password Secret waits in ``team-a``; a victim Study runs to completion
in ``team-b``; then, in ``team-a``, a Study whose odd trials are intruders
(tests/cluster/tenancy_objectives.py) tries, from inside its real pod and with its own token,
everything a tenant must not do, while its even sibling runs beside it. Each test checks one claim
against what the scenario left, so each refusal fails on its own.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import optuna
import pytest
from optuna.trial import TrialState

from controller.budget.ledger import Ledger
from controller.gateway.tokens import TokenClaims, TokenKeys
from controller.kube.trial_access import DEFAULT_TOKEN_SLACK_S, gateway_secret_name, job_created_at
from tests.cluster.controller_harness import (
    DB_PASSWORD,
    NAMESPACE,
    STUDIES,
    ControllerProcess,
    cluster_snapshot,
    prepare_cluster,
    stop_gateway,
    study_manifest,
    wait_for,
)
from tests.cluster.emulator import KubeEmulator
from tests.cluster.tenancy_objectives import (
    ATTR_ATTEMPTS,
    ATTR_ENV,
    TAMPERED,
    VICTIM_STUDY_ENV,
    VICTIM_STUDY_ID_ENV,
    VICTIM_TRIAL_ID_ENV,
)
from tests.support.gateway import RunningGateway
from tests.support.postgres import PostgresServer
from trial_worker.contract import DB_PASSWORD_ENV

pytestmark = pytest.mark.timeout(300)

OTHER = "team-b"
MIRRORED = "tunefleet-db-credentials"
MAX_DURATION_S = 120
DEADLINE_GRACE_S = 30  # the controller's default TUNEFLEET_TRIAL_DEADLINE_GRACE_S
DENIED = "PERMISSION_DENIED"
SIBLING_ATTEMPTS = (
    "tell a sibling trial", "report on a sibling trial", "set a sibling's parameter",
    "set a sibling's attribute",
)
OTHER_STUDY_ATTEMPTS = (
    "find another study", "read another study's trials", "read another study's trial",
    "write another study's trial", "change another study's attributes",
)
STUDY_ATTEMPTS = (
    "create a study", "delete another study", "delete its own study", "list every study", "create a trial",
    "change its study's attributes",
)


@dataclass
class Tenancy:
    """What the scenario left behind, and what it saw before the intruder ran."""

    kube: KubeEmulator
    url: str
    gateway: RunningGateway
    victim: str  # the Optuna study of team-b's Study
    intruder: str  # team-a's
    victim_before: dict[str, Any]
    ledger_before: dict[str, Any]

    def trials(self, key: str) -> list[optuna.trial.FrozenTrial]:
        return optuna.load_study(study_name=key, storage=self.url).get_trials(deepcopy=False)

    def intruder_trial(self) -> optuna.trial.FrozenTrial:
        return next(t for t in self.trials(self.intruder) if t.number == 1)

    def attempts(self) -> dict[str, str]:
        return dict(self.intruder_trial().user_attrs[ATTR_ATTEMPTS])

    def token(self, namespace: str, job: str) -> str:
        secret = self.kube.api.get("secrets", namespace, secret_of(self.kube, namespace, job))
        return base64.b64decode(secret["data"]["token"]).decode()


def secret_of(kube: KubeEmulator, namespace: str, job: str) -> str:
    """The name of the gateway Secret of the stored Job ``job``."""
    labels = kube.api.get("jobs.batch", namespace, job)["metadata"]["labels"]
    return gateway_secret_name(job, labels)


def _phase(kube: KubeEmulator, namespace: str, name: str) -> str | None:
    return ((kube.api.find(STUDIES, namespace, name) or {}).get("status") or {}).get("phase")


def _study_key(url: str, namespace: str, name: str) -> str:
    names = [n for n in optuna.get_all_study_names(url) if n.startswith(f"{namespace}/{name}/")]
    assert len(names) == 1, names
    return names[0]


def study_snapshot(url: str, key: str) -> dict[str, Any]:
    study = optuna.load_study(study_name=key, storage=url)
    trials = [
        (t.number, t.state.name, t.values, t.params, t.user_attrs, t.system_attrs, t.intermediate_values)
        for t in study.get_trials(deepcopy=False)
    ]
    return {"user_attrs": study.user_attrs, "trials": trials}


def ledger_snapshot(url: str, key: str) -> dict[str, Any]:
    with Ledger(url) as ledger:
        return {"totals": ledger.totals(key), "charges": ledger.charges_by_trial(key),
                "open": ledger.open_reservations(key)}


def _secret(name: str, password: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": {"password": base64.b64encode(password.encode()).decode()}}


@pytest.fixture(scope="module")
def tenancy(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenancy]:
    work: Path = tmp_path_factory.mktemp("tenancy")
    kube = KubeEmulator(work / "kube").start()
    url = postgres_server.create_database()
    try:
        prepare_cluster(kube)
        kube.api.create_namespace(OTHER)
        kube.api.create("secrets", _secret(MIRRORED, DB_PASSWORD), NAMESPACE)  # an earlier version's
        controller = ControllerProcess(kube, url, work, gateway=True).start()
        assert controller.gateway is not None
        try:
            victim = study_manifest("victim", max_trials=1, parallelism=1, max_duration="2m")
            victim["metadata"]["namespace"] = OTHER
            kube.api.create(STUDIES, victim, OTHER)
            wait_for(lambda: _phase(kube, OTHER, "victim") == "Succeeded", 120,
                     lambda: "the victim study did not succeed\n" + controller.log()[-3000:])
            victim_key = _study_key(url, OTHER, "victim")
            victim_study = optuna.load_study(study_name=victim_key, storage=url)
            env = {
                "TUNEFLEET_TEST_SLEEP": "8",
                VICTIM_STUDY_ENV: victim_key,
                VICTIM_STUDY_ID_ENV: str(victim_study._study_id),
                VICTIM_TRIAL_ID_ENV: str(victim_study.trials[0]._trial_id),
            }
            intruder = study_manifest("intr", objective="tests.cluster.tenancy_objectives:intruder",
                                      max_trials=2, parallelism=2, max_retries=0, max_duration="2m")
            intruder["spec"]["trial"]["template"]["spec"]["containers"] = [
                {"name": "trial", "env": [{"name": k, "value": v} for k, v in env.items()]}
            ]
            scenario = Tenancy(kube, url, controller.gateway, victim_key, "", study_snapshot(url, victim_key),
                               ledger_snapshot(url, victim_key))
            kube.api.create(STUDIES, intruder, NAMESPACE)
            wait_for(lambda: _phase(kube, NAMESPACE, "intr") in ("Succeeded", "Failed"), 180,
                     lambda: "the intruder's study did not end\n" + cluster_snapshot(kube, url, "intr")
                     + "\n" + controller.log()[-3000:])
            scenario.intruder = _study_key(url, NAMESPACE, "intr")
        finally:
            controller.stop()
        yield scenario
    finally:
        stop_gateway(kube)
        kube.stop()


def _client(tenancy: Tenancy, token: str) -> Any:
    return tenancy.gateway.client(token=token, retry_budget_s=5.0)


def _refused(action: Any) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        action()
    return str(raised.value.code().name)


def test_trial_pods_and_their_namespaces_hold_no_database_password(tenancy: Tenancy) -> None:
    kube = tenancy.kube
    env = tenancy.intruder_trial().user_attrs[ATTR_ENV]  # what the intruder's process had
    assert DB_PASSWORD_ENV not in env and "TUNEFLEET_GATEWAY_TOKEN" in env
    assert DB_PASSWORD not in json.dumps(env)
    for namespace in (NAMESPACE, OTHER):
        pods = kube.api.list("pods", namespace, label_selector="tunefleet.dev/study")
        assert pods
        for pod in pods:
            trial = next(c for c in pod["spec"]["containers"] if c["name"] == "trial")
            assert DB_PASSWORD_ENV not in {e["name"] for e in trial["env"]}
            refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in trial["env"] if "valueFrom" in e
                    and "secretKeyRef" in e["valueFrom"]}
            labels = pod["metadata"]["labels"]
            job = f"{labels['tunefleet.dev/study']}-t{labels['tunefleet.dev/trial']}"
            assert refs == {gateway_secret_name(job, labels)}
        # The earlier version's mirrored Secret is gone; no Secret holds the password.
        assert kube.api.find("secrets", namespace, MIRRORED) is None
        for secret in kube.api.list("secrets", namespace):
            data = secret.get("data") or {}
            decoded = [base64.b64decode(v).decode(errors="replace") for v in data.values()]
            assert not any(DB_PASSWORD in value for value in decoded), secret["metadata"]["name"]
            assert "password" not in (secret.get("data") or {})


def test_a_token_cannot_write_another_trial_of_its_study(tenancy: Tenancy) -> None:
    attempts = tenancy.attempts()
    assert {name: attempts[name] for name in SIBLING_ATTEMPTS} == dict.fromkeys(SIBLING_ATTEMPTS, DENIED)
    sibling = next(t for t in tenancy.trials(tenancy.intruder) if t.number == 0)
    assert sibling.state == TrialState.COMPLETE
    assert sibling.value == pytest.approx((sibling.params["x"] - 2.0) ** 2)
    assert sibling.value != TAMPERED and sibling.intermediate_values == {}
    assert "tampered" not in sibling.user_attrs


def test_a_token_cannot_read_or_write_another_namespaces_study(tenancy: Tenancy) -> None:
    attempts = tenancy.attempts()
    seen = {name: attempts[name] for name in OTHER_STUDY_ATTEMPTS}
    assert seen == dict.fromkeys(OTHER_STUDY_ATTEMPTS, DENIED)
    assert study_snapshot(tenancy.url, tenancy.victim) == tenancy.victim_before


def test_a_token_cannot_create_or_delete_a_study_or_a_trial(tenancy: Tenancy) -> None:
    attempts = tenancy.attempts()
    assert {name: attempts[name] for name in STUDY_ATTEMPTS} == dict.fromkeys(STUDY_ATTEMPTS, DENIED)
    assert set(optuna.get_all_study_names(tenancy.url)) == {tenancy.victim, tenancy.intruder}
    assert sorted(t.number for t in tenancy.trials(tenancy.intruder)) == [0, 1]
    intruder_study = optuna.load_study(study_name=tenancy.intruder, storage=tenancy.url)
    assert "tampered" not in intruder_study.user_attrs


def test_the_intruder_still_runs_its_own_trial_normally(tenancy: Tenancy) -> None:
    trial = tenancy.intruder_trial()
    assert trial.state == TrialState.COMPLETE
    x = trial.params["x"]
    assert trial.value == pytest.approx((x - 2.0) ** 2)
    assert trial.intermediate_values == {0: pytest.approx(x)}
    assert _phase(tenancy.kube, NAMESPACE, "intr") == "Succeeded"


def test_the_ledger_is_untouched_by_the_attempts(tenancy: Tenancy) -> None:
    assert ledger_snapshot(tenancy.url, tenancy.victim) == tenancy.ledger_before
    mine = ledger_snapshot(tenancy.url, tenancy.intruder)
    assert set(mine["charges"]) == {0, 1}  # its own two pods, billed by the controller
    assert mine["open"] == {}


def test_a_token_is_refused_once_its_trial_ended(tenancy: Tenancy) -> None:
    trial = tenancy.intruder_trial()
    client = _client(tenancy, tenancy.token(NAMESPACE, "intr-t1"))
    before = study_snapshot(tenancy.url, tenancy.intruder)
    assert _refused(lambda: client.set_trial_user_attr(trial._trial_id, "late", True)) == DENIED
    assert _refused(lambda: client.set_trial_intermediate_value(trial._trial_id, 1, 0.0)) == DENIED
    assert _refused(lambda: client.set_trial_state_values(trial._trial_id, TrialState.FAIL)) == DENIED
    assert study_snapshot(tenancy.url, tenancy.intruder) == before
    client.close()


@pytest.mark.parametrize("kind", ["forged", "tampered"])
def test_a_forged_or_tampered_token_is_refused(tenancy: Tenancy, kind: str) -> None:
    intruder_study = optuna.load_study(study_name=tenancy.intruder, storage=tenancy.url)
    later = int(time.time()) + 3600
    claims = TokenClaims(namespace=NAMESPACE, study=tenancy.intruder, trial=0, expires=later)
    if kind == "forged":  # well-formed, signed with a key the gateway does not hold
        token = TokenKeys([secrets.token_urlsafe(36).encode()]).mint(claims)
    else:  # the intruder's real token, its claims rewritten to its sibling's, the signature kept
        prefix, _, signature = tenancy.token(NAMESPACE, "intr-t1").split(".")
        payload = base64.urlsafe_b64encode(claims.model_dump_json().encode()).rstrip(b"=").decode()
        token = f"{prefix}.{payload}.{signature}"
    client = _client(tenancy, token)
    before = study_snapshot(tenancy.url, tenancy.intruder)
    refusals = {"UNAUTHENTICATED", DENIED}
    assert _refused(lambda: client.get_all_trials(intruder_study._study_id)) in refusals
    assert _refused(lambda: client.get_study_id_from_name(tenancy.intruder)) in refusals
    sibling = next(t for t in intruder_study.trials if t.number == 0)
    assert _refused(lambda: client.set_trial_user_attr(sibling._trial_id, "tampered", True)) in refusals
    assert study_snapshot(tenancy.url, tenancy.intruder) == before
    client.close()


def test_a_token_of_another_namespace_reads_nothing_here(tenancy: Tenancy) -> None:
    client = _client(tenancy, tenancy.token(OTHER, "victim-t0"))
    intruder_study = optuna.load_study(study_name=tenancy.intruder, storage=tenancy.url)
    assert _refused(lambda: client.get_study_id_from_name(tenancy.intruder)) == DENIED
    assert _refused(lambda: client.get_all_trials(intruder_study._study_id)) == DENIED
    client.close()


def test_each_trials_secret_is_owned_by_its_job_and_signed_for_its_trial(tenancy: Tenancy) -> None:
    kube = tenancy.kube
    for number in (0, 1):
        job = kube.api.get("jobs.batch", NAMESPACE, f"intr-t{number}")
        secret = kube.api.get("secrets", NAMESPACE, secret_of(kube, NAMESPACE, f"intr-t{number}"))
        (owner,) = secret["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("Job", job["metadata"]["name"])
        assert owner["uid"] == job["metadata"]["uid"]
        assert owner["blockOwnerDeletion"] is False and not owner.get("controller")
        labels = secret["metadata"]["labels"]
        assert (labels["tunefleet.dev/study"], labels["tunefleet.dev/trial"]) == ("intr", str(number))
        created = job_created_at(job, default=0.0)
        claims = tenancy.gateway.keys.verify(tenancy.token(NAMESPACE, f"intr-t{number}"), now=created)
        assert (claims.namespace, claims.study, claims.trial) == (NAMESPACE, tenancy.intruder, number)
        assert claims.expires == int(created) + MAX_DURATION_S + DEADLINE_GRACE_S + DEFAULT_TOKEN_SLACK_S


def test_a_trials_secret_goes_with_its_job(tenancy: Tenancy) -> None:
    # Last in this module: it deletes trial 0's Job, which the tests above read.
    kube = tenancy.kube
    first, second = (secret_of(kube, NAMESPACE, f"intr-t{n}") for n in (0, 1))
    kube.api.delete("jobs.batch", NAMESPACE, "intr-t0", propagation="Background")
    wait_for(lambda: kube.api.find("secrets", NAMESPACE, first) is None, 30,
             "the trial's gateway Secret outlived its Job")
    assert kube.api.find("secrets", NAMESPACE, second) is not None
