"""The emulated API server authenticates ServiceAccount tokens and authorizes each request against
the RBAC objects it stores, answering 401 and 403 as a real server does (docs: tests/cluster/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client import ApiClient, ApiException, CoreV1Api

from tests.cluster.emulator import KubeEmulator
from tests.support.kubeconfig import service_account_kubeconfig

pytestmark = pytest.mark.timeout(60)

NS = "team-a"
ACCOUNT = "robot"
USER = f"system:serviceaccount:{NS}:{ACCOUNT}"


def _as_robot(kube: KubeEmulator, admin: ApiClient, tmp_path: Path) -> ApiClient:
    """An official client whose token comes from the TokenRequest API, as `kubectl create token`."""
    core = CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": NS}})
    core.create_namespaced_service_account(NS, {"metadata": {"name": ACCOUNT}})
    path = service_account_kubeconfig(admin, kube.kubeconfig_path, NS, ACCOUNT, tmp_path / "robot")
    client: ApiClient = kubernetes.config.new_client_from_config(config_file=str(path))
    return client


def _grant(kube: KubeEmulator, rules: list[dict[str, object]], cluster: bool = False) -> None:
    kind = "ClusterRole" if cluster else "Role"
    meta = {"name": "robot"} if cluster else {"name": "robot", "namespace": NS}
    plural = "clusterroles" if cluster else "roles"
    kube.api.create(f"{plural}.rbac.authorization.k8s.io", {"kind": kind, "metadata": meta, "rules": rules},
                    None if cluster else NS)
    binding = {"kind": f"{kind}Binding", "metadata": meta,
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": "robot"},
               "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NS}]}
    kube.api.create(f"{kind.lower()}bindings.rbac.authorization.k8s.io", binding, None if cluster else NS)


def test_a_service_account_gets_403_until_rbac_grants_the_request(
    kube_emulator: KubeEmulator, kube_client: ApiClient, tmp_path: Path
) -> None:
    robot = CoreV1Api(_as_robot(kube_emulator, kube_client, tmp_path))
    with pytest.raises(ApiException) as denied:
        robot.list_namespaced_pod(NS)
    assert denied.value.status == 403
    status = json.loads(denied.value.body)
    assert status["reason"] == "Forbidden"
    assert status["message"] == (
        f'pods is forbidden: User "{USER}" cannot list resource "pods" in API group "" in the '
        f'namespace "{NS}"'
    )

    _grant(kube_emulator, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                           {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mine"],
                            "verbs": ["get"]}])
    assert robot.list_namespaced_pod(NS).items == []
    with pytest.raises(ApiException) as elsewhere:
        robot.list_namespaced_pod("default")  # a Role grants only in its own namespace
    assert elsewhere.value.status == 403
    for name in ("mine", "theirs"):
        kube_emulator.api.create("secrets", {"metadata": {"name": name}, "data": {}}, NS)
    assert robot.read_namespaced_secret("mine", NS).metadata.name == "mine"
    with pytest.raises(ApiException) as by_name:
        robot.read_namespaced_secret("theirs", NS)
    assert by_name.value.status == 403 and 'secrets "theirs" is forbidden' in json.loads(by_name.value.body)[
        "message"]
    with pytest.raises(ApiException) as listing:
        robot.list_namespaced_secret(NS)  # resourceNames never grant a list
    assert listing.value.status == 403


def test_cluster_role_bindings_and_subresources(
    kube_emulator: KubeEmulator, kube_client: ApiClient, tmp_path: Path
) -> None:
    robot = CoreV1Api(_as_robot(kube_emulator, kube_client, tmp_path))
    _grant(kube_emulator, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create"]}],
           cluster=True)
    assert robot.list_pod_for_all_namespaces().items == []
    robot.create_namespaced_pod(NS, {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "image": "x"}]}})
    with pytest.raises(ApiException) as status:
        robot.patch_namespaced_pod_status("p", NS, {"status": {"phase": "Running"}})
    assert status.value.status == 403 and 'resource "pods/status"' in json.loads(status.value.body)["message"]


def test_an_unknown_token_is_401(kube_emulator: KubeEmulator, tmp_path: Path) -> None:
    config = json.loads(kube_emulator.kubeconfig_path.read_text())
    config["users"] = [{"name": "emulator", "user": {"token": "made-up"}}]
    path = tmp_path / "forged"
    path.write_text(json.dumps(config))
    client = kubernetes.config.new_client_from_config(config_file=str(path))
    with pytest.raises(ApiException) as error:
        CoreV1Api(client).list_namespace()
    assert error.value.status == 401
