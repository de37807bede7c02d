"""Operating the controller: health endpoint, and releasing finalizers on uninstall."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import kubernetes
import pytest

from controller.kube.client import KubeApi
from controller.kube.release_finalizers import release_all
from tests.cluster.controller_harness import NAMESPACE, ControllerProcess, prepare_cluster, wait_for
from tests.cluster.emulator import KubeEmulator

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_release_finalizers_frees_every_trial_pod_and_nothing_else(kube_emulator: KubeEmulator) -> None:
    prepare_cluster(kube_emulator)
    for name, labels in (("trial", {"tunefleet.dev/study": "s", "tunefleet.dev/trial": "0"}), ("other", {})):
        kube_emulator.api.create(
            "pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": labels, "finalizers": ["tunefleet.dev/gpu-accounting"]},
                "spec": {"containers": [{"name": "c", "image": "i", "command": ["sleep", "60"]}]},
            },
            NAMESPACE,
        )
    client = kubernetes.config.new_client_from_config(config_file=str(kube_emulator.kubeconfig_path))
    try:
        assert release_all(kube=KubeApi(client)) == 1
    finally:
        client.close()
    assert kube_emulator.api.get("pods", NAMESPACE, "trial")["metadata"].get("finalizers") in (None, [])
    assert kube_emulator.api.get("pods", NAMESPACE, "other")["metadata"]["finalizers"] == [
        "tunefleet.dev/gpu-accounting"
    ]


def test_the_controller_answers_healthz_and_readyz(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    port = _free_port()
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path, health_port=port).start()

    def get(path: str) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return dict(json.loads(response.read()))
        except OSError:
            return None

    try:
        ready = wait_for(lambda: get("/readyz"), 60,
                         lambda: "/readyz never answered\n" + controller.log()[-2000:])
        assert ready == {"ready": True}
        health = get("/healthz")
        assert health is not None and health["ok"] is True and health["leader"] is True
    finally:
        controller.stop()
