"""The controller's watch-fed index against the emulated API: what it saves, and what it still lists."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from controller.credentials import SecretUnreadable
from controller.kube.cache import SECRET_REREAD_S, ClusterIndex, IndexedKubeApi
from controller.kube.manifests import STUDY_LABEL, TRIAL_LABEL, study_selector
from tests.cluster.emulator import KubeEmulator

NS = "team-a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(simulated_kube_emulator: KubeEmulator) -> Iterator[tuple[IndexedKubeApi, Clock]]:
    simulated_kube_emulator.api.create_namespace(NS)
    client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call,unused-ignore]
        config_file=str(simulated_kube_emulator.kubeconfig_path)
    )
    clock = Clock()
    yield IndexedKubeApi(client, ClusterIndex(full_resync_s=60.0, clock=clock)), clock
    client.close()  # type: ignore[no-untyped-call,unused-ignore]


def _job(trial: int) -> dict[str, Any]:
    labels = {STUDY_LABEL: "s", TRIAL_LABEL: str(trial)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"s-t{trial}", "namespace": NS, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "trial", "image": "x"}]},
            },
        },
    }


def _lists(emulator: KubeEmulator) -> tuple[int, int]:
    counts = emulator.request_counts
    return counts[("list", "jobs.batch")], counts[("list", "pods")]


def test_jobs_the_controller_created_are_seen_without_listing_until_the_resync(
    api: tuple[IndexedKubeApi, Clock], simulated_kube_emulator: KubeEmulator
) -> None:
    kube, clock = api
    selector = study_selector("s")
    assert kube.list_jobs(NS, selector) == []
    assert kube.list_pods(NS, selector) == []
    assert _lists(simulated_kube_emulator) == (1, 1)

    assert kube.create_job(NS, _job(0))
    assert [j["metadata"]["name"] for j in kube.list_jobs(NS, selector)] == ["s-t0"]
    assert not kube.create_job(NS, _job(0))  # exists: adopted, not duplicated
    kube.delete_job(NS, "s-t1")  # absent: nothing to do
    assert _lists(simulated_kube_emulator) == (1, 1)

    kube.delete_job(NS, "s-t0")
    assert kube.list_jobs(NS, selector) == []
    clock.now += 60.0
    kube.list_jobs(NS, selector)
    kube.list_pods(NS, selector)
    assert _lists(simulated_kube_emulator) == (2, 2)


def test_other_selectors_always_list(
    api: tuple[IndexedKubeApi, Clock], simulated_kube_emulator: KubeEmulator
) -> None:
    kube, _ = api
    kube.list_pods(NS, STUDY_LABEL)
    kube.list_pods(NS, STUDY_LABEL)
    assert _lists(simulated_kube_emulator) == (0, 2)


def test_the_database_password_is_reread_every_few_seconds(
    api: tuple[IndexedKubeApi, Clock], simulated_kube_emulator: KubeEmulator
) -> None:
    kube, clock = api
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": NS},
        "data": {"password": base64.b64encode(b"first").decode()},
    }
    simulated_kube_emulator.api.create("secrets", secret, NS)
    assert kube.read_secret_value(NS, "db", "password") == "first"
    simulated_kube_emulator.api.patch(
        "secrets", NS, "db", {"data": {"password": base64.b64encode(b"rotated").decode()}}
    )
    assert kube.read_secret_value(NS, "db", "password") == "first"
    assert simulated_kube_emulator.request_counts[("get", "secrets")] == 1
    clock.now += SECRET_REREAD_S
    assert kube.read_secret_value(NS, "db", "password") == "rotated"


def test_a_missing_secret_is_an_error_read_again_later(
    api: tuple[IndexedKubeApi, Clock], simulated_kube_emulator: KubeEmulator
) -> None:
    kube, clock = api
    for _ in range(2):
        with pytest.raises(SecretUnreadable) as missing:
            kube.read_secret_value(NS, "db", "password")
        assert missing.value.reason == "SecretNotFound"
        assert f"Secret {NS}/db does not exist" in str(missing.value)
    assert simulated_kube_emulator.request_counts[("get", "secrets")] == 1
    simulated_kube_emulator.api.create("secrets", {"metadata": {"name": "db"}, "data": {"other": ""}}, NS)
    clock.now += SECRET_REREAD_S
    with pytest.raises(SecretUnreadable, match="has no key 'password'"):
        kube.read_secret_value(NS, "db", "password")
