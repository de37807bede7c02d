"""The database URL the chart renders opens, with the packages tunefleet installs.

The controller's env (bundled and external database) goes through the code the controller, the
worker and ``tunefleet export`` run; the dashboard's argument is opened by plain SQLAlchemy, as
optuna-dashboard's image does. The database is the session's real PostgreSQL, with a role that
must present its password, as on a real install. Only the in-cluster DNS name of the bundled
database is swapped for the test server's address.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import optuna
import pytest
import sqlalchemy as sa

from controller.analysis.data import load_study_data
from controller.kube.commands import controller_config
from controller.kube.reconciler import Reconciler
from tests.chart.chart_support import (
    RELEASE,
    RELEASE_NAMESPACE,
    Manifest,
    controller_deployment,
    one,
    only_container,
)
from tests.support.postgres import PostgresServer
from trial_worker.contract import DB_PASSWORD_ENV
from trial_worker.storage import open_storage as worker_storage

pytestmark = [pytest.mark.chart, pytest.mark.storage]

Render = Callable[[dict[str, Any] | None], list[Manifest]]
BUNDLED_HOST = f"{RELEASE}-tunefleet-postgresql.{RELEASE_NAMESPACE}.svc.cluster.local:5432"
# Every character a URL treats specially, so only a URL that escapes it (or carries no password) opens.
EXTERNAL_PASSWORD = "p@ss:w/rd%41?#&=+ ü"


def _resolve_env(container: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (values, Secrets, the namespace)."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = secrets[item["valueFrom"]["secretKeyRef"]["name"]]
        elif item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace":
            env[item["name"]] = RELEASE_NAMESPACE
    return env


def _scenario(kind: str, port: int) -> tuple[dict[str, Any], str, str, str | None]:
    """Chart values, the role, the password Secret's name and the password (None: generated)."""
    role, database = f"tf_{uuid.uuid4().hex[:8]}", f"tf_{uuid.uuid4().hex[:8]}"
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
    kind: str, render: Render, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects, secrets, password = _install(render, postgres_server, kind)
    env = _resolve_env(only_container(controller_deployment(objects)), secrets)
    assert env["TUNEFLEET_STORAGE_URL"].startswith("postgresql://")  # what the chart promises users
    env["TUNEFLEET_STORAGE_URL"] = _reachable(env["TUNEFLEET_STORAGE_URL"], postgres_server.port)

    # The controller: its settings from that env, then its own storage and ledger.
    config = controller_config(env)
    monkeypatch.setenv(DB_PASSWORD_ENV, password)  # as `tunefleet controller` keeps it
    # No API server here: the reconciler only needs a Kubernetes client to read Secrets later.
    reconciler = Reconciler(config, kube=cast(Any, SimpleNamespace(read_secret_value=None)))
    try:
        study = optuna.create_study(study_name="chart-url", storage=reconciler.storage)
        study.enqueue_trial({"x": 1.0})
        assert reconciler.ledger.totals("chart-url").settled.gpu_seconds == 0
    finally:
        reconciler.close()

    # A trial worker: the assignment's URL, and the password from the mirrored Secret.
    assert optuna.load_study(study_name="chart-url", storage=worker_storage(config.storage_url)).trials

    # `tunefleet export` (and the controller's export Job) read the same way.
    assert load_study_data(config.storage_url, "chart-url").name == "chart-url"

    # The dashboard: its argument opened by SQLAlchemy alone, the password from its env.
    dashboard = only_container(one(objects, "Deployment", f"{RELEASE}-tunefleet-dashboard"))
    (dashboard_url,) = dashboard["args"]
    monkeypatch.delenv(DB_PASSWORD_ENV)
    monkeypatch.setenv("PGPASSWORD", _resolve_env(dashboard, secrets)["PGPASSWORD"])
    engine = sa.create_engine(_reachable(dashboard_url, postgres_server.port))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT study_name FROM studies")).scalar() == "chart-url"
    finally:
        engine.dispose()
