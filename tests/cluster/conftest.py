"""Fixtures of the cluster tier: an emulated Kubernetes API over real HTTP (see README.md).

Pick the pod runner's mode per test with a marker::

    @pytest.mark.kube_emulator(mode="simulate", behaviour=lambda pod: (1.0, 0))
    def test_scale(kube_emulator): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.cluster.controller_harness import running_gateways, stop_gateways
from tests.cluster.emulator import KubeEmulator

_HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: runs against the emulated Kubernetes API (tests/cluster)")
    config.addinivalue_line(
        "markers", "kube_emulator(**options): KubeEmulator options for the kube_emulator "
        "fixture, e.g. mode='simulate', behaviour=callable")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only this directory's: filter by path.
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(autouse=True)
def _stop_trial_gateways() -> Iterator[None]:
    """The trial gateways a test's controllers started (controller_harness.cluster_gateway); not
    those of module-scoped fixtures, started before."""
    before = running_gateways()
    yield
    stop_gateways(keep=before)


@pytest.fixture
def kube_emulator_factory(tmp_path: Path) -> Iterator[Callable[..., KubeEmulator]]:
    """Start extra emulators with any KubeEmulator options; all are stopped at teardown."""
    started: list[KubeEmulator] = []

    def start(**options: Any) -> KubeEmulator:
        emulator = KubeEmulator(tmp_path / f"kube-{len(started)}", **options).start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in reversed(started):
        emulator.stop()


@pytest.fixture
def kube_emulator(request: pytest.FixtureRequest,
                  kube_emulator_factory: Callable[..., KubeEmulator]) -> KubeEmulator:
    """A started emulator: exec-mode pod runner unless the `kube_emulator` marker says else.

    Attributes: `.url`, `.kubeconfig_path`, `.api` (direct store access), `.runner` (fault
    injection), `.request_counts`; methods `pause()`, `resume()`, `close_watches()`,
    `compact_history()`, `wait_for()`.
    """
    marker = request.node.get_closest_marker("kube_emulator")
    options = dict(marker.kwargs) if marker is not None else {}
    return kube_emulator_factory(**options)


@pytest.fixture
def simulated_kube_emulator(kube_emulator_factory: Callable[..., KubeEmulator]) -> KubeEmulator:
    """An emulator whose pods only pretend to run (0.2 s, exit 0 unless configured)."""
    return kube_emulator_factory(mode="simulate")


@pytest.fixture
def kube_client(kube_emulator: KubeEmulator) -> Iterator[kubernetes.client.ApiClient]:
    """An official-client ApiClient loaded from the emulator's kubeconfig (no global state)."""
    client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call,unused-ignore]
        config_file=str(kube_emulator.kubeconfig_path))
    yield client
    client.close()  # type: ignore[no-untyped-call,unused-ignore]
