"""Every object the chart renders is valid Kubernetes, the chart lints clean, and values are strict."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.chart.chart_support import (
    CHART_DIR,
    KUBERNETES_VERSIONS,
    RELEASE_NAMESPACE,
    SCENARIOS,
    Manifest,
    controller_deployment,
)

pytestmark = pytest.mark.chart

# Kinds whose schema is not in Kubernetes itself: checked against the CRDs the chart ships, or by
# shape where the CRD belongs to another project (Prometheus Operator).
KOPF_PEERING_KINDS = {"KopfPeering": "Namespaced", "ClusterKopfPeering": "Cluster"}


def kopf_peering_crds(chart: helm_python.Chart) -> dict[str, Manifest]:
    crds = [doc for entry in chart.crds for doc in yaml.safe_load_all(entry["data"]) if doc]
    return {crd["spec"]["names"]["kind"]: crd for crd in crds}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_rendered_object_is_valid_kubernetes(
    scenario: str,
    version: str,
    scenario_objects: Callable[[str], list[Manifest]],
    chart: helm_python.Chart,
) -> None:
    objects = scenario_objects(scenario)
    assert objects
    peering_crds = kopf_peering_crds(chart)
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in KOPF_PEERING_KINDS:
            crd = peering_crds[obj["kind"]]
            assert obj["apiVersion"] == f"{crd['spec']['group']}/v1", where
            assert ("namespace" in obj["metadata"]) == (crd["spec"]["scope"] == "Namespaced")
            continue
        if obj["kind"] == "ServiceMonitor":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert obj["spec"]["selector"]["matchLabels"] and obj["spec"]["endpoints"]
            continue
        if obj["kind"] == "Certificate":
            assert obj["apiVersion"] == "cert-manager.io/v1"
            assert obj["spec"]["secretName"] and obj["spec"]["dnsNames"] and obj["spec"]["issuerRef"]["name"]
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{where} is invalid on Kubernetes {version} at {path}: {error.message}")


def test_strict_validation_rejects_an_unknown_field() -> None:
    """Guards the check above: a misspelt field in a pod spec must not pass."""
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "imagePullPolicyy": "Always"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


def test_namespaced_objects_land_in_the_release_or_a_watched_namespace(
    scenario_objects: Callable[[str], list[Manifest]],
) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ClusterKopfPeering"}
    for scenario in SCENARIOS:
        allowed = {RELEASE_NAMESPACE, *SCENARIOS[scenario].get("watchNamespaces", [])}
        for obj in scenario_objects(scenario):
            if obj["kind"] in cluster_scoped:
                assert "namespace" not in obj["metadata"], obj["metadata"]["name"]
            else:
                assert obj["metadata"]["namespace"] in allowed, (scenario, obj["metadata"])


@pytest.mark.parametrize("version", ["v1.29.0", "v1.33.0"])
@pytest.mark.parametrize(
    "scenario", ["default", "replicas-2-watch-namespaces", "external-database", "gateway-cert-manager"]
)
def test_helm_lint_strict_reports_no_warning(scenario: str, version: str) -> None:
    report = helm_python.lint(
        CHART_DIR, SCENARIOS[scenario], strict=True, namespace=RELEASE_NAMESPACE, kube_version=version
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == []


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCont": 2}, "replicaCont"),
        ({"controller": {"resourcse": {"limits": {"cpu": 1}}}}, "resourcse"),
        ({"postgresql": {"persistence": {"sise": "20Gi"}}}, "sise"),
        ({"dashboard": {"enable": True}}, "enable"),
        ({"gateway": {"replicas": 3}}, "replicas"),
        ({"gateway": {"poolSise": 10}}, "poolSise"),
        ({"gateway": {"tls": {"certManager": {"enable": True}}}}, "enable"),
        ({"gateway": {"tls": {"certManager": {"issuerRef": {"nmae": "ca"}}}}}, "nmae"),
        ({"gateway": {"tokenKeys": {"secret": "keys"}}}, "secret"),
        ({"rbac": {"aggregateToDefaultRole": False}}, "aggregateToDefaultRole"),
    ],
)
def test_a_typo_in_values_fails_rendering_and_names_the_key(
    chart: helm_python.Chart, values: dict[str, Any], named: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(f"'{named}'")):
        chart.render(values, name="tf", namespace=RELEASE_NAMESPACE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": -1}, "replicaCount"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"externalDatabase": {"sslmode": "sometimes"}}, "sslmode"),
        ({"gateway": {"poolSize": 0}}, "poolSize"),
        ({"gateway": {"maxInFlight": "many"}}, "maxInFlight"),
        ({"gateway": {"maxStreams": 0}}, "maxStreams"),
        ({"gateway": {"replicaCount": 0}}, "replicaCount"),
        ({"gateway": {"tls": {"certManager": {"issuerRef": {"kind": "Vault"}}}}}, "kind"),
    ],
)
def test_values_of_the_wrong_shape_fail_rendering(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=message):
        chart.render(values, name="tf", namespace=RELEASE_NAMESPACE)


def test_external_database_without_its_secret_fails_with_a_next_step(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"externalDatabase\.existingSecret is required"):
        chart.render({"externalDatabase": {"host": "pg"}}, name="tf", namespace=RELEASE_NAMESPACE)


def test_cert_manager_without_an_issuer_fails_with_a_next_step(chart: helm_python.Chart) -> None:
    values = {"gateway": {"tls": {"certManager": {"enabled": True}}}}
    needed = r"gateway\.tls\.certManager\.issuerRef\.name is required"
    with pytest.raises(helm_python.HelmRenderError, match=needed):
        chart.render(values, name="tf", namespace=RELEASE_NAMESPACE)


def test_no_database_at_all_fails_with_a_next_step(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"postgresql\.enabled=true"):
        chart.render({"postgresql": {"enabled": False}}, name="tf", namespace=RELEASE_NAMESPACE)


def schema_objects(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path or "<root>", node)] if node.get("type") == "object" else []
    for name, sub in node.get("properties", {}).items():
        found.extend(schema_objects(sub, f"{path}.{name}"))
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found.extend(schema_objects(node[key], f"{path}[{key}]"))
    return found


def test_values_schema_closes_every_object() -> None:
    """Objects with named keys allow no others; maps type their values; Kubernetes passthrough
    objects (affinity terms, tolerations, env entries) are left to the API server."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    for path, node in schema_objects(schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
        elif isinstance(node.get("additionalProperties"), dict):
            continue
        else:
            assert (
                "(a Kubernetes object, validated by the API server)" in node.get("description", "")
                or path == ".global"
            ), path


def undocumented_values(text: str) -> list[str]:
    """Keys with a value and no `# --` comment on themselves or on an ancestor (helm-docs style)."""
    documented_at: list[int] = []  # indents of the open documented ancestors
    previous_comment = ""
    undocumented = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if stripped.startswith("# --") or (previous_comment and stripped.startswith("# ")):
                previous_comment = stripped if stripped.startswith("# --") else previous_comment
            continue
        match = re.match(r"^( *)([A-Za-z][\w-]*):", line)
        if not match:
            previous_comment = ""
            continue
        indent = len(match.group(1))
        documented_at = [i for i in documented_at if i < indent]
        has_comment = previous_comment.startswith("# --")
        is_leaf = bool(line.split(":", 1)[1].strip())
        if has_comment:
            documented_at.append(indent)
        elif is_leaf and not documented_at:
            undocumented.append(match.group(2))
        previous_comment = ""
    return undocumented


def test_every_value_is_documented_with_a_helm_docs_comment() -> None:
    assert undocumented_values((CHART_DIR / "values.yaml").read_text()) == []


def test_the_documentation_check_finds_a_bare_value() -> None:
    text = "# -- documented\na: 1\nb:\n  # -- documented child\n  c: 2\n  d: 3\ne:\n  f: 4\n"
    assert undocumented_values(text) == ["d", "f"]


def test_defaults_document_the_hardened_controller(render: Callable[..., list[Manifest]]) -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["crds"]["install"] is True and values["networkPolicy"]["enabled"] is True
    assert values["dashboard"]["enabled"] is False
    deployment = controller_deployment(render())
    assert deployment["spec"]["replicas"] == values["replicaCount"] == 1


def test_chart_readme_lists_every_value() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

    def leaves(node: dict[str, Any], prefix: str = "") -> list[str]:
        keys = []
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and not path.endswith(("resources", "Context")):
                keys.extend(leaves(value, f"{path}."))
            else:
                keys.append(path)
        return keys

    missing = [key for key in leaves(values) if f"| `{key}` |" not in readme]
    assert missing == []
