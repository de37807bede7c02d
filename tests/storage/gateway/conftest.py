"""One gateway per test module, on a database of its own; a fresh pair of studies per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from optuna.storages import RDBStorage

from tests.storage.gateway.world import World, make_world
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="module")
def module_db(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


@pytest.fixture(scope="module")
def gateway(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    RDBStorage(module_db).engine.dispose()  # the schema exists before the gateway reads it
    with running_gateway(module_db, tmp_path=tmp_path_factory.mktemp("gw")) as running:
        yield running


@pytest.fixture
def world(gateway: RunningGateway) -> World:
    return make_world(gateway.storage_url)
