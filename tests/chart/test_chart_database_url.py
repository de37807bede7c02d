"""The database URL the chart renders opens, with the packages tunefleet installs, and trial workers
reach their study through the gateway the chart wires, without the password.

The controller's env (bundled and external database) goes through the code the controller and
``tunefleet export`` run; the gateway's env (and the certificate and token keys the chart generated,
as files where the kubelet would mount them) starts a real gateway, which a trial worker dials with
a token the controller's keys sign, verifying the certificate under the Service's name; the
dashboard's argument is opened by plain SQLAlchemy, as optuna-dashboard's image does. The database
is the session's real PostgreSQL, with a role that must present its password, as on a real install.
Only the in-cluster DNS names are swapped for local addresses.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import optuna
import pytest
import sqlalchemy as sa

from controller.analysis.data import load_study_data
from controller.gateway.server import GatewayServer
from controller.gateway.settings import GatewaySettings
from controller.gateway.tokens import TokenClaims
from controller.kube.commands import controller_config
from controller.kube.reconciler import Reconciler
from tests.chart.chart_support import (
    RELEASE,
    RELEASE_NAMESPACE,
    Manifest,
    controller_deployment,
    gateway_deployment,
    one,
    only_container,
    resolve_env,
)
from tests.support.postgres import PostgresServer
from trial_worker.contract import (
    DB_PASSWORD_ENV,
    GATEWAY_CA_ENV,
    GATEWAY_SERVER_NAME_ENV,
    GATEWAY_TOKEN_ENV,
)
from trial_worker.storage import open_storage as worker_storage

pytestmark = [pytest.mark.chart, pytest.mark.storage]

Render = Callable[[dict[str, Any] | None], list[Manifest]]
BUNDLED_HOST = f"{RELEASE}-tunefleet-postgresql.{RELEASE_NAMESPACE}.svc.cluster.local:5432"
# Every character a URL treats specially, so only a URL that escapes it (or carries no password) opens.
EXTERNAL_PASSWORD = "p@ss:w/rd%41?#&=+ ü"
# As the controller names Optuna studies, <namespace>/<name>/<uid>: the gateway checks the namespace.
STUDY = "team-a/chart-url/0b7e4c1d"


def _scenario(kind: str, port: int) -> tuple[dict[str, Any], str, str, str | None]:
    """Chart values, the role, the password Secret's name and the password (None: generated)."""
    role, database = f"tf_{uuid.uuid4().hex[:8]}", f"tf_{uuid.uuid4().hex[:8]}"
    values: dict[str, Any]
    if kind == "bundled":
        values = {"postgresql": {"username": role, "database": database}}
        return values, role, f"{RELEASE}-tunefleet-postgresql", None
    values = {
        "externalDatabase": {"host": "127.0.0.1", "port": port, "database": database, "user": role,
                             "existingSecret": "hpo-db", "sslmode": "disable"},
    }
    return values, role, "hpo-db", EXTERNAL_PASSWORD


def _install(
    render: Render, postgres_server: PostgresServer, kind: str
) -> tuple[list[Manifest], dict[str, str], str]:
    """Render (dashboard on), then create the role with the chart's password, and its database."""
    values, role, secret, password = _scenario(kind, postgres_server.port)
    objects = render({**values, "dashboard": {"enabled": True}})
    if password is None:  # bundled: the password the chart generated into its Secret
        password = base64.b64decode(one(objects, "Secret", secret)["data"]["password"]).decode()
    database = (values.get("externalDatabase") or values["postgresql"])["database"]
    postgres_server.create_login(role, password)
    postgres_server.create_database(owner=role, name=database)
    return objects, {secret: password}, password


def _reachable(url: str, port: int) -> str:
    return url.replace(BUNDLED_HOST, f"127.0.0.1:{port}")


@pytest.mark.parametrize("kind", ["bundled", "external"])
def test_the_url_the_chart_renders_opens_with_the_installed_driver(
    kind: str,
    render: Render,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    objects, secrets, password = _install(render, postgres_server, kind)
    env = resolve_env(controller_deployment(objects), objects, tmp_path / "controller", secrets)
    assert env["TUNEFLEET_STORAGE_URL"].startswith("postgresql://")  # what the chart promises users
    env["TUNEFLEET_STORAGE_URL"] = _reachable(env["TUNEFLEET_STORAGE_URL"], postgres_server.port)

    # The controller: its settings from that env (the gateway's files included), then its own
    # storage and ledger.
    config = controller_config(env)
    gateway = config.trial_settings.gateway
    assert gateway is not None and gateway.address == f"tunefleet-gateway.{RELEASE_NAMESPACE}.svc:7443"
    monkeypatch.setenv(DB_PASSWORD_ENV, password)  # as `tunefleet controller` keeps it
    # No API server here: the reconciler only needs a Kubernetes client to read Secrets later.
    reconciler = Reconciler(config, kube=cast(Any, SimpleNamespace(read_secret_value=None)))
    try:
        study = optuna.create_study(study_name=STUDY, storage=reconciler.storage)
        study.enqueue_trial({"x": 1.0})
        assert reconciler.ledger.totals(STUDY).settled.gpu_seconds == 0
    finally:
        reconciler.close()

    # `tunefleet export --storage` (an admin's, with the password) reads the same way.
    assert load_study_data(config.storage_url, STUDY).name == STUDY

    # The gateway, started from the env and files the chart gives it (on a free local port), and a
    # trial worker with no password: the token the controller's keys sign, the CA the controller
    # hands out, the certificate checked under the Service name the pods dial.
    gateway_env = resolve_env(gateway_deployment(objects), objects, tmp_path / "gateway", secrets)
    gateway_env.update(
        TUNEFLEET_STORAGE_URL=_reachable(gateway_env["TUNEFLEET_STORAGE_URL"], postgres_server.port),
        TUNEFLEET_GATEWAY_LISTEN="127.0.0.1:0",
        TUNEFLEET_GATEWAY_HTTP_PORT="0",
    )
    server = GatewayServer(GatewaySettings.from_env(gateway_env))
    port = server.start()
    try:
        monkeypatch.delenv(DB_PASSWORD_ENV)
        claims = TokenClaims(namespace="team-a", study=STUDY, trial=None, expires=int(time.time()) + 600)
        monkeypatch.setenv(GATEWAY_TOKEN_ENV, gateway.keys.mint(claims))
        monkeypatch.setenv(GATEWAY_CA_ENV, gateway.ca_pem)
        monkeypatch.setenv(GATEWAY_SERVER_NAME_ENV, gateway.address.rpartition(":")[0])
        storage = worker_storage(f"tunefleet-gateway://127.0.0.1:{port}")
        assert len(optuna.load_study(study_name=STUDY, storage=storage).trials) == 1
    finally:
        server.stop(grace=None)

    # The dashboard: its argument opened by SQLAlchemy alone, the password from its env.
    dashboard = one(objects, "Deployment", f"{RELEASE}-tunefleet-dashboard")
    (dashboard_url,) = only_container(dashboard)["args"]
    dashboard_env = resolve_env(dashboard, objects, tmp_path / "dashboard", secrets)
    monkeypatch.setenv("PGPASSWORD", dashboard_env["PGPASSWORD"])
    engine = sa.create_engine(_reachable(dashboard_url, postgres_server.port))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT study_name FROM studies")).scalar() == STUDY
    finally:
        engine.dispose()
