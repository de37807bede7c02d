"""Render the Helm chart offline and pick objects out of the result.

helm-python-sdk binds Helm's own Go library (``libhelm_c``), so rendering needs no helm binary,
no cluster and no network; ``lookup`` returns nothing, as in ``helm template``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import helm_python
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "tunefleet"
RELEASE = "tf"
RELEASE_NAMESPACE = "tunefleet-system"
TRIAL_SERVICE_ACCOUNT = "tunefleet-trial"
TRIAL_SECRET = "tunefleet-db-credentials"
GATEWAY = f"{RELEASE}-tunefleet-gateway"
GATEWAY_SERVICE = "tunefleet-gateway"  # fixed: trial pods dial it, the certificate names it
GATEWAY_TLS_SECRET = f"{RELEASE}-tunefleet-gateway-tls"
GATEWAY_KEYS_SECRET = f"{RELEASE}-tunefleet-gateway-token-keys"
GATEWAY_DNS_NAMES = [
    GATEWAY_SERVICE,
    f"{GATEWAY_SERVICE}.{RELEASE_NAMESPACE}",
    f"{GATEWAY_SERVICE}.{RELEASE_NAMESPACE}.svc",
    f"{GATEWAY_SERVICE}.{RELEASE_NAMESPACE}.svc.cluster.local",
]
CERT_MANAGER_VALUES: dict[str, Any] = {
    "gateway": {
        "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}
    }
}

# The oldest Kubernetes the chart supports and a current one; both ship in kubernetes-validate.
KUBERNETES_VERSIONS = ("1.29", "1.33")

# Each main option of the chart on its own, plus peering with namespaces (another peering kind).
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "external-database": {
        "externalDatabase": {
            "host": "pg.example.com",
            "port": 6432,
            "database": "hpo",
            "user": "hpo_user",
            "existingSecret": "hpo-db",
            "existingSecretPasswordKey": "pw",
            "sslmode": "verify-full",
        }
    },
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "dashboard": {"dashboard": {"enabled": True}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "replicas-2": {"replicaCount": 2},
    "replicas-2-watch-namespaces": {"replicaCount": 2, "watchNamespaces": ["team-a", "team-b"]},
    "gateway-cert-manager": CERT_MANAGER_VALUES,
}

Manifest = dict[str, Any]


def render_templates(chart: helm_python.Chart, values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce for an install."""
    return chart.render(values, name=RELEASE, namespace=RELEASE_NAMESPACE, is_install=True)


def render_objects(chart: helm_python.Chart, values: dict[str, Any] | None = None) -> list[Manifest]:
    """Every object the chart would install (hooks included, NOTES excluded)."""
    rendered = render_templates(chart, values)
    objects: list[Manifest] = []
    for template in sorted(rendered):
        if template.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(rendered[template]) if doc)
    return objects


def find(objects: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = find(objects, kind, name)
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def only_container(workload: Manifest) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """Env as name -> value, or name -> valueFrom for references."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def controller_deployment(objects: list[Manifest]) -> Manifest:
    return one(objects, "Deployment", f"{RELEASE}-tunefleet-controller")


def gateway_deployment(objects: list[Manifest]) -> Manifest:
    return one(objects, "Deployment", GATEWAY)


def mount_files(workload: Manifest, objects: list[Manifest], root: Path) -> dict[str, Path]:
    """Write the Secret-backed volumes of a workload's container under ``root``, as the kubelet
    mounts them, from the Secrets in ``objects``. Returns mountPath -> the local directory."""
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    mounted: dict[str, Path] = {}
    for mount in only_container(workload).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        # The chart mounts Secrets as projected volumes (several Secrets, chosen keys, one directory).
        sources = [s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s]
        if not sources:
            continue
        directory = root / mount["name"]
        directory.mkdir(parents=True)
        for source in sources:
            data = secrets[source["name"]]["data"]
            for item in source.get("items") or [{"key": k, "path": k} for k in data]:
                (directory / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
        mounted[mount["mountPath"]] = directory
    return mounted


def resolve_env(
    workload: Manifest, objects: list[Manifest], root: Path, secrets: dict[str, str] | None = None
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: ``secretKeyRef`` from ``secrets`` (name ->
    the value of the key named) or the rendered Secrets, the namespace, and paths inside the Secret
    volumes rewritten to where :func:`mount_files` put them."""
    mounted = mount_files(workload, objects, root)
    rendered = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    env: dict[str, str] = {}
    for item in only_container(workload)["env"]:
        if "value" in item:
            value = str(item["value"])
            for path, directory in mounted.items():
                if value.startswith(path + "/"):
                    value = str(directory / value[len(path) + 1 :])
            env[item["name"]] = value
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            if secrets is not None and ref["name"] in secrets:
                env[item["name"]] = secrets[ref["name"]]
            else:
                env[item["name"]] = base64.b64decode(rendered[ref["name"]]["data"][ref["key"]]).decode()
        elif item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace":
            env[item["name"]] = RELEASE_NAMESPACE
    return env


class _SecretsApiServer(BaseHTTPRequestHandler):
    """Just enough of the Kubernetes API for Helm's `lookup` of live Secrets in the release namespace."""

    secrets: ClassVar[dict[str, Manifest]] = {}

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        prefix = f"/api/v1/namespaces/{RELEASE_NAMESPACE}/secrets/"
        body: Manifest = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": "NotFound",
            "code": 404,
        }
        if path == "/api/v1":
            body = {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    {
                        "name": "secrets",
                        "singularName": "secret",
                        "namespaced": True,
                        "kind": "Secret",
                        "verbs": ["get"],
                    }
                ],
            }
        elif path.startswith(prefix) and path[len(prefix) :] in self.secrets:
            body = self.secrets[path[len(prefix) :]]
        payload = json.dumps(body).encode()
        self.send_response(404 if body["kind"] == "Status" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def api_server_with_secrets(secrets: list[Manifest]) -> Iterator[str]:
    """The URL of an API server whose release namespace holds these Secrets (one at a time)."""
    _SecretsApiServer.secrets = {s["metadata"]["name"]: s for s in secrets}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SecretsApiServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def render_upgrade(
    chart: helm_python.Chart, live_secrets: list[Manifest], values: dict[str, Any] | None = None
) -> list[Manifest]:
    """The objects `helm upgrade` renders while these Secrets exist (Helm's `lookup` finds them)."""
    with (
        api_server_with_secrets(live_secrets) as url,
        helm_python.Config(kube_apiserver=url, kube_token="test", namespace=RELEASE_NAMESPACE) as config,
    ):
        rendered = config.render(chart, values, name=RELEASE, namespace=RELEASE_NAMESPACE, is_upgrade=True)
    return [
        doc
        for template in sorted(rendered)
        if not template.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(rendered[template])
        if doc
    ]


def assert_hardened(pod: dict[str, Any], container: dict[str, Any], uid: int) -> None:
    pod_context = pod["securityContext"]
    context = container["securityContext"]
    assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] == uid
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "a read-only root needs a writable /tmp"


# -- NetworkPolicy, evaluated as a CNI does for ingress ------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) against labels; ``{}`` selects everything."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
        }[operator]
        if not matched:
            return False
    return True


def ingress_admits(
    policies: list[Manifest], target: dict[str, str], source_namespace: str, source: dict[str, str], port: int
) -> bool:
    """Whether a pod (``source`` labels, in ``source_namespace``) may open TCP ``port`` on a pod of the
    release namespace labelled ``target``: isolated by the policies that select it, admitted by any
    of their rules. Namespaces carry only ``kubernetes.io/metadata.name``, as on a bare cluster."""
    namespace_labels = {"kubernetes.io/metadata.name": source_namespace}
    selecting = [p for p in policies if selects(p["spec"]["podSelector"], target)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")  # absent: every port
            if ports is not None and not any(
                p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports
            ):
                continue
            if "from" not in rule:  # absent: every source
                return True
            for peer in rule["from"]:
                if "namespaceSelector" in peer:
                    in_namespace = selects(peer["namespaceSelector"], namespace_labels)
                else:
                    in_namespace = source_namespace == policy["metadata"]["namespace"]
                if in_namespace and selects(peer.get("podSelector", {}), source):
                    return True
    return False
