"""What the chart runs: the controller, PostgreSQL or an external database, the dashboard, metrics,
the network policy and the uninstall hook."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import helm_python
import pytest
import yaml

from tests.chart.chart_support import (
    RELEASE,
    RELEASE_NAMESPACE,
    SCENARIOS,
    Manifest,
    controller_deployment,
    env_of,
    find,
    one,
    only_container,
    pod_spec,
    render_objects,
    render_templates,
)

pytestmark = pytest.mark.chart

Objects = Callable[[str], list[Manifest]]
POSTGRES = f"{RELEASE}-tunefleet-postgresql"
BUNDLED_URL = (
    f"postgresql://tunefleet@{POSTGRES}.{RELEASE_NAMESPACE}.svc.cluster.local:5432/tunefleet?sslmode=disable"
)


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


class _OneSecretApiServer(BaseHTTPRequestHandler):
    """Just enough of the Kubernetes API for Helm's `lookup` of one live Secret."""

    secret: ClassVar[Manifest] = {}

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        name = self.secret["metadata"]["name"]
        body: Manifest
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
        elif path == f"/api/v1/namespaces/{RELEASE_NAMESPACE}/secrets/{name}":
            body = self.secret
        else:
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "NotFound",
                "code": 404,
            }
        payload = json.dumps(body).encode()
        self.send_response(404 if body["kind"] == "Status" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api_server_with_db_secret() -> Iterator[str]:
    live_password = base64.b64encode(b"password-from-the-first-install").decode()
    _OneSecretApiServer.secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": POSTGRES, "namespace": RELEASE_NAMESPACE},
        "data": {"password": live_password},
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OneSecretApiServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_upgrade_reuses_the_live_password(chart: helm_python.Chart, api_server_with_db_secret: str) -> None:
    """Helm's `lookup` finds the Secret of the first install, so an upgrade keeps the database
    reachable instead of rotating the password under PostgreSQL's feet."""
    with helm_python.Config(
        kube_apiserver=api_server_with_db_secret, kube_token="test", namespace=RELEASE_NAMESPACE
    ) as config:
        rendered = config.render(chart, name=RELEASE, namespace=RELEASE_NAMESPACE, is_upgrade=True)
    secret = one(
        [doc for doc in yaml.safe_load_all(rendered["tunefleet/templates/postgresql.yaml"]) if doc],
        "Secret",
        POSTGRES,
    )
    assert secret["data"]["password"] == _OneSecretApiServer.secret["data"]["password"]


def test_external_database_replaces_the_bundled_one(scenario_objects: Objects) -> None:
    objects = scenario_objects("external-database")
    assert find(objects, "StatefulSet") == [] and find(objects, "Secret") == []
    assert find(objects, "NetworkPolicy") == []
    env = env_of(only_container(controller_deployment(objects)))
    assert env["TUNEFLEET_STORAGE_URL"] == (
        "postgresql://hpo_user@pg.example.com:6432/hpo?sslmode=verify-full"
    )
    assert env["TUNEFLEET_DB_PASSWORD"] == {"secretKeyRef": {"name": "hpo-db", "key": "pw"}}
    assert env["TUNEFLEET_DB_SECRET"] == "hpo-db"


def test_network_policy_admits_only_tunefleet_and_trial_pods_to_postgresql(
    scenario_objects: Objects,
) -> None:
    policy = one(scenario_objects("dashboard"), "NetworkPolicy", POSTGRES)
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == ("postgresql")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]
    components = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in rule["from"]
        if "matchLabels" in peer.get("podSelector", {})
    }
    assert components == {"controller", "dashboard", "uninstall-hook"}
    trial_peers = [peer for peer in rule["from"] if "namespaceSelector" in peer]
    assert trial_peers == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchExpressions": [{"key": "tunefleet.dev/study", "operator": "Exists"}]},
        }
    ]
    default_policy = one(scenario_objects("default"), "NetworkPolicy", POSTGRES)
    assert "dashboard" not in str(default_policy)


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
    monitor = one(objects, "ServiceMonitor")
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
