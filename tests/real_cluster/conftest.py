"""The real-cluster tier: the controller's scenarios against the current kubeconfig.

Skipped unless ``pytest --real-cluster``. Expects tunefleet installed with its chart (CRDs,
controller, database); see docs/real-cluster.md. Each test gets a fresh namespace, deleted after.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "tunefleet.dev", "v1alpha1"
IMAGE_ENV = "TUNEFLEET_E2E_IMAGE"
DEFAULT_IMAGE = "ghcr.io/tunefleet/tunefleet-worker:0.1.0"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.real_cluster)


class RealCluster:
    """The official client on the current kubeconfig, scoped to one throwaway namespace."""

    def __init__(self, api_client: kubernetes.client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
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

    def wait(self, predicate: Any, timeout: float, message: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            time.sleep(2)
        raise AssertionError(f"timed out after {timeout:.0f} s: {message}")


@pytest.fixture
def real_cluster() -> Iterator[RealCluster]:
    api_client = kubernetes.config.new_client_from_config()
    namespace = f"tunefleet-e2e-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        yield RealCluster(api_client, namespace)
    finally:
        core.delete_namespace(namespace)
        api_client.close()


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
