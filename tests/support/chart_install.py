"""What the Helm chart installs for the controller, rendered offline, for test harnesses to reproduce.

The cluster tier (emulated API) and the real-cluster tier run ``tunefleet controller`` as a local
process, not as the chart's Deployment, but with what that Deployment would have: its arguments,
its environment (the database URL included, ``secretKeyRef`` and ``fieldRef`` resolved as a
kubelet resolves them), and the identity and RBAC of the chart's controller ServiceAccount.
Rendering uses helm-python-sdk, like the chart tier: no helm binary, no cluster.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import yaml
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "tunefleet"
RELEASE = "tf"
RELEASE_NAMESPACE = "tunefleet-system"
DB_SECRET = "tunefleet-db"  # the externalDatabase.existingSecret harnesses create
RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")

Manifest = dict[str, Any]


@functools.cache
def _chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)  # kept for the whole process: loading is per process


def database_values(storage_url: str, secret: str = DB_SECRET) -> dict[str, Any]:
    """``externalDatabase`` values for the database a test's SQLAlchemy URL points at."""
    url = make_url(storage_url)
    return {
        "externalDatabase": {
            "host": url.host or "127.0.0.1",
            "port": url.port or 5432,
            "database": url.database or "postgres",
            "user": url.username or "postgres",
            "existingSecret": secret,
            "sslmode": "disable",
        }
    }


@dataclass(frozen=True)
class ChartInstall:
    """The rendered objects of one install, and what a harness needs from them."""

    objects: list[Manifest]
    namespace: str = RELEASE_NAMESPACE

    def of_kind(self, *kinds: str) -> list[Manifest]:
        return [o for o in self.objects if o["kind"] in kinds]

    @property
    def controller_deployment(self) -> Manifest:
        (deployment,) = [
            o for o in self.of_kind("Deployment")
            if o["metadata"]["labels"].get("app.kubernetes.io/component") == "controller"
        ]
        return deployment

    @property
    def controller_container(self) -> dict[str, Any]:
        (container,) = self.controller_deployment["spec"]["template"]["spec"]["containers"]
        return dict(container)

    @property
    def controller_service_account(self) -> tuple[str, str]:
        """(namespace, name) of the ServiceAccount the controller pods run as."""
        name = self.controller_deployment["spec"]["template"]["spec"]["serviceAccountName"]
        return self.namespace, str(name)

    @property
    def controller_args(self) -> list[str]:
        """The container's arguments: ``controller --standalone --health-port ...``."""
        return [str(a) for a in self.controller_container.get("args") or []]

    def controller_env(self, secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        """The controller container's environment as the kubelet builds it.

        Args:
            secrets: Secret name -> its string data, in the release namespace.
        """
        return resolve_env(self.controller_container, self.namespace, secrets)

    @property
    def rbac(self) -> list[Manifest]:
        return self.of_kind(*RBAC_KINDS)

    @property
    def service_accounts(self) -> list[Manifest]:
        return self.of_kind("ServiceAccount")

    @property
    def crds(self) -> list[Manifest]:
        return self.of_kind("CustomResourceDefinition")


def render_chart(values: dict[str, Any] | None = None, namespace: str = RELEASE_NAMESPACE) -> ChartInstall:
    """The objects ``helm install tf helm/tunefleet -n NAMESPACE`` would create (hooks included)."""
    rendered = _chart().render(values, name=RELEASE, namespace=namespace, is_install=True)
    objects: list[Manifest] = []
    for template in sorted(rendered):
        if not template.endswith("NOTES.txt"):
            objects.extend(doc for doc in yaml.safe_load_all(rendered[template]) if doc)
    return ChartInstall(objects, namespace)


def resolve_env(
    container: Mapping[str, Any], namespace: str, secrets: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """``value``, ``secretKeyRef`` and ``fieldRef: metadata.namespace``: what the chart uses."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        source = item.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = (secrets.get(ref["name"]) or {}).get(ref["key"])
            if value is None:
                raise KeyError(f"env {name}: Secret {namespace}/{ref['name']} has no key {ref['key']!r}")
            env[name] = value
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[name] = namespace
        else:
            raise ValueError(f"env {name}: the harness cannot resolve {source}")
    return env
