"""What the chart runs: the controller, PostgreSQL or an external database, the dashboard, metrics,
the network policy and the uninstall hook."""

from __future__ import annotations

import base64
from collections.abc import Callable

import helm_python
import pytest

from tests.chart.chart_support import (
    GATEWAY_KEYS_SECRET,
    GATEWAY_TLS_SECRET,
    RELEASE,
    RELEASE_NAMESPACE,
    SCENARIOS,
    Manifest,
    assert_hardened,
    controller_deployment,
    env_of,
    find,
    one,
    only_container,
    pod_spec,
    render_objects,
    render_templates,
    render_upgrade,
)

pytestmark = pytest.mark.chart

Objects = Callable[[str], list[Manifest]]
POSTGRES = f"{RELEASE}-tunefleet-postgresql"
BUNDLED_URL = (
    f"postgresql://tunefleet@{POSTGRES}.{RELEASE_NAMESPACE}.svc.cluster.local:5432/tunefleet?sslmode=disable"
)


def test_controller_runs_standalone_with_health_and_metrics(scenario_objects: Objects) -> None:
    deployment = controller_deployment(scenario_objects("default"))
    container = only_container(deployment)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container["args"] == [
        "controller",
        "--standalone",
        "--health-port",
        "8080",
        "--metrics-port",
        "9090",
    ]
    assert "command" not in container, "the image entrypoint is tunefleet"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert_hardened(pod_spec(deployment), container, 65532)


def test_controller_environment_carries_storage_without_the_password(
    scenario_objects: Objects,
) -> None:
    env = env_of(only_container(controller_deployment(scenario_objects("default"))))
    assert env["TUNEFLEET_STORAGE_URL"] == BUNDLED_URL
    assert env["TUNEFLEET_DB_PASSWORD"] == {"secretKeyRef": {"name": POSTGRES, "key": "password"}}
    assert env["TUNEFLEET_DB_SECRET"] == POSTGRES
    assert env["TUNEFLEET_LOG_FORMAT"] == "json"
    assert env["TUNEFLEET_TRIAL_SERVICE_ACCOUNT"] == "tunefleet-trial"


def test_watch_namespaces_become_repeated_namespace_flags(scenario_objects: Objects) -> None:
    args = only_container(controller_deployment(scenario_objects("watch-namespaces")))["args"]
    assert args[:5] == ["controller", "--namespace", "team-a", "--namespace", "team-b"]
    assert "--standalone" in args


def test_watch_namespaces_get_a_tokenless_trial_service_account(scenario_objects: Objects) -> None:
    accounts = find(scenario_objects("watch-namespaces"), "ServiceAccount", "tunefleet-trial")
    assert sorted(a["metadata"]["namespace"] for a in accounts) == ["team-a", "team-b"]
    assert all(a["automountServiceAccountToken"] is False for a in accounts)
    assert find(scenario_objects("default"), "ServiceAccount", "tunefleet-trial") == []


@pytest.mark.parametrize(
    ("scenario", "peering_kind", "namespaces"),
    [
        ("replicas-2", "ClusterKopfPeering", [None]),
        ("replicas-2-watch-namespaces", "KopfPeering", ["team-a", "team-b"]),
    ],
)
def test_two_replicas_use_kopf_peering(
    scenario_objects: Objects, scenario: str, peering_kind: str, namespaces: list[str | None]
) -> None:
    objects = scenario_objects(scenario)
    args = only_container(controller_deployment(objects))["args"]
    assert "--standalone" not in args
    assert args[args.index("--peering") + 1] == "tunefleet"
    peerings = find(objects, peering_kind, "tunefleet")
    assert sorted(str(p["metadata"].get("namespace")) for p in peerings) == sorted(str(n) for n in namespaces)
    assert find(scenario_objects("default"), peering_kind) == []


def test_bundled_postgresql_is_a_hardened_statefulset_with_a_volume(scenario_objects: Objects) -> None:
    objects = scenario_objects("default")
    statefulset = one(objects, "StatefulSet", POSTGRES)
    container = only_container(statefulset)
    assert container["image"] == "postgres:15"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert {m["name"] for m in container["volumeMounts"]} >= {claim["metadata"]["name"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "pg_isready" in " ".join(container[probe]["exec"]["command"])
    assert_hardened(pod_spec(statefulset), container, 999)
    service = one(objects, "Service", POSTGRES)
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == POSTGRES


def test_generated_password_is_random_and_kept_on_uninstall(chart: helm_python.Chart) -> None:
    first, second = (one(render_objects(chart), "Secret", POSTGRES) for _ in range(2))
    assert first["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert first["data"]["password"] != second["data"]["password"]
    assert len(base64.b64decode(first["data"]["password"])) == 32


def test_upgrade_reuses_the_live_password(chart: helm_python.Chart) -> None:
    """Helm's `lookup` finds the Secret of the first install, so an upgrade keeps the database
    reachable instead of rotating the password under PostgreSQL's feet."""
    live_password = base64.b64encode(b"password-from-the-first-install").decode()
    live = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": POSTGRES, "namespace": RELEASE_NAMESPACE},
        "data": {"password": live_password},
    }
    secret = one(render_upgrade(chart, [live]), "Secret", POSTGRES)
    assert secret["data"]["password"] == live_password


def test_external_database_replaces_the_bundled_one(scenario_objects: Objects) -> None:
    objects = scenario_objects("external-database")
    assert find(objects, "StatefulSet") == [] and find(objects, "Secret", POSTGRES) == []
    assert find(objects, "NetworkPolicy", POSTGRES) == []
    # Only the gateway's own Secrets: its TLS certificate and its token keys.
    secrets = {o["metadata"]["name"] for o in find(objects, "Secret")}
    assert secrets == {GATEWAY_TLS_SECRET, GATEWAY_KEYS_SECRET}
    env = env_of(only_container(controller_deployment(objects)))
    assert env["TUNEFLEET_STORAGE_URL"] == (
        "postgresql://hpo_user@pg.example.com:6432/hpo?sslmode=verify-full"
    )
    assert env["TUNEFLEET_DB_PASSWORD"] == {"secretKeyRef": {"name": "hpo-db", "key": "pw"}}
    assert env["TUNEFLEET_DB_SECRET"] == "hpo-db"


def _component_peers(rule: Manifest) -> set[str]:
    return {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]}


@pytest.mark.parametrize(
    ("scenario", "components"),
    [
        ("default", {"controller", "gateway", "uninstall-hook"}),
        ("dashboard", {"controller", "gateway", "uninstall-hook", "dashboard"}),
    ],
)
def test_network_policy_admits_only_the_password_holders_to_postgresql(
    scenario_objects: Objects, scenario: str, components: set[str]
) -> None:
    """Trial pods hold no password and no longer reach PostgreSQL: only the components that do."""
    policy = one(scenario_objects(scenario), "NetworkPolicy", POSTGRES)
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "postgresql"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert _component_peers(rule) == components
    for peer in rule["from"]:
        # No namespaceSelector: the release namespace only; exact labels of this release, so a pod
        # labelled tunefleet.dev/study (which anyone can set) matches none of them.
        assert set(peer) == {"podSelector"} and set(peer["podSelector"]) == {"matchLabels"}
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert "tunefleet.dev/study" not in str(policy)


def test_policy_peers_select_the_pods_the_chart_runs(scenario_objects: Objects) -> None:
    objects = scenario_objects("dashboard")
    policy = one(objects, "NetworkPolicy", POSTGRES)
    selectors = [
        peer["podSelector"]["matchLabels"]
        for peer in policy["spec"]["ingress"][0]["from"]
        if "matchLabels" in peer.get("podSelector", {})
    ]
    pod_labels = [
        o["spec"]["template"]["metadata"]["labels"] for o in objects if o["kind"] in ("Deployment", "Job")
    ]
    for labels in pod_labels:
        assert any(selector.items() <= labels.items() for selector in selectors), labels


def test_dashboard_reads_the_same_database(scenario_objects: Objects) -> None:
    objects = scenario_objects("dashboard")
    deployment = one(objects, "Deployment", f"{RELEASE}-tunefleet-dashboard")
    container = only_container(deployment)
    assert container["image"].startswith("ghcr.io/optuna/optuna-dashboard:")
    (url,) = container["args"]
    assert url == BUNDLED_URL.replace("postgresql://", "postgresql+psycopg2://")
    assert env_of(container)["PGPASSWORD"] == {"secretKeyRef": {"name": POSTGRES, "key": "password"}}
    assert_hardened(pod_spec(deployment), container, 65532)
    service = one(objects, "Service", f"{RELEASE}-tunefleet-dashboard")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert find(scenario_objects("default"), "Deployment", f"{RELEASE}-tunefleet-dashboard") == []


def test_metrics_service_and_service_monitor_reach_the_controller(scenario_objects: Objects) -> None:
    objects = scenario_objects("service-monitor")
    pod_labels = controller_deployment(objects)["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service", f"{RELEASE}-tunefleet-metrics")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0] == {
        "name": "metrics",
        "port": 9090,
        "targetPort": "metrics",
        "protocol": "TCP",
    }
    monitor = one(objects, "ServiceMonitor", f"{RELEASE}-tunefleet-controller")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert find(scenario_objects("default"), "ServiceMonitor") == []


@pytest.mark.parametrize("scenario", ["default", "watch-namespaces"])
def test_uninstall_hook_releases_finalizers_before_the_controller_goes(
    scenario_objects: Objects, scenario: str
) -> None:
    objects = scenario_objects(scenario)
    job = one(objects, "Job", f"{RELEASE}-tunefleet-release-finalizers")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    container = only_container(job)
    expected_args = ["release-finalizers"]
    for namespace in SCENARIOS[scenario].get("watchNamespaces", []):
        expected_args += ["--namespace", namespace]
    assert container["args"] == expected_args
    controller = controller_deployment(objects)
    assert pod_spec(job)["serviceAccountName"] == pod_spec(controller)["serviceAccountName"]
    assert container["image"] == only_container(controller)["image"]
    assert_hardened(pod_spec(job), container, 65532)


def test_uninstall_hook_can_be_turned_off(render: Callable[..., list[Manifest]]) -> None:
    assert find(render({"uninstallHook": {"enabled": False}}), "Job") == []


def test_notes_give_next_steps(chart: helm_python.Chart) -> None:
    notes = next(
        text
        for name, text in render_templates(chart, {"dashboard": {"enabled": True}}).items()
        if name.endswith("NOTES.txt")
    )
    assert "kubectl get studies" in notes
    assert "examples/cluster-gpu-study.yaml" in notes
    assert "<study>-best" in notes and "status.bestTrial" in notes
    assert "port-forward svc/tf-tunefleet-dashboard" in notes


def test_image_tag_defaults_to_the_app_version(
    chart: helm_python.Chart, render: Callable[..., list[Manifest]]
) -> None:
    image = only_container(controller_deployment(render()))["image"]
    assert image == f"ghcr.io/tunefleet/tunefleet:{chart.metadata['appVersion']}"
    pinned = render({"image": {"tag": "1.2.3"}})
    assert only_container(controller_deployment(pinned))["image"].endswith(":1.2.3")
