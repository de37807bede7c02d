"""The real-cluster tier: the controller's scenarios against the current kubeconfig.

Skipped unless ``pytest --real-cluster``. The session installs tunefleet as its chart would
(``harness.py``: CRDs, RBAC, ServiceAccounts, a PostgreSQL with a password, its Secret) and runs
the controller as a local process with the chart's arguments and environment, as the chart's
ServiceAccount; see docs/real-cluster.md. Each test gets a fresh namespace, deleted after.

Fixtures:
    tunefleet_install: the session's :class:`~tests.real_cluster.harness.TunefleetInstall`
        (``.controller``, ``.database``, ``.chart``, ``rotate_password()``).
    controller: the :class:`~tests.real_cluster.harness.LocalController`, running and ready when
        the test starts (a test may ``kill()``, ``stop()`` or ``restart()`` it; the next test gets
        it running again).
    real_cluster: a :class:`RealCluster` on a fresh namespace, with the controller ready.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Generator, Iterator
from typing import Any

import kubernetes
import optuna
import pytest
from kubernetes.client.exceptions import ApiException

from tests.real_cluster.harness import LocalController, TunefleetInstall, install, kubeconfig_path
from tests.support.postgres import PostgresServer

GROUP, VERSION = "tunefleet.dev", "v1alpha1"
IMAGE_ENV = "TUNEFLEET_E2E_IMAGE"
DEFAULT_IMAGE = "ghcr.io/tunefleet/tunefleet-worker:0.1.0"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.real_cluster)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


class RealCluster:
    """The official client on the current kubeconfig, scoped to one throwaway namespace."""

    def __init__(
        self, api_client: kubernetes.client.ApiClient, namespace: str, install: TunefleetInstall | None = None
    ) -> None:
        self.namespace = namespace
        self.install = install
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.image = os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)

    def apply_study(self, body: dict[str, Any]) -> None:
        body["metadata"]["namespace"] = self.namespace
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "studies", body)

    def patch_study(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            "studies",
            name,
            patch,
            _content_type="application/merge-patch+json",
        )

    def delete_study(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "studies", name)

    def study(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "studies", name)
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def status(self, name: str) -> dict[str, Any]:
        return (self.study(name) or {}).get("status") or {}

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions") or [] if c.get("type") == kind), None)

    def jobs(self, name: str) -> list[Any]:
        return list(
            self.batch.list_namespaced_job(self.namespace, label_selector=f"tunefleet.dev/study={name}").items
        )

    def pods(self, name: str) -> list[Any]:
        return list(
            self.core.list_namespaced_pod(self.namespace, label_selector=f"tunefleet.dev/study={name}").items
        )

    def trials(self, name: str) -> list[optuna.trial.FrozenTrial]:
        """The Study's Optuna trials, read from the database (what ``tunefleet export`` sees)."""
        assert self.install is not None
        status = self.status(name)
        key = status.get("optunaStudy") or f"{self.namespace}/{name}"
        study = optuna.load_study(study_name=key, storage=self.install.database.admin_url)
        return study.get_trials(deepcopy=False)

    def events(self, name: str) -> list[Any]:
        """core/v1 Events about the Study, oldest first."""
        selector = f"involvedObject.kind=Study,involvedObject.name={name}"
        items = self.core.list_namespaced_event(self.namespace, field_selector=selector).items
        return sorted(items, key=lambda e: e.metadata.creation_timestamp)

    def wait(self, predicate: Any, timeout: float, message: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            time.sleep(2)
        raise AssertionError(f"timed out after {timeout:.0f} s: {message}")


@pytest.fixture(scope="session")
def tunefleet_install(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TunefleetInstall]:
    """tunefleet installed for the session, the controller started and ready."""
    admin = kubeconfig_path()
    api_client = kubernetes.config.new_client_from_config(config_file=str(admin))
    work_dir = tmp_path_factory.mktemp("tunefleet")
    installed = install(api_client, admin, postgres_server, work_dir)
    try:
        installed.controller.start().wait_ready()
        yield installed
    finally:
        installed.uninstall()
        api_client.close()


@pytest.fixture
def controller(tunefleet_install: TunefleetInstall) -> LocalController:
    """The controller, running and ready (restarted if an earlier test left it stopped)."""
    tunefleet_install.controller.start().wait_ready()
    return tunefleet_install.controller


@pytest.fixture
def real_cluster(
    request: pytest.FixtureRequest, tunefleet_install: TunefleetInstall, controller: LocalController
) -> Iterator[RealCluster]:
    api_client = tunefleet_install.api_client
    namespace = f"tunefleet-e2e-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        yield RealCluster(api_client, namespace, tunefleet_install)
    finally:
        if request.node.stash.get(_FAILED, False):
            print(f"--- controller log ({controller.log_path}), last lines ---\n{controller.log_tail(60)}")
        core.delete_namespace(namespace)



def command_study(
    name: str, image: str, *, max_trials: int = 8, parallelism: int = 3, sleep: int = 1, max_retries: int = 2
) -> dict[str, Any]:
    """A Study whose trial is a shell-free Python one-liner in the tunefleet image (command mode)."""
    script = f"import time; time.sleep({sleep}); print('loss=' + str(({{{{x}}}} - 2) ** 2))"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Study",
        "metadata": {"name": name},
        "spec": {
            "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
            "searchSpace": {"x": {"type": "float", "low": -10, "high": 10}},
            "strategy": {"sampler": "random", "pruner": "none", "seed": 7},
            "budget": {"maxTrials": max_trials},
            "parallelism": parallelism,
            "trial": {
                "command": ["python", "-c", script],
                "image": image,
                "cpus": 0.1,
                "memory": "256Mi",
                "maxDuration": "5m",
                "maxRetries": max_retries,
            },
        },
    }
