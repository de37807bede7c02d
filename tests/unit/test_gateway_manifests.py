"""Trial pods with the trial gateway on: a token in a Secret owned by the Job, never a password."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest

from controller.analysis.ledger_snapshot import ATTR_LEDGER, decode_ledger
from controller.budget.ledger import Charge, Ledger
from controller.credentials import PasswordSources, SecretUnreadable, check_gateway
from controller.gateway.tokens import TokenKeys
from controller.kube.commands import controller_config, render_objects, trial_settings_from_env
from controller.kube.finishing import Finisher, FinishMemory
from controller.kube.manifests import (
    EXPORT_DEADLINE_SECONDS,
    TrialPodSettings,
    build_assignment,
    export_job,
    trial_job,
)
from controller.kube.trial_access import (
    ADDRESS_ENV,
    CA_FILE_ENV,
    DEFAULT_TOKEN_SLACK_S,
    TOKEN_KEYS_ENV,
    TOKEN_SLACK_ENV,
    GatewayAccess,
    TrialLifetime,
    export_secret,
    gateway_secret_name,
    job_created_at,
    trial_secret,
)
from controller.spec import load_study_file
from tests.unit.test_manifests import REF, _export_spec, _pod, _spec, _trial_container, _validate
from trial_worker.contract import ASSIGNMENT_ENV, DB_PASSWORD_ENV, Assignment, PrunerConfig

KEY = "k" * 40
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
ADDRESS = "tunefleet-gateway.tunefleet-system.svc:7443"
STUDY_KEY = f"team-a/mlp/{REF.uid}"
GATEWAY = GatewayAccess(ADDRESS, TokenKeys([KEY.encode()]), CA_PEM)
SETTINGS = TrialPodSettings(gateway=GATEWAY)


def _gateway_job(number: int = 3, **trial: Any) -> dict[str, Any]:
    spec = _spec(**trial)
    ref = replace(REF, key=STUDY_KEY)
    assignment = build_assignment(spec, ref, number, 1234, GATEWAY.storage_url, PrunerConfig(name="median"))
    return trial_job(spec, ref, assignment, SETTINGS)


def _stored(job: dict[str, Any]) -> dict[str, Any]:
    """The Job as the API server returns it: with a uid and a creation time."""
    meta = {**job["metadata"], "uid": "9d1e0000-0000-4000-8000-00000000abcd",
            "creationTimestamp": "2026-12-01T08:00:00Z"}
    return {**job, "metadata": meta}


def _env_files(tmp_path: Path, keys: str = KEY, ca: str = CA_PEM) -> dict[str, str]:
    (tmp_path / "keys").write_text(f"# signing key first\n{keys}\n")
    (tmp_path / "ca.crt").write_text(ca)
    return {
        ADDRESS_ENV: ADDRESS, TOKEN_KEYS_ENV: str(tmp_path / "keys"), CA_FILE_ENV: str(tmp_path / "ca.crt")
    }


def _secret_of(job: dict[str, Any]) -> str:
    return gateway_secret_name(job["metadata"]["name"], job["metadata"]["labels"])


def test_a_job_of_the_same_name_for_another_study_object_or_attempt_names_another_secret() -> None:
    """The Study applied again, or the trial retried: the earlier Job's Secret, which the garbage
    collector may not have removed yet, is never taken for the new Job's."""
    first = _gateway_job(number=3)
    labels = dict(first["metadata"]["labels"])
    again = {**labels, "tunefleet.dev/study-uid": "a-new-uid"}
    retried = {**labels, "tunefleet.dev/attempt": "1"}
    names = {gateway_secret_name("mlp-t3", x) for x in (labels, again, retried)}
    assert len(names) == 3
    assert gateway_secret_name("mlp-t3", labels) == _secret_of(first)  # the same Job: the same name


def test_the_trial_pod_gets_a_token_and_the_ca_from_its_own_secret_and_no_password() -> None:
    job = _gateway_job(template={"spec": {"containers": [{"name": "trial", "env": [
        {"name": DB_PASSWORD_ENV, "value": "smuggled"},
        {"name": "TUNEFLEET_GATEWAY_TOKEN", "value": "tft1.forged.token"},
    ]}]}})
    _validate(job)
    env = {e["name"]: e for e in _trial_container(job)["env"]}
    assert DB_PASSWORD_ENV not in env
    secret = _secret_of(job)
    assert secret.startswith("mlp-t3-gateway-")
    assert env["TUNEFLEET_GATEWAY_TOKEN"] == {
        "name": "TUNEFLEET_GATEWAY_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}},
    }
    ca_ref = {"secretKeyRef": {"name": secret, "key": "ca.crt"}}
    assert env["TUNEFLEET_GATEWAY_CA"]["valueFrom"] == ca_ref
    assignment = Assignment.model_validate_json(env[ASSIGNMENT_ENV]["value"])
    assert assignment.storage_url == f"tunefleet-gateway://{ADDRESS}"
    assert "password" not in json.dumps(job).lower()


def test_every_pod_of_a_multi_node_trial_uses_the_trials_secret() -> None:
    job = _gateway_job(nodes=2)
    _validate(job)
    assert job["spec"]["completionMode"] == "Indexed"
    env = {e["name"]: e for e in _trial_container(job)["env"]}
    assert DB_PASSWORD_ENV not in env
    assert env["TUNEFLEET_GATEWAY_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == _secret_of(job)
    assert _pod(job)["subdomain"]  # still an Indexed Job with its rendezvous


def test_the_secret_is_owned_by_the_job_labelled_like_it_and_holds_a_token_for_its_trial() -> None:
    job = _stored(_gateway_job(number=3, maxDuration="1h"))
    created = job_created_at(job, default=0.0)
    secret = trial_secret(job, GATEWAY, STUDY_KEY, TrialLifetime(created, 3600, 30))
    _validate(secret)
    meta = secret["metadata"]
    assert (meta["name"], meta["namespace"]) == (_secret_of(job), "team-a")
    assert meta["labels"] == job["metadata"]["labels"]
    assert meta["ownerReferences"] == [{
        "apiVersion": "batch/v1", "kind": "Job", "name": "mlp-t3",
        "uid": job["metadata"]["uid"], "blockOwnerDeletion": False,
    }]
    import base64

    token = base64.b64decode(secret["data"]["token"]).decode()
    assert base64.b64decode(secret["data"]["ca.crt"]).decode() == CA_PEM
    claims = GATEWAY.keys.verify(token, now=created)
    assert (claims.namespace, claims.study, claims.trial) == ("team-a", STUDY_KEY, 3)
    # The reservation's end (creation + maxDuration + deadline grace) plus the scheduling allowance.
    assert claims.expires == int(created) + 3600 + 30 + DEFAULT_TOKEN_SLACK_S
    assert not claims.read_only


def test_the_gateway_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = trial_settings_from_env({**_env_files(tmp_path), TOKEN_SLACK_ENV: "600"})
    assert settings.gateway is not None
    assert settings.gateway.address == ADDRESS
    assert settings.gateway.token_slack_s == 600
    assert settings.gateway.ca_pem == CA_PEM
    assert trial_settings_from_env({}).gateway is None  # without the address: as before


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({TOKEN_KEYS_ENV: ""}, TOKEN_KEYS_ENV),
        ({CA_FILE_ENV: ""}, CA_FILE_ENV),
        ({CA_FILE_ENV: "/nonexistent/ca.crt"}, CA_FILE_ENV),
        ({TOKEN_KEYS_ENV: "/nonexistent/keys"}, TOKEN_KEYS_ENV),
        ({ADDRESS_ENV: "no-port"}, ADDRESS_ENV),
        ({TOKEN_SLACK_ENV: "an hour"}, TOKEN_SLACK_ENV),
    ],
)
def test_a_missing_or_bad_gateway_setting_is_refused_by_name(
    tmp_path: Path, change: dict[str, str], named: str
) -> None:
    environ = {**_env_files(tmp_path), **change}
    with pytest.raises(ValueError, match=named):
        trial_settings_from_env(environ)


def test_a_short_key_or_a_file_without_a_certificate_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{TOKEN_KEYS_ENV}.*at least"):
        trial_settings_from_env(_env_files(tmp_path, keys="short"))
    with pytest.raises(ValueError, match=f"{CA_FILE_ENV}.*no PEM certificate"):
        trial_settings_from_env(_env_files(tmp_path, ca="not a certificate"))


@pytest.mark.parametrize(
    "command", [["render", "examples/cluster-gpu-study.yaml"], ["controller", "--standalone"]]
)
def test_tunefleet_render_and_controller_exit_2_naming_a_missing_gateway_file(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.cli import main

    for name, value in _env_files(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(CA_FILE_ENV)
    monkeypatch.setenv("TUNEFLEET_STORAGE_URL", "postgresql+psycopg2://u@db/x")
    assert main(command) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert CA_FILE_ENV in captured.err


def test_render_with_the_gateway_shows_the_trial_secret_and_no_password_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _env_files(tmp_path).items():
        monkeypatch.setenv(name, value)
    manifest = load_study_file("examples/cluster-gpu-study.yaml")
    objects = render_objects(manifest, None, 0, "postgresql+psycopg2://u:hunter2@db/x", True)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert any(kind == "Secret" and name.startswith("quickstart-gpu-t0-gateway-") for kind, name in kinds)
    assert ("Secret", "tunefleet-db-credentials") not in kinds
    text = json.dumps(objects)
    assert "hunter2" not in text and DB_PASSWORD_ENV not in text
    for obj in objects:
        _validate(obj)


def test_the_controller_config_carries_the_gateway_and_its_trial_url(tmp_path: Path) -> None:
    url = {"TUNEFLEET_STORAGE_URL": "postgresql+psycopg2://u:pw@db/x"}
    config = controller_config({**url, **_env_files(tmp_path)})
    assert config.trial_storage_url == f"tunefleet-gateway://{ADDRESS}"
    assert config.storage_url == "postgresql+psycopg2://u@db/x"  # the controller's own connections
    plain = controller_config(url)
    assert plain.trial_storage_url == plain.storage_url


class _Secrets:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        if self.fail:
            raise SecretUnreadable(namespace, name, key, "SecretForbidden")
        return "controller-pw"


def test_with_the_gateway_the_credentials_condition_says_trial_pods_hold_no_password() -> None:
    sources = PasswordSources("tunefleet-system", "tunefleet-db", None)
    check = check_gateway(_Secrets(), sources)
    assert (check.password, check.controller_password, check.blocking) == ("", "controller-pw", False)
    assert check.reason == "TrialGateway"
    assert "only through the trial gateway" in check.message
    unreadable = check_gateway(_Secrets(fail=True), sources)
    assert unreadable.reason == "SecretForbidden" and not unreadable.blocking


class _Kube:
    """Records what the finisher asks of the cluster; the export Job comes back as stored."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []
        self.secrets: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return list(self.jobs)

    def create_job(self, namespace: str, job: dict[str, Any]) -> dict[str, Any] | None:
        self.jobs.append(_stored(job))
        return self.jobs[-1]

    def create_secret(self, manifest: dict[str, Any]) -> bool:
        self.secrets.append(manifest)
        return True

    def post_event(
        self, body: dict[str, Any], reason: str, message: str, warning: bool = False, name: str | None = None
    ) -> None:
        self.events.append((reason, message))


def _finished_study_with_charges(tmp_path: Path) -> str:
    """A SQLite study database as the controller leaves it: the study, two trials charged."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name=STUDY_KEY, storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    ledger = Ledger(url)
    for number, charge in ((0, Charge(3600, 7200)), (1, Charge(1800, 3600))):
        assert ledger.reserve(f"r{number}", STUDY_KEY, number, Charge(7200, 7200))
        ledger.settle(f"pod{number}", f"r{number}", charge, wall_seconds=1800)
    ledger.close()
    return url


def _secret_claims(secret: dict[str, Any]) -> Any:
    import base64

    token = base64.b64decode(secret["data"]["token"]).decode()
    return GATEWAY.keys.verify(token, now=0.0)


def test_with_the_gateway_the_export_job_reads_through_it_with_a_read_only_token(tmp_path: Path) -> None:
    url = _finished_study_with_charges(tmp_path)
    kube = _Kube()
    finisher = Finisher(kube, url, SETTINGS)  # type: ignore[arg-type]
    ref = replace(REF, key=STUDY_KEY)
    memory = FinishMemory()
    status = finisher._export({"metadata": {"name": "mlp", "namespace": "team-a"}}, ref, _export_spec(),
                              memory, {})
    assert status is not None and status["phase"] == "Running" and kube.events == []
    # The ledger's figures are in the study, where the export reads them through the gateway.
    storage = optuna.storages.RDBStorage(url)
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(STUDY_KEY))
    storage.engine.dispose()
    charges, totals = decode_ledger(attrs[ATTR_LEDGER])
    assert charges == {0: Charge(3600, 7200), 1: Charge(1800, 3600)}
    assert totals.settled == Charge(5400, 10800)
    # The Job dials the gateway and holds no password; its Secret is read-only for this study.
    [job] = kube.jobs
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][container["command"].index("--storage") + 1] == GATEWAY.storage_url
    assert all(e["name"] != DB_PASSWORD_ENV for e in container["env"])
    [secret] = kube.secrets
    assert secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    claims = _secret_claims(secret)
    assert (claims.namespace, claims.study, claims.read_only) == ("team-a", STUDY_KEY, True)
    # The next reconcile finds the Job: no second Job, no second Secret.
    finisher._export({"metadata": {"name": "mlp", "namespace": "team-a"}}, ref, _export_spec(), memory, {})
    assert (len(kube.jobs), len(kube.secrets)) == (1, 1)
    # A restarted controller sees to the Secret of a Job a crash may have left without one.
    finisher._export({"metadata": {"name": "mlp", "namespace": "team-a"}}, ref, _export_spec(),
                     FinishMemory(), {})
    assert len(kube.jobs) == 1 and len(kube.secrets) == 2


def test_the_export_job_takes_its_token_and_ca_from_its_own_secret_and_no_password() -> None:
    ref = replace(REF, key=STUDY_KEY)
    job = export_job(_export_spec(), ref, "postgresql+psycopg2://u@db/x", SETTINGS)
    _validate(job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][container["command"].index("--storage") + 1] == f"tunefleet-gateway://{ADDRESS}"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(refs) == {"TUNEFLEET_GATEWAY_TOKEN", "TUNEFLEET_GATEWAY_CA"}
    assert {r["name"] for r in refs.values()} == {_secret_of(job)}
    assert job["metadata"]["labels"]["tunefleet.dev/study-uid"] == REF.uid
    assert "tunefleet.dev/study" not in job["metadata"]["labels"]  # never taken for a trial
    # Another object of the same name: another Secret name.
    again = export_job(_export_spec(), replace(ref, uid="new-uid"), "postgresql+psycopg2://u@db/x", SETTINGS)
    assert _secret_of(again) != _secret_of(job)


def test_the_export_secret_is_read_only_for_its_study_owned_by_the_job_until_its_deadline() -> None:
    ref = replace(REF, key=STUDY_KEY)
    job = _stored(export_job(_export_spec(), ref, "postgresql+psycopg2://u@db/x", SETTINGS))
    created = job_created_at(job, default=0.0)
    secret = export_secret(job, GATEWAY, STUDY_KEY, created)
    _validate(secret)
    meta = secret["metadata"]
    assert (meta["name"], meta["namespace"]) == (_secret_of(job), "team-a")
    assert meta["ownerReferences"] == [{
        "apiVersion": "batch/v1", "kind": "Job", "name": "mlp-export",
        "uid": job["metadata"]["uid"], "blockOwnerDeletion": False,
    }]
    claims = _secret_claims(secret)
    assert (claims.namespace, claims.study, claims.trial) == ("team-a", STUDY_KEY, None)
    assert claims.read_only
    assert claims.expires == int(created) + EXPORT_DEADLINE_SECONDS + DEFAULT_TOKEN_SLACK_S


class _SecretsMade:
    """A KubeApi that records the Secrets the executor creates; one name exists already."""

    def __init__(self, existing: str) -> None:
        self.created: list[dict[str, Any]] = []
        self.existing = existing

    def create_secret(self, manifest: dict[str, Any]) -> bool:
        self.created.append(manifest)
        return manifest["metadata"]["name"] != self.existing


def test_each_live_job_gets_its_secret_once_and_finished_jobs_none() -> None:
    from controller.kube.executor import Executor, StudyRuntime

    spec = _spec()
    study: Any = None  # securing reads the spec and the key only
    runtime = StudyRuntime(replace(REF, key=STUDY_KEY), spec, study, 0, PrunerConfig(), GATEWAY.storage_url,
                           SETTINGS)
    live, existing = _stored(_gateway_job(number=1)), _stored(_gateway_job(number=2))
    existing["metadata"]["uid"] = "another-uid"
    done = _stored(_gateway_job(number=3))
    done["metadata"]["uid"] = "done-uid"
    done["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    kube = _SecretsMade(existing=_secret_of(existing))
    executor = Executor(kube, ledger=None)  # type: ignore[arg-type]
    executor.secure_jobs(runtime, [live, existing, done])
    executor.secure_jobs(runtime, [live, existing, done])  # the next reconcile: nothing again
    assert [s["metadata"]["name"] for s in kube.created] == [_secret_of(live), _secret_of(existing)]
    plain = replace(runtime, settings=TrialPodSettings(), secured=set())
    executor.secure_jobs(plain, [live])  # without the gateway: no Secret at all
    assert len(kube.created) == 2
