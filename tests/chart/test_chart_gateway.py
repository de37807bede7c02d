"""The trial gateway the chart runs: hardened like the controller, reachable as `tunefleet-gateway`
over TLS it verifies, the only door trial pods have to their study, and the controller wired to
sign their tokens.

The rendered env and Secret volumes are resolved as the kubelet would (files under tmp_path), then
handed to the code that reads them: the gateway's settings, the controller's, and `tunefleet render`.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from controller.gateway.settings import GatewaySettings
from controller.gateway.tokens import TokenClaims, TokenKeys
from controller.kube.trial_access import gateway_secret_name
from tests.chart.chart_support import (
    GATEWAY,
    GATEWAY_DNS_NAMES,
    GATEWAY_KEYS_SECRET,
    GATEWAY_SERVICE,
    GATEWAY_TLS_SECRET,
    RELEASE,
    RELEASE_NAMESPACE,
    TRIAL_SECRET,
    Manifest,
    assert_hardened,
    controller_deployment,
    env_of,
    find,
    gateway_deployment,
    ingress_admits,
    one,
    only_container,
    pod_spec,
    render_upgrade,
    resolve_env,
)

pytestmark = pytest.mark.chart

Objects = Callable[[str], list[Manifest]]
Render = Callable[..., list[Manifest]]
POSTGRES = f"{RELEASE}-tunefleet-postgresql"
ADDRESS = f"{GATEWAY_SERVICE}.{RELEASE_NAMESPACE}.svc:7443"
DB_PASSWORD = "s3cret-of-the-database"


def component_labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tunefleet",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": component,
    }


def secret_data(objects: list[Manifest], name: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in one(objects, "Secret", name)["data"].items()}


def projected_sources(workload: Manifest) -> dict[str, list[str]]:
    """Secret name -> the keys a workload's projected volumes mount from it."""
    found: dict[str, list[str]] = {}
    for volume in pod_spec(workload).get("volumes", []):
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                found.setdefault(source["secret"]["name"], []).extend(
                    i["key"] for i in source["secret"]["items"]
                )
    return found


# -- the Deployment, its Service, PDB and metrics -----------------------------------------------


def test_gateway_runs_the_controller_image_hardened_like_the_controller(scenario_objects: Objects) -> None:
    objects = scenario_objects("default")
    deployment, controller = gateway_deployment(objects), controller_deployment(objects)
    container = only_container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert container["args"] == ["gateway"] and "command" not in container
    assert container["image"] == only_container(controller)["image"]
    assert_hardened(pod_spec(deployment), container, 65532)
    assert pod_spec(deployment)["securityContext"] == pod_spec(controller)["securityContext"]
    assert container["securityContext"] == only_container(controller)["securityContext"]
    assert pod_spec(deployment)["automountServiceAccountToken"] is False  # never talks to the API
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": 7443, "http": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    (spread,) = pod_spec(deployment)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"  # a preference: one node still runs both
    assert (
        spread["labelSelector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_gateway_env_reads_the_database_like_the_controller_and_bounds_its_pool(
    scenario_objects: Objects, render: Render
) -> None:
    objects = scenario_objects("default")
    env = env_of(only_container(gateway_deployment(objects)))
    controller_env = env_of(only_container(controller_deployment(objects)))
    for name in ("TUNEFLEET_STORAGE_URL", "TUNEFLEET_DB_PASSWORD"):
        assert env[name] == controller_env[name]
    assert env["TUNEFLEET_GATEWAY_POOL_SIZE"] == "20"
    assert env["TUNEFLEET_GATEWAY_MAX_IN_FLIGHT"] == "64"
    assert env["TUNEFLEET_GATEWAY_MAX_STREAMS"] == "4096"
    assert env["TUNEFLEET_GATEWAY_LISTEN"] == "0.0.0.0:7443"
    assert env["TUNEFLEET_GATEWAY_HTTP_PORT"] == "8080"
    tuned = render({"gateway": {"poolSize": 8, "maxInFlight": 100, "maxStreams": 500, "replicaCount": 3}})
    tuned_env = env_of(only_container(gateway_deployment(tuned)))
    assert (tuned_env["TUNEFLEET_GATEWAY_POOL_SIZE"], tuned_env["TUNEFLEET_GATEWAY_MAX_IN_FLIGHT"]) == (
        "8",
        "100",
    )
    assert tuned_env["TUNEFLEET_GATEWAY_MAX_STREAMS"] == "500"
    assert gateway_deployment(tuned)["spec"]["replicas"] == 3


def test_the_gateway_accepts_the_env_and_files_the_chart_gives_it(
    scenario_objects: Objects, tmp_path: Path
) -> None:
    objects = scenario_objects("default")
    deployment = gateway_deployment(objects)
    (mount,) = [m for m in only_container(deployment)["volumeMounts"] if m["mountPath"] != "/tmp"]
    assert mount["readOnly"] is True
    env = resolve_env(deployment, objects, tmp_path, secrets={POSTGRES: DB_PASSWORD})
    settings = GatewaySettings.from_env(env)
    assert (settings.pool_size, settings.max_in_flight, settings.db_password) == (20, 64, DB_PASSWORD)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.tls_cert, settings.tls_key)
    # A token the controller signs with the keys it is given verifies with the gateway's.
    controller_env = resolve_env(
        controller_deployment(objects), objects, tmp_path / "controller", secrets={POSTGRES: DB_PASSWORD}
    )
    claims = TokenClaims(namespace="team-a", study="team-a/s/uid", trial=0, expires=2_000_000_000)
    token = TokenKeys.from_file(controller_env["TUNEFLEET_GATEWAY_TOKEN_KEYS"]).mint(claims)
    assert TokenKeys.from_file(settings.token_keys).verify(token, now=1_900_000_000) == claims
    assert projected_sources(deployment) == {
        GATEWAY_TLS_SECRET: ["tls.crt", "tls.key"],
        GATEWAY_KEYS_SECRET: ["keys"],
    }


def test_service_is_tunefleet_gateway_with_grpc_and_http(scenario_objects: Objects) -> None:
    objects = scenario_objects("default")
    service = one(objects, "Service", GATEWAY_SERVICE)
    assert service["metadata"]["namespace"] == RELEASE_NAMESPACE
    pod_labels = gateway_deployment(objects)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"grpc": (7443, "grpc"), "http": (8080, "http")}


def test_a_disruption_budget_keeps_one_replica_serving(scenario_objects: Objects, render: Render) -> None:
    objects = scenario_objects("default")
    budget = one(objects, "PodDisruptionBudget", GATEWAY)
    assert budget["spec"]["minAvailable"] == 1
    pod_labels = gateway_deployment(objects)["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # One replica: a budget of one would block every node drain, so there is none.
    assert find(render({"gateway": {"replicaCount": 1}}), "PodDisruptionBudget") == []


def test_gateway_metrics_are_scraped_like_the_controllers(scenario_objects: Objects) -> None:
    objects = scenario_objects("service-monitor")
    service = one(objects, "Service", GATEWAY_SERVICE)
    monitor = one(objects, "ServiceMonitor", GATEWAY)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    controller_monitor = one(objects, "ServiceMonitor", f"{RELEASE}-tunefleet-controller")
    assert (
        not controller_monitor["spec"]["selector"]["matchLabels"].items()
        <= service["metadata"]["labels"].items()
    )
    assert find(scenario_objects("default"), "ServiceMonitor") == []


# -- TLS and the token keys ---------------------------------------------------------------------


def _handshake(cert: Path, key: Path, ca: Path, server_name: str) -> None:
    """A TLS handshake in memory: the gateway's certificate, verified by a client that trusts ``ca``
    and expects ``server_name``, as the trial worker does."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(ca))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_end = server.wrap_bio(to_server, to_client, server_side=True)
    client_end = client.wrap_bio(to_client, to_server, server_hostname=server_name)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client_end), ("server", server_end)):
            if done[name]:
                continue
            try:
                end.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


@pytest.mark.parametrize("server_name", [*GATEWAY_DNS_NAMES, ADDRESS.rsplit(":", 1)[0]])
def test_generated_certificate_is_verified_under_every_service_name(
    scenario_objects: Objects, tmp_path: Path, server_name: str
) -> None:
    data = secret_data(scenario_objects("default"), GATEWAY_TLS_SECRET)
    for name, content in data.items():
        (tmp_path / name).write_bytes(content)
    _handshake(tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt", server_name)


def test_generated_certificate_is_refused_under_another_name(
    scenario_objects: Objects, tmp_path: Path
) -> None:
    data = secret_data(scenario_objects("default"), GATEWAY_TLS_SECRET)
    for name, content in data.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt", "postgres.example.com")


def test_generated_certificate_is_a_server_certificate_signed_by_the_ca(scenario_objects: Objects) -> None:
    secret = one(scenario_objects("default"), "Secret", GATEWAY_TLS_SECRET)
    assert secret["type"] == "kubernetes.io/tls"
    data = secret_data(scenario_objects("default"), GATEWAY_TLS_SECRET)
    cert, ca = x509.load_pem_x509_certificate(data["tls.crt"]), x509.load_pem_x509_certificate(data["ca.crt"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == GATEWAY_DNS_NAMES
    assert cert.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    public_key = ca.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    if isinstance(public_key, rsa.RSAPublicKey):
        assert cert.signature_hash_algorithm is not None
        public_key.verify(
            cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm
        )


def test_token_key_is_random_and_loads_as_the_controller_and_gateway_read_it(
    chart: helm_python.Chart, render: Render, tmp_path: Path
) -> None:
    first, second = (secret_data(render(), GATEWAY_KEYS_SECRET)["keys"] for _ in range(2))
    assert first != second
    (key,) = first.decode().splitlines()
    assert len(key) == 48 and key.isalnum()
    (tmp_path / "keys").write_bytes(first)
    TokenKeys.from_file(tmp_path / "keys")


def test_upgrade_keeps_the_certificate_and_the_token_keys(chart: helm_python.Chart, render: Render) -> None:
    """Running trials keep a valid token and a CA that still verifies the gateway; key lines added
    by hand for a rotation survive too."""
    first = render()
    live_tls = one(first, "Secret", GATEWAY_TLS_SECRET)
    live_keys = one(first, "Secret", GATEWAY_KEYS_SECRET)
    rotated = base64.b64decode(live_keys["data"]["keys"]) + b"N" * 40 + b"\n"
    live_keys = {**live_keys, "data": {"keys": base64.b64encode(rotated).decode()}}
    upgraded = render_upgrade(chart, [live_tls, live_keys])
    assert one(upgraded, "Secret", GATEWAY_TLS_SECRET)["data"] == live_tls["data"]
    assert one(upgraded, "Secret", GATEWAY_KEYS_SECRET)["data"] == live_keys["data"]


def test_cert_manager_issues_the_certificate_instead(scenario_objects: Objects) -> None:
    objects = scenario_objects("gateway-cert-manager")
    certificate = one(objects, "Certificate", GATEWAY_TLS_SECRET)
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["spec"]["secretName"] == GATEWAY_TLS_SECRET  # the Secret the pods mount
    assert certificate["spec"]["dnsNames"] == GATEWAY_DNS_NAMES
    assert certificate["spec"]["issuerRef"] == {
        "name": "ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert "server auth" in certificate["spec"]["usages"]
    assert find(objects, "Secret", GATEWAY_TLS_SECRET) == []  # nothing generated
    assert one(objects, "Secret", GATEWAY_KEYS_SECRET)
    assert projected_sources(gateway_deployment(objects))[GATEWAY_TLS_SECRET] == ["tls.crt", "tls.key"]
    assert projected_sources(controller_deployment(objects))[GATEWAY_TLS_SECRET] == ["ca.crt"]
    assert find(scenario_objects("default"), "Certificate") == []


def test_token_keys_from_an_existing_secret(render: Render) -> None:
    objects = render({"gateway": {"tokenKeys": {"existingSecret": "team-keys", "existingSecretKey": "k"}}})
    assert find(objects, "Secret", GATEWAY_KEYS_SECRET) == []
    for workload in (gateway_deployment(objects), controller_deployment(objects)):
        assert projected_sources(workload)["team-keys"] == ["k"]


# -- the controller: signs tokens, hands out the CA, gives trial pods no password ---------------


def test_only_the_controller_and_the_gateway_mount_the_token_keys(scenario_objects: Objects) -> None:
    objects = scenario_objects("dashboard")
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]
    mounting = {w["metadata"]["name"] for w in workloads if GATEWAY_KEYS_SECRET in projected_sources(w)}
    assert mounting == {GATEWAY, f"{RELEASE}-tunefleet-controller"}
    holding_server_key = {
        w["metadata"]["name"]
        for w in workloads
        if "tls.key" in projected_sources(w).get(GATEWAY_TLS_SECRET, [])
    }
    assert holding_server_key == {GATEWAY}


def test_controller_is_told_where_the_gateway_is(scenario_objects: Objects, tmp_path: Path) -> None:
    objects = scenario_objects("default")
    controller = controller_deployment(objects)
    env = env_of(only_container(controller))
    assert env["TUNEFLEET_GATEWAY_ADDRESS"] == ADDRESS
    assert projected_sources(controller) == {GATEWAY_TLS_SECRET: ["ca.crt"], GATEWAY_KEYS_SECRET: ["keys"]}
    files = resolve_env(controller, objects, tmp_path, secrets={POSTGRES: DB_PASSWORD})
    ca = Path(files["TUNEFLEET_GATEWAY_CA_FILE"]).read_bytes()
    assert ca == secret_data(objects, GATEWAY_TLS_SECRET)["ca.crt"]
    assert (
        Path(files["TUNEFLEET_GATEWAY_TOKEN_KEYS"]).read_bytes()
        == secret_data(objects, GATEWAY_KEYS_SECRET)["keys"]
    )


def test_with_the_chart_env_trial_pods_get_a_token_and_no_password(
    scenario_objects: Objects, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the controller creates for a trial, from the env and files the chart gives it."""
    from controller.kube.commands import render_objects
    from controller.spec import load_study_file
    from tests.chart.chart_support import REPO_ROOT

    objects = scenario_objects("default")
    env = resolve_env(controller_deployment(objects), objects, tmp_path, secrets={POSTGRES: DB_PASSWORD})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    study = load_study_file(REPO_ROOT / "examples" / "cluster-gpu-study.yaml")
    created = render_objects(study, "team-a", 0, env["TUNEFLEET_STORAGE_URL"], include_namespace_objects=True)
    text = json.dumps(created)
    assert DB_PASSWORD not in text and "TUNEFLEET_DB_PASSWORD" not in text and POSTGRES not in text
    assert find(created, "Secret", TRIAL_SECRET) == []
    assert f"tunefleet-gateway://{ADDRESS}" in text
    (job,) = find(created, "Job")
    (gateway_secret,) = [o for o in created if o["kind"] == "Secret"]
    meta = job["metadata"]
    assert gateway_secret["metadata"]["name"] == gateway_secret_name(meta["name"], meta["labels"])
    secret_refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for container in pod_spec(job)["containers"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secret_refs == {
        "TUNEFLEET_GATEWAY_TOKEN": {"name": gateway_secret["metadata"]["name"], "key": "token"},
        "TUNEFLEET_GATEWAY_CA": {"name": gateway_secret["metadata"]["name"], "key": "ca.crt"},
    }
    handed_out = base64.b64decode(gateway_secret["data"]["ca.crt"])
    assert handed_out == secret_data(objects, GATEWAY_TLS_SECRET)["ca.crt"]  # verifies the gateway


# -- the network: trial pods reach the gateway, and only the gateway ----------------------------


TRIAL_POD = {"tunefleet.dev/study": "quickstart", "tunefleet.dev/trial": "3"}
EXPORT_POD = {"tunefleet.dev/export": "quickstart"}


def _policies(objects: list[Manifest]) -> list[Manifest]:
    return find(objects, "NetworkPolicy")


@pytest.mark.parametrize("scenario", ["default", "dashboard"])
def test_trial_pods_reach_the_gateway_and_not_the_database(scenario_objects: Objects, scenario: str) -> None:
    policies = _policies(scenario_objects(scenario))
    gateway, postgres = component_labels("gateway"), component_labels("postgresql")
    for labels in (TRIAL_POD, EXPORT_POD):
        assert ingress_admits(policies, gateway, "team-a", labels, 7443)
        assert not ingress_admits(policies, gateway, "team-a", labels, 8080)
        assert not ingress_admits(policies, postgres, "team-a", labels, 5432)
    # Labels anyone can set: a trial template claiming to be the controller is still refused.
    for impostor in (component_labels("controller"), {**TRIAL_POD, **component_labels("gateway")}):
        assert not ingress_admits(policies, postgres, "team-a", impostor, 5432)
    # Neither does an unlabelled pod reach the gateway's gRPC port.
    assert not ingress_admits(policies, gateway, "team-a", {"app": "curious"}, 7443)


@pytest.mark.parametrize("scenario", ["default", "dashboard"])
def test_the_password_holders_reach_the_database(scenario_objects: Objects, scenario: str) -> None:
    policies = _policies(scenario_objects(scenario))
    holders = ["controller", "gateway", "uninstall-hook"] + (["dashboard"] if scenario == "dashboard" else [])
    for component in holders:
        assert ingress_admits(
            policies, component_labels("postgresql"), RELEASE_NAMESPACE, component_labels(component), 5432
        )
    if scenario == "default":
        assert not ingress_admits(
            policies, component_labels("postgresql"), RELEASE_NAMESPACE, component_labels("dashboard"), 5432
        )


def test_gateway_probes_and_metrics_from_the_release_namespace_and_named_scrapers(
    scenario_objects: Objects, render: Render
) -> None:
    gateway = component_labels("gateway")
    policies = _policies(scenario_objects("default"))
    assert ingress_admits(policies, gateway, RELEASE_NAMESPACE, {"app": "anything"}, 8080)
    assert not ingress_admits(policies, gateway, "monitoring", {"app": "prometheus"}, 8080)
    scraper: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    opened = _policies(render({"networkPolicy": {"gatewayMetricsFrom": [scraper]}}))
    assert ingress_admits(opened, gateway, "monitoring", {"app": "prometheus"}, 8080)
    assert not ingress_admits(opened, gateway, "monitoring", {"app": "prometheus"}, 7443)


def test_gateway_policy_stays_with_an_external_database(scenario_objects: Objects, render: Render) -> None:
    assert [p["metadata"]["name"] for p in _policies(scenario_objects("external-database"))] == [GATEWAY]
    assert _policies(render({"networkPolicy": {"enabled": False}})) == []
