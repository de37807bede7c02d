"""Running ``tunefleet controller`` against the emulator, and the Study objects tests apply."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy as sa

from controller.kube.crd import build_crds
from controller.kube.trial_access import ADDRESS_ENV, CA_FILE_ENV, TOKEN_KEYS_ENV
from tests.cluster.emulator import ApiError, KubeEmulator
from tests.support.chart_install import DB_SECRET, database_values, render_chart
from tests.support.gateway import RunningGateway

T = TypeVar("T")
VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "team-a"
DB_PASSWORD = "not-a-real-secret-7f3a"
STUDIES = "studies.tunefleet.dev"
NOT_INHERITED = ("TUNEFLEET_", "MLFLOW_TRACKING_")


# Short, so deleted trial pods go quickly; the budget reserves it as the pod's grace.
TRIAL_TERMINATION_GRACE_S = 2

def prepare_cluster(kube: KubeEmulator, namespace: str = NAMESPACE) -> None:
    kube.api.apply_crds(build_crds())
    kube.api.create_namespace(namespace)


def study_manifest(
    name: str = "quad",
    *,
    objective: str = "tests.cluster.objectives:quadratic",
    max_trials: int = 8,
    parallelism: int = 3,
    max_retries: int = 2,
    max_duration: str = "2m",
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "tunefleet.dev/v1alpha1",
        "kind": "Study",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
            "searchSpace": {"x": {"type": "float", "low": -10, "high": 10}},
            "strategy": {"sampler": "random", "pruner": "none", "seed": 7},
            "budget": {"maxTrials": max_trials},
            "parallelism": parallelism,
            "trial": {
                "python": objective,
                "image": "tunefleet-test:local",
                "cpus": 0.1,
                "maxDuration": max_duration,
                "maxRetries": max_retries,
                "template": {"spec": {"terminationGracePeriodSeconds": TRIAL_TERMINATION_GRACE_S}},
            },
        },
    }
    body["spec"].update(spec)
    return body


# The chart always runs the trial gateway, so the cluster tier does too; "0" runs it without (the
# transition path of controllers from before the gateway: a mirrored password in each namespace).
GATEWAY_SWITCH_ENV = "TUNEFLEET_TEST_GATEWAY"
_gateways: dict[int, RunningGateway] = {}


def gateway_by_default() -> bool:
    return os.environ.get(GATEWAY_SWITCH_ENV, "1") != "0"


def cluster_gateway(kube: KubeEmulator, storage_url: str, work_dir: Path) -> RunningGateway:
    """The emulated cluster's trial gateway (``tunefleet gateway``, a real process), started once
    per emulator: every controller of the test signs for it, and trial pods dial it on
    127.0.0.1. :func:`stop_gateways` ends them (the cluster conftest does, after each test).

    The process is launched, not awaited: :meth:`ControllerProcess.start` waits for it after
    launching the controller, so both start at once (about 2 s each, per test)."""
    gateway = _gateways.get(id(kube))
    if gateway is None or gateway.storage_url != storage_url:
        workdir = work_dir / f"gateway-{len(_gateways)}"
        workdir.mkdir(parents=True, exist_ok=True)
        gateway = RunningGateway(storage_url=storage_url, workdir=workdir)
        gateway.launch()
        _gateways[id(kube)] = gateway
    return gateway


def running_gateways() -> set[int]:
    return set(_gateways)


def stop_gateways(keep: set[int] | None = None) -> None:
    """Kill the emulators' gateways, but those in ``keep`` (a longer-lived fixture's): the test is
    over, so nothing waits for a graceful stop (a second per test)."""
    for key in [k for k in _gateways if k not in (keep or set())]:
        _gateways.pop(key).stop(hard=True)


def stop_gateway(kube: KubeEmulator) -> None:
    gateway = _gateways.pop(id(kube), None)
    if gateway is not None:
        gateway.stop()


def gateway_env(gateway: RunningGateway | None) -> dict[str, str]:
    """The controller's gateway settings, as the chart's mounted files would give them; without a
    gateway, the chart's address blanked out (the controller then mirrors the password)."""
    if gateway is None:
        return {ADDRESS_ENV: ""}
    return {ADDRESS_ENV: gateway.address, TOKEN_KEYS_ENV: str(gateway.key_file),
            CA_FILE_ENV: str(gateway.ca_file)}


class ControllerProcess:
    """``tunefleet controller`` as a child process, as the chart's Deployment would run it.

    The chart is rendered for the test's database (``externalDatabase``) and its objects the
    controller relies on are stored in the emulator (release namespace, ServiceAccount, RBAC,
    peering object, the database Secret); the process gets the Deployment's arguments and
    environment, and a token of the chart's controller ServiceAccount, so the emulator authorizes
    every request against the chart's RBAC. ``env`` goes in through the chart's
    ``controller.extraEnv``; ``"--peering", NAME`` renders the chart with two replicas;
    ``chart_values`` are merged over the rest. Output goes to ``log_path``. ``gateway`` (default:
    :func:`gateway_by_default`): trial pods go through the emulated cluster's trial gateway
    (:func:`cluster_gateway`), as with the chart; False: the mirrored password, as before it.
    """

    def __init__(
        self,
        kube: KubeEmulator,
        storage_url: str,
        work_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        name: str = "controller",
        health_port: int = 0,
        metrics_port: int = 0,
        chart_values: dict[str, Any] | None = None,
        gateway: bool | None = None,
    ) -> None:
        self.kube = kube
        use_gateway = gateway_by_default() if gateway is None else gateway
        self.gateway = cluster_gateway(kube, storage_url, work_dir) if use_gateway else None
        self.log_path = work_dir / f"{name}.log"
        self.kubeconfig_path = work_dir / f"{name}.kubeconfig"
        self.health_port = health_port or free_port()
        self.metrics_port = metrics_port or free_port()
        extra_env = {"TUNEFLEET_RESYNC_S": "2", **gateway_env(self.gateway), **(env or {})}
        values: dict[str, Any] = {
            **database_values(storage_url),
            "controller": {
                "healthPort": self.health_port,
                "metricsPort": self.metrics_port,
                "extraEnv": [{"name": k, "value": v} for k, v in extra_env.items()],
            },
        }
        if args:
            if list(args[:1]) != ["--peering"] or len(args) != 2:
                raise ValueError(f"the chart runs --standalone or --peering NAME, not {args}")
            values |= {"replicaCount": 2, "peering": {"name": args[1]}}
        self.chart = render_chart(values | (chart_values or {}))
        self.process: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        """What ``helm install`` would have created that the controller relies on (idempotent)."""
        api = self.kube.api
        with contextlib.suppress(ApiError):
            api.create_namespace(self.chart.namespace)
        objects = [
            *self.chart.service_accounts,
            *self.chart.rbac,
            *self.chart.of_kind("ClusterKopfPeering", "KopfPeering"),
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": DB_SECRET, "namespace": self.chart.namespace},
             "data": {"password": base64.b64encode(DB_PASSWORD.encode()).decode()}},
        ]
        for manifest in objects:  # created, or replaced as `helm upgrade` would
            resource, namespace = _resource_name(manifest), manifest["metadata"].get("namespace")
            try:
                api.create(resource, manifest, namespace)
            except ApiError as error:
                if error.code != 409:
                    raise
                rt = api.store.find_type(resource)
                api.store.replace(rt, namespace, manifest["metadata"]["name"], manifest)

    def environment(self) -> dict[str, str]:
        """The Deployment's env as the kubelet resolves it, plus what any local process needs."""
        namespace, account = self.chart.controller_service_account
        kubeconfig = self.kube.service_account_kubeconfig(namespace, account, self.kubeconfig_path)
        # A pod inherits nothing from the test process: no tunefleet setting, no MLflow login.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
        return {
            **inherited,
            **self.chart.controller_env({DB_SECRET: {"password": DB_PASSWORD}}),
            "KUBECONFIG": str(kubeconfig),
        }

    def start(self) -> ControllerProcess:
        self.install()
        env = self.environment()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "tunefleet"), *self.chart.controller_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(REPO_ROOT),
                start_new_session=True,
            )
        if self.gateway is not None:
            self.gateway.wait_ready()
        return self

    def kill(self) -> None:
        """SIGKILL: the controller dies mid-whatever, as on a node loss."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _resource_name(manifest: dict[str, Any]) -> str:
    """``kubectl``'s name for the manifest's resource, e.g. ``clusterroles.rbac.authorization.k8s.io``."""
    group = manifest["apiVersion"].rpartition("/")[0]
    plural = {"ServiceAccount": "serviceaccounts", "Secret": "secrets", "Role": "roles",
              "ClusterRole": "clusterroles", "RoleBinding": "rolebindings",
              "ClusterRoleBinding": "clusterrolebindings", "ClusterKopfPeering": "clusterkopfpeerings",
              "KopfPeering": "kopfpeerings"}[manifest["kind"]]
    return f"{plural}.{group}" if group else plural


_handed_out: set[int] = set()


def free_port() -> int:
    """A free port never handed out before in this process: controllers started together each get
    their own health and metrics ports, though none is bound until its process starts."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.2,
) -> T:
    """``message`` may be a callable, so what it shows (logs, states) is taken at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.0f} s: {text}")
        time.sleep(interval)


def cluster_snapshot(kube: KubeEmulator, storage_url: str, name: str, log_tail: int = 1500) -> str:
    """What a failed wait needs to be understood: the Study's status, every trial, every trial
    pod's phase and the tail of its log."""
    lines = [f"status: {study_status(kube, name)}"]
    try:
        for trial in load_trials(storage_url, name):
            lines.append(f"trial {trial.number}: {trial.state.name} {trial.user_attrs}")
    except Exception as exc:  # noqa: BLE001 - the database may be the thing that broke
        lines.append(f"trials unreadable: {exc!r}")
    for pod in trial_pods(kube, name):
        pod_name = pod["metadata"]["name"]
        lines.append(f"pod {pod_name}: {(pod.get('status') or {}).get('phase')}")
        log = kube.runner.log_path(NAMESPACE, pod_name)  # the kubelet's own record of it
        if log is not None and log.exists():
            lines.append(log.read_text(errors="replace")[-log_tail:])
    return "\n".join(lines)


def study_status(kube: KubeEmulator, name: str) -> dict[str, Any]:
    study = kube.api.find(STUDIES, NAMESPACE, name)
    return (study or {}).get("status") or {}


def condition(kube: KubeEmulator, name: str, kind: str) -> dict[str, Any] | None:
    for item in study_status(kube, name).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return None


def trial_jobs(kube: KubeEmulator, name: str) -> list[dict[str, Any]]:
    return kube.api.list("jobs.batch", NAMESPACE, label_selector=f"tunefleet.dev/study={name}")


def trial_pods(kube: KubeEmulator, name: str) -> list[dict[str, Any]]:
    return kube.api.list("pods", NAMESPACE, label_selector=f"tunefleet.dev/study={name}")


def running_pod(kube: KubeEmulator, name: str) -> dict[str, Any] | None:
    for pod in trial_pods(kube, name):
        if (pod.get("status") or {}).get("phase") == "Running" and not pod["metadata"].get(
            "deletionTimestamp"
        ):
            return pod
    return None


_engines: dict[str, sa.engine.Engine] = {}


def optuna_key(storage_url: str, name: str) -> str:
    """The Optuna study (and ledger key) of the Study ``name``: ``team-a/<name>/<uid>``, of the
    object applied last if there were several; ``team-a/<name>`` while none exists yet."""
    engine = _engines.get(storage_url)
    if engine is None:
        engine = _engines[storage_url] = sa.create_engine(storage_url, poolclass=sa.pool.NullPool)
    prefix = f"{NAMESPACE}/{name}"
    query = sa.text(
        "SELECT study_name FROM studies WHERE study_name = :name OR study_name LIKE :prefix "
        "ORDER BY study_id DESC"
    )
    try:
        with engine.connect() as connection:
            found = connection.execute(query, {"name": prefix, "prefix": prefix + "/%"}).first()
    except sa.exc.DatabaseError:
        return prefix  # no Optuna tables yet
    return str(found[0]) if found is not None else prefix


def load_trials(storage_url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=optuna_key(storage_url, name), storage=storage_url)
    return study.get_trials(deepcopy=False)


def finished(kube: KubeEmulator, name: str) -> bool:
    return study_status(kube, name).get("phase") in ("Succeeded", "Failed")


def with_sleep(body: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The trial container sleeps this long in the objective (env through trial.template)."""
    body["spec"]["trial"]["template"]["spec"]["containers"] = [
        {"name": "trial", "env": [{"name": "TUNEFLEET_TEST_SLEEP", "value": str(seconds)}]}
    ]
    return body


def trial_state(storage_url: str, name: str, number: int) -> str | None:
    for trial in load_trials(storage_url, name):
        if trial.number == number:
            return trial.state.name
    return None
