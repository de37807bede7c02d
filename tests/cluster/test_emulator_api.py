"""The emulated Kubernetes API through the official client and kopf, unchanged: CRUD, conflicts,
selectors, status, patches, finalizers, garbage collection, watches and outages."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import kopf
import kubernetes
import pytest
from kubernetes.client import ApiClient, ApiException, CoreV1Api, CustomObjectsApi
from kubernetes.watch import Watch

from tests.cluster.emulator import Disruption, KubeEmulator

pytestmark = pytest.mark.timeout(60)

GROUP, VERSION = "tunefleet.dev", "v1alpha1"


def crd(plural: str, kind: str, *, status_schema: dict[str, Any] | None = None,
        subresources: bool = True) -> dict[str, Any]:
    preserve = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schema = {"type": "object", "properties": {
        "spec": preserve, "status": status_schema or preserve}}
    version: dict[str, Any] = {"name": VERSION, "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": schema}}
    if subresources:
        version["subresources"] = {"status": {}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{GROUP}"},
            "spec": {"group": GROUP, "scope": "Namespaced", "versions": [version],
                     "names": {"plural": plural, "singular": plural[:-1], "kind": kind}}}


def http(kube: KubeEmulator, method: str, path: str, body: Any = None,
         content_type: str = "application/json") -> tuple[int, Any]:
    """A raw request, for what the official client cannot express."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{kube.url}{path}", data=data, method=method,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- API semantics ------------------------------------------------------------------------------


def test_crud_conflicts_and_not_found(kube_client: ApiClient) -> None:
    v1 = CoreV1Api(kube_client)
    created = v1.create_namespaced_config_map("default", {"metadata": {"name": "one"},
                                                          "data": {"a": "1"}})
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert int(created.metadata.resource_version) > 0 and created.metadata.generation == 1
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("default", {"metadata": {"name": "one"}})
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_config_map("missing", "default")
    status = json.loads(exc.value.body)
    assert (exc.value.status, status["kind"], status["reason"]) == (404, "Status", "NotFound")
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("nowhere", {"metadata": {"name": "x"}})
    assert exc.value.status == 404

    generated = v1.create_namespaced_config_map("default", {"metadata": {"generateName": "gen-"}})
    assert generated.metadata.name.startswith("gen-") and len(generated.metadata.name) == 9
    v1.create_namespace({"metadata": {"name": "team-a"}})
    v1.create_namespaced_config_map("team-a", {"metadata": {"name": "one"}})
    every = v1.list_config_map_for_all_namespaces()
    assert {(c.metadata.namespace, c.metadata.name) for c in every.items} >= {
        ("default", "one"), ("team-a", "one")}
    assert int(every.metadata.resource_version) >= int(created.metadata.resource_version)

    v1.delete_namespaced_config_map("one", "default")
    with pytest.raises(ApiException) as exc:
        v1.delete_namespaced_config_map("one", "default")
    assert exc.value.status == 404


def test_stale_resource_version_conflicts(kube_client: ApiClient) -> None:
    v1 = CoreV1Api(kube_client)
    first = v1.create_namespaced_config_map("default", {"metadata": {"name": "cm"},
                                                        "data": {"a": "1"}})
    first.data = {"a": "2"}
    second = v1.replace_namespaced_config_map("cm", "default", first)
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    first.data = {"a": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as exc:
        v1.replace_namespaced_config_map("cm", "default", first)
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"
    stale = {"metadata": {"resourceVersion": first.metadata.resource_version}, "data": {"a": "4"}}
    with pytest.raises(ApiException) as exc:
        v1.patch_namespaced_config_map("cm", "default", stale)
    assert exc.value.status == 409
    # A write that changes nothing keeps the resourceVersion (no event either).
    same = v1.patch_namespaced_config_map("cm", "default", {"data": {"a": "2"}})
    assert same.metadata.resource_version == second.metadata.resource_version


def test_label_and_field_selectors(kube_client: ApiClient) -> None:
    v1 = CoreV1Api(kube_client)
    for name, labels in (("a", {"app": "x", "tier": "web"}), ("b", {"app": "y"}), ("c", {})):
        v1.create_namespaced_config_map("default", {"metadata": {"name": name, "labels": labels}})

    def names(**kwargs: str) -> set[str]:
        return {c.metadata.name for c in v1.list_namespaced_config_map("default", **kwargs).items
                if c.metadata.name in "abc"}

    assert names(label_selector="app=x") == {"a"}
    assert names(label_selector="app!=x") == {"b", "c"}
    assert names(label_selector="app in (x,y)") == {"a", "b"}
    assert names(label_selector="app notin (x)") == {"b", "c"}
    assert names(label_selector="tier") == {"a"}
    assert names(label_selector="!app") == {"c"}
    assert names(label_selector="app,tier=web") == {"a"}
    assert names(field_selector="metadata.name=b") == {"b"}
    assert names(field_selector="metadata.name!=b") == {"a", "c"}
    with pytest.raises(ApiException) as exc:
        v1.list_namespaced_config_map("default", field_selector="data.a=1")
    assert exc.value.status == 400
    page = v1.list_namespaced_config_map("default", limit=2)
    rest = v1.list_namespaced_config_map("default", limit=2, _continue=page.metadata._continue)
    assert len(page.items) == 2 and {i.metadata.name for i in page.items + rest.items} >= {"a", "b", "c"}


def test_status_subresource_generation_and_crd_discovery(
        kube_emulator: KubeEmulator, kube_client: ApiClient) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(kube_client)
    ext.create_custom_resource_definition(crd("studies", "Study"))
    groups = kubernetes.client.ApisApi(kube_client).get_api_versions()
    assert GROUP in {g.name for g in groups.groups}
    _, found = http(kube_emulator, "GET", f"/apis/{GROUP}/{VERSION}")
    assert {r["name"] for r in found["resources"]} == {"studies", "studies/status"}

    crs = CustomObjectsApi(kube_client)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Study", "metadata": {"name": "s"},
            "spec": {"parallelism": 1}, "status": {"phase": "ignored"}}
    study = crs.create_namespaced_custom_object(GROUP, VERSION, "default", "studies", body)
    assert "status" not in study and study["metadata"]["generation"] == 1
    study = crs.patch_namespaced_custom_object(GROUP, VERSION, "default", "studies", "s",
                                               {"status": {"phase": "nope"},
                                                "metadata": {"labels": {"l": "1"}}})
    assert "status" not in study and study["metadata"]["generation"] == 1
    study = crs.patch_namespaced_custom_object_status(GROUP, VERSION, "default", "studies", "s",
                                                      {"status": {"phase": "Running"},
                                                       "spec": {"parallelism": 9}})
    assert study["status"] == {"phase": "Running"} and study["spec"] == {"parallelism": 1}
    assert study["metadata"]["generation"] == 1
    study = crs.patch_namespaced_custom_object(GROUP, VERSION, "default", "studies", "s",
                                               {"spec": {"parallelism": 2}})
    assert study["metadata"]["generation"] == 2 and study["status"] == {"phase": "Running"}
    code, _ = http(kube_emulator, "PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/default/studies/s",
                   {"spec": {}}, "application/strategic-merge-patch+json")
    assert code == 415  # custom resources refuse strategic merge

    ext.delete_custom_resource_definition(f"studies.{GROUP}")
    assert f"{GROUP}/{VERSION}/studies" not in kube_emulator.api.served()


def test_status_schema_without_preserve_unknown_fields_prunes(kube_emulator: KubeEmulator) -> None:
    kube_emulator.api.apply_crds([crd("gpubudgets", "GPUBudget", status_schema={
        "type": "object", "properties": {"usedGpuSeconds": {"type": "integer"}}})])
    kube_emulator.api.create("gpubudgets.tunefleet.dev", {"metadata": {"name": "b"},
                                                          "spec": {"gpuHours": 4}}, "default")
    patched = kube_emulator.api.patch("gpubudgets.tunefleet.dev", "default", "b", {
        "status": {"usedGpuSeconds": 5, "operatorState": {"x": 1}}}, subresource="status")
    assert patched["status"] == {"usedGpuSeconds": 5}


def test_patch_flavours(kube_emulator: KubeEmulator, kube_client: ApiClient) -> None:
    v1 = CoreV1Api(kube_client)
    v1.create_namespaced_config_map("default", {"metadata": {"name": "p"},
                                                "data": {"a": "1", "b": "2"}})
    _, merged = http(kube_emulator, "PATCH", "/api/v1/namespaces/default/configmaps/p",
                     {"data": {"a": None, "c": "3"}}, "application/merge-patch+json")
    assert merged["data"] == {"b": "2", "c": "3"}
    patched = v1.patch_namespaced_config_map("p", "default", [
        {"op": "test", "path": "/data/b", "value": "2"},
        {"op": "replace", "path": "/data/b", "value": "20"},
        {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}}])
    assert patched.data == {"b": "20", "c": "3"} and patched.metadata.labels == {"k": "v"}
    with pytest.raises(ApiException) as exc:
        v1.patch_namespaced_config_map("p", "default", [{"op": "test", "path": "/data/b",
                                                         "value": "nope"}])
    assert exc.value.status == 422
    # Strategic merge (the official client's default for dicts): conditions merge by type.
    v1.create_namespaced_pod("default", {"metadata": {"name": "pod"}, "spec": {
        "containers": [{"name": "c", "image": "does-not-exist"}]}})
    conditions = [{"type": "Custom", "status": "True"}]
    pod = v1.patch_namespaced_pod_status("pod", "default", {"status": {"conditions": conditions}})
    kinds = {c.type for c in pod.status.conditions}
    assert "Custom" in kinds and ("PodScheduled" in kinds or len(kinds) == 1)
    with pytest.raises(ApiException) as exc:  # pod specs are immutable
        v1.patch_namespaced_pod("pod", "default", {"spec": {"restartPolicy": "Never"}})
    assert exc.value.status == 422


def test_finalizers_hold_deletion(kube_client: ApiClient) -> None:
    v1 = CoreV1Api(kube_client)
    v1.create_namespaced_config_map("default", {"metadata": {"name": "f",
                                                             "finalizers": ["test/hold"]}})
    v1.delete_namespaced_config_map("f", "default")
    held = v1.read_namespaced_config_map("f", "default")
    assert held.metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as exc:
        v1.patch_namespaced_config_map("f", "default", {"metadata": {
            "finalizers": ["test/hold", "test/new"]}})
    assert exc.value.status == 422
    v1.patch_namespaced_config_map("f", "default", [{"op": "remove", "path": "/metadata/finalizers"}])
    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_config_map("f", "default")
    assert exc.value.status == 404


def test_owner_references_garbage_collection(kube_emulator: KubeEmulator,
                                             kube_client: ApiClient) -> None:
    v1 = CoreV1Api(kube_client)
    owner = v1.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    for name, finalizers in (("free", []), ("held", ["test/hold"])):
        v1.create_namespaced_config_map("default", {"metadata": {
            "name": name, "ownerReferences": [ref], "finalizers": finalizers}})
    v1.delete_namespaced_config_map("owner", "default")
    kube_emulator.wait_for(lambda: kube_emulator.api.find("configmaps", "default", "free") is None)
    held = kube_emulator.api.get("configmaps", "default", "held")
    assert held["metadata"]["deletionTimestamp"]

    orphan_owner = v1.create_namespaced_config_map("default", {"metadata": {"name": "o2"}})
    ref["name"], ref["uid"] = "o2", orphan_owner.metadata.uid
    v1.create_namespaced_config_map("default", {"metadata": {"name": "kept",
                                                             "ownerReferences": [ref]}})
    v1.delete_namespaced_config_map("o2", "default", propagation_policy="Orphan")
    time.sleep(0.3)
    kept = kube_emulator.api.get("configmaps", "default", "kept")
    assert not kept["metadata"].get("ownerReferences")


def test_watch_resume_gone_and_selectors(kube_emulator: KubeEmulator,
                                         kube_client: ApiClient) -> None:
    v1 = CoreV1Api(kube_client)
    a = v1.create_namespaced_config_map("default", {"metadata": {"name": "a",
                                                                 "labels": {"w": "1"}}})
    since = a.metadata.resource_version
    v1.create_namespaced_config_map("default", {"metadata": {"name": "b", "labels": {"w": "1"}}})
    v1.create_namespaced_config_map("default", {"metadata": {"name": "other"}})
    v1.patch_namespaced_config_map("a", "default", {"data": {"x": "1"}})
    v1.patch_namespaced_config_map("b", "default", {"metadata": {"labels": {"w": "2"}}})
    seen = [(e["type"], e["object"].metadata.name) for e in Watch().stream(
        v1.list_namespaced_config_map, "default", resource_version=since, label_selector="w=1",
        timeout_seconds=1)]
    # b leaving the selector is a DELETED for this watch, like the real watch cache.
    assert seen == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]

    kube_emulator.compact_history()
    with pytest.raises(ApiException) as exc:
        list(Watch().stream(v1.list_namespaced_config_map, "default", resource_version=since,
                            timeout_seconds=1))
    assert exc.value.status == 410


@pytest.mark.kube_emulator(bookmark_interval_s=0.2)
def test_watch_timeout_and_bookmarks(kube_emulator: KubeEmulator) -> None:
    url = (f"{kube_emulator.url}/api/v1/namespaces/default/configmaps?watch=true"
           f"&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion="
           f"{kube_emulator.api.resource_version}")
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=10) as response:
        events = [json.loads(line) for line in response]
    assert 0.9 < time.monotonic() - started < 3
    assert events and {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"]["metadata"]["resourceVersion"] == str(
        kube_emulator.api.resource_version)


def test_watch_restarts_after_force_close(kube_emulator: KubeEmulator,
                                          kube_client: ApiClient) -> None:
    v1 = CoreV1Api(kube_client)
    seen: list[str] = []
    watch = Watch()

    def consume() -> None:
        for event in watch.stream(v1.list_namespaced_config_map, "default",
                                  resource_version=str(kube_emulator.api.resource_version)):
            seen.append(event["object"].metadata.name)
            if len(seen) == 2:
                watch.stop()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    kube_emulator.wait_for(lambda: kube_emulator.request_counts[("watch", "configmaps")] == 1)
    v1.create_namespaced_config_map("default", {"metadata": {"name": "before"}})
    kube_emulator.wait_for(lambda: seen == ["before"])
    assert kube_emulator.close_watches() == 1
    v1.create_namespaced_config_map("default", {"metadata": {"name": "after"}})
    thread.join(timeout=10)
    assert seen == ["before", "after"]
    assert kube_emulator.request_counts[("watch", "configmaps")] == 2


def test_namespace_deletion_cascades(kube_emulator: KubeEmulator, kube_client: ApiClient) -> None:
    v1 = CoreV1Api(kube_client)
    v1.create_namespace({"metadata": {"name": "doomed"}})
    v1.create_namespaced_config_map("doomed", {"metadata": {"name": "c",
                                                             "finalizers": ["test/hold"]}})
    v1.delete_namespace("doomed")
    assert v1.read_namespace("doomed").status.phase == "Terminating"
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("doomed", {"metadata": {"name": "new"}})
    assert exc.value.status == 403
    kube_emulator.api.patch("configmaps", "doomed", "c", {"metadata": {"finalizers": None}})
    kube_emulator.wait_for(lambda: kube_emulator.api.find("namespaces", None, "doomed") is None)


def test_api_outage(kube_emulator: KubeEmulator, kube_client: ApiClient) -> None:
    v1 = CoreV1Api(kube_client)
    kube_emulator.pause()
    with pytest.raises(ApiException) as exc:
        v1.list_namespace()
    assert exc.value.status == 503
    kube_emulator.pause("refuse")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{kube_emulator.url}/api/v1/namespaces", timeout=5)
    kube_emulator.resume()
    assert v1.list_namespace().items


def test_a_disruption_fails_or_delays_its_share_of_requests_until_it_ends(
    kube_emulator: KubeEmulator, kube_client: ApiClient
) -> None:
    v1 = CoreV1Api(kube_client)
    kube_emulator.disrupt(Disruption("429", share=1.0))
    with pytest.raises(ApiException) as exc:
        v1.list_namespace()
    assert (exc.value.status, exc.value.headers["Retry-After"]) == (429, "1")
    kube_emulator.disrupt(Disruption("500", share=1.0))
    with pytest.raises(ApiException) as exc:
        v1.list_namespace()
    assert exc.value.status == 500 and json.loads(exc.value.body)["reason"] == "InternalError"
    kube_emulator.disrupt(Disruption("slow", share=1.0, delay_s=0.5))
    started = time.monotonic()
    assert v1.list_namespace().items
    assert time.monotonic() - started >= 0.5
    kube_emulator.disrupt(Disruption("500", share=0.5, seed=4))
    answers = []
    for _ in range(40):
        try:
            v1.list_namespace()
            answers.append(200)
        except ApiException as error:
            answers.append(error.status)
    assert set(answers) == {200, 500}  # some through, some not
    kube_emulator.disrupt(None)
    assert v1.list_namespace().items
    with pytest.raises(ValueError, match="unknown disruption 'teapot'"):
        Disruption("teapot")


# -- kopf ---------------------------------------------------------------------------------------


def test_kopf_operator_against_emulator(kube_emulator: KubeEmulator, kube_client: ApiClient,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    kubernetes.client.ApiextensionsV1Api(kube_client).create_custom_resource_definition(
        crd("widgets", "Widget"))
    # The client reads $KUBECONFIG once, at import: patch its default too (a subprocess
    # controller only needs the env var).
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig_path))
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION",
                        str(kube_emulator.kubeconfig_path))
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.create(GROUP, VERSION, "widgets", registry=registry)
    def created(body: kopf.Body, spec: dict[str, Any], patch: kopf.Patch, **_: Any) -> None:
        patch.status["observedSize"] = spec["size"]
        kopf.info(body, reason="Observed", message="seen by the emulator test")

    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 5
    stop, ready = threading.Event(), threading.Event()
    errors: list[Exception] = []

    def run() -> None:
        try:
            asyncio.run(kopf.operator(registry=registry, settings=settings, clusterwide=True,
                                      standalone=True, stop_flag=stop, ready_flag=ready))
        except Exception as exc:  # noqa: BLE001 -- surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(20), errors
        CustomObjectsApi(kube_client).create_namespaced_custom_object(
            GROUP, VERSION, "default", "widgets",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": "w"},
             "spec": {"size": 3}})
        widget: Callable[[], Any] = lambda: kube_emulator.api.get(  # noqa: E731
            "widgets.tunefleet.dev", "default", "w")
        kube_emulator.wait_for(lambda: widget().get("status", {}).get("observedSize") == 3, 20)
        kube_emulator.wait_for(lambda: any(
            e.get("involvedObject", {}).get("name") == "w" and e.get("reason") == "Observed"
            for e in kube_emulator.api.list("events", "default")), 10)
        assert kube_emulator.request_counts[("patch", "widgets.tunefleet.dev/status")] >= 1
        # A dropped connection: kopf re-watches from its last resourceVersion and sees w2.
        watches = kube_emulator.request_counts[("watch", "widgets.tunefleet.dev")]
        kube_emulator.close_watches(abort=True)
        CustomObjectsApi(kube_client).create_namespaced_custom_object(
            GROUP, VERSION, "default", "widgets",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": "w2"},
             "spec": {"size": 5}})
        kube_emulator.wait_for(lambda: kube_emulator.api.get(
            "widgets.tunefleet.dev", "default", "w2").get("status", {}).get("observedSize") == 5, 20)
        assert kube_emulator.request_counts[("watch", "widgets.tunefleet.dev")] > watches
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not errors
