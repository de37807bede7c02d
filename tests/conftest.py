"""Fixtures shared by every tier: a real PostgreSQL for the session, fresh databases per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mlflow_server import MlflowServer
from tests.support.postgres import PostgresServer, remove_server, start_server

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--real-cluster",
        action="store_true",
        default=False,
        help="also run the real-cluster tier against the current kubeconfig",
    )
    parser.addoption(
        "--chaos-seed", type=int, default=None,
        help="run the chaos tier (tests/chaos) with this seed only, e.g. to replay a failing one",
    )
    parser.addoption(
        "--chaos-window", type=float, default=None,
        help="seconds of fault injection per chaos seed (default: the CI window)",
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No trial gateway outlives the session, whichever tier started it and however it ended."""
    harness = sys.modules.get("tests.cluster.controller_harness")
    if harness is not None:
        harness.stop_gateways()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--real-cluster"):
        return
    skip = pytest.mark.skip(reason="needs a real cluster: run with --real-cluster")
    for item in items:
        if "real_cluster" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_server()
    try:
        yield server
    finally:
        remove_server(server)


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    """One real MLflow tracking server for the session (started by the first test that asks)."""
    from tests.support.mlflow_server import start_server as start_mlflow

    server = start_mlflow()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return postgres_server.create_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs on the embedded SQLite file and on real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()
