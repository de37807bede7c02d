"""Render the Helm chart offline and pick objects out of the result.

helm-python-sdk binds Helm's own Go library (``libhelm_c``), so rendering needs no helm binary,
no cluster and no network; ``lookup`` returns nothing, as in ``helm template``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "tunefleet"
RELEASE = "tf"
RELEASE_NAMESPACE = "tunefleet-system"
TRIAL_SERVICE_ACCOUNT = "tunefleet-trial"
TRIAL_SECRET = "tunefleet-db-credentials"

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
