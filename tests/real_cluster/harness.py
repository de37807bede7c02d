"""The real-cluster harness: tunefleet as its chart installs it, with the controller as a local process.

No container runtime is needed: the chart is rendered offline (helm-python-sdk, as in the chart
tier) and the objects that need no image are applied to the cluster (CRDs, the release namespace,
RBAC, ServiceAccounts); the database is a throwaway PostgreSQL on this machine whose role must
present its password; the Secret the chart's ``externalDatabase.existingSecret`` names holds it.
``tunefleet controller`` then runs here with exactly the arguments and environment the chart's
Deployment gives it (the database URL included), authenticated as the chart's controller
ServiceAccount with a token from the TokenRequest API, so the API server enforces the chart's RBAC.
Trial pods need a node that runs them where the database is reachable: on these machines the
process kubelet of ``shared/realcluster`` (see docs/real-cluster.md).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

from controller.kube.trial_access import ADDRESS_ENV, CA_FILE_ENV, TOKEN_KEYS_ENV
from tests.support.chart_install import DB_SECRET, ChartInstall, database_values, render_chart
from tests.support.gateway import RunningGateway
from tests.support.kubeconfig import service_account_kubeconfig
from tests.support.postgres import PostgresServer

VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_WAIT_S = 60.0
READY_WAIT_S = 120.0


def kubeconfig_path() -> Path:
    """The kubeconfig the tier runs against: ``$KUBECONFIG`` (its first file) or ~/.kube/config."""
    configured = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return Path(configured or Path.home() / ".kube" / "config")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- applying what the chart renders -------------------------------------------------------------


def apply(dynamic: DynamicClient, manifest: dict[str, Any]) -> None:
    """Create the object, or replace it when it exists (``kubectl apply`` without the merge)."""
    resource = dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    namespace = manifest["metadata"].get("namespace")
    try:
        resource.create(body=manifest, namespace=namespace)
    except ConflictError:
        current = resource.get(name=manifest["metadata"]["name"], namespace=namespace)
        body = {**manifest, "metadata": {**manifest["metadata"],
                                         "resourceVersion": current.metadata.resourceVersion}}
        resource.replace(body=body, namespace=namespace)


def delete(dynamic: DynamicClient, manifest: dict[str, Any]) -> None:
    resource = dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    with contextlib.suppress(NotFoundError):
        resource.delete(name=manifest["metadata"]["name"], namespace=manifest["metadata"].get("namespace"))


def wait_established(dynamic: DynamicClient, crds: list[dict[str, Any]]) -> None:
    resource = dynamic.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    deadline = time.monotonic() + CRD_WAIT_S
    for crd in crds:
        while True:
            status = resource.get(name=crd["metadata"]["name"]).to_dict().get("status") or {}
            conditions = status.get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {crd['metadata']['name']} not Established in {CRD_WAIT_S:.0f} s")
            time.sleep(0.5)


# -- the database ----------------------------------------------------------------------------------


@dataclass
class Database:
    """The role and database the chart's ``externalDatabase`` values point at."""

    server: PostgresServer
    role: str
    password: str
    name: str

    @classmethod
    def create(cls, server: PostgresServer) -> Database:
        role = f"tunefleet_{uuid.uuid4().hex[:8]}"
        password = "pw-" + secrets.token_urlsafe(12) + "@/:%"  # characters a URL must escape
        server.create_login(role, password)
        name = server.create_database(owner=role).rsplit("/", 1)[1]
        return cls(server, role, password, name)

    @property
    def url(self) -> str:
        """Without the password: the role's URL, as the chart's values describe it."""
        return f"postgresql+psycopg2://{self.role}@{self.server.host}:{self.server.port}/{self.name}"

    @property
    def admin_url(self) -> str:
        """The admin's URL of the same database, for assertions that read the study."""
        return self.server.url(self.name)


# -- the controller process -----------------------------------------------------------------------


@dataclass
class LocalController:
    """``tunefleet controller`` as the chart's Deployment would run it, as a local process.

    ``start``/``stop`` (SIGTERM)/``kill`` (SIGKILL, as on a node loss)/``restart``; ``ready()``
    polls ``/readyz`` like the Deployment's readiness probe. Output goes to ``log_path``.
    """

    args: list[str]
    environment: Callable[[], dict[str, str]]  # read at each start, as a new pod reads its Secrets
    log_path: Path
    health_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> LocalController:
        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [str(VENV_BIN / "tunefleet"), *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=self.environment(), cwd=str(REPO_ROOT),
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> LocalController:
        self.stop()
        return self.start()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = READY_WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.running:
                raise AssertionError(f"the controller exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"/readyz not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


# -- the install -------------------------------------------------------------------------------


@dataclass
class TunefleetInstall:
    """tunefleet on the cluster: applied chart objects, the database, and the controller."""

    api_client: kubernetes.client.ApiClient
    chart: ChartInstall
    database: Database
    controller: LocalController
    work_dir: Path
    gateway: RunningGateway

    @property
    def namespace(self) -> str:
        return self.chart.namespace

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api_client)

    def db_secret(self) -> dict[str, str]:
        return _secret_data(self.core, self.namespace, DB_SECRET)

    def rotate_password(self, new_password: str) -> None:
        """What a platform team does: change the role's password, then the Secret the chart names."""
        self.database.server.set_password(self.database.role, new_password)
        self.database.password = new_password
        patch = {"stringData": {"password": new_password}}
        self.core.patch_namespaced_secret(DB_SECRET, self.namespace, patch)

    def uninstall(self) -> None:
        """Stop the controller, release trial pod finalizers (the chart's pre-delete hook), and
        delete the cluster-wide RBAC and the release namespace. CRDs stay, as the chart keeps them."""
        from controller.kube.client import KubeApi
        from controller.kube.release_finalizers import release_all

        self.controller.stop()
        self.gateway.stop()
        with contextlib.suppress(ApiException):
            release_all(kube=KubeApi(self.api_client))
        dynamic = DynamicClient(self.api_client)
        for manifest in self.chart.of_kind("ClusterRoleBinding", "ClusterRole"):
            delete(dynamic, manifest)
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(self.namespace)


def install(
    api_client: kubernetes.client.ApiClient,
    admin_kubeconfig: Path,
    server: PostgresServer,
    work_dir: Path,
    extra_values: dict[str, Any] | None = None,
) -> TunefleetInstall:
    """Apply the chart's objects, create the database and its Secret, start the controller."""
    database = Database.create(server)
    health_port, metrics_port = free_port(), free_port()
    values: dict[str, Any] = {
        **database_values(database.url),
        "controller": {"healthPort": health_port, "metricsPort": metrics_port, "logFormat": "json"},
        **(extra_values or {}),
    }
    chart = render_chart(values)
    dynamic = DynamicClient(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    with contextlib.suppress(ApiException):
        core.create_namespace({"metadata": {"name": chart.namespace}})
    for manifest in chart.crds:
        apply(dynamic, manifest)
    wait_established(dynamic, chart.crds)
    for manifest in [*chart.service_accounts, *chart.rbac]:
        apply(dynamic, manifest)
    apply(dynamic, {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": DB_SECRET, "namespace": chart.namespace},
        "stringData": {"password": database.password},
    })

    # The chart's gateway Deployment, as a local process: trial pods of the process kubelet dial
    # it on 127.0.0.1, so its certificate names that address, not the chart's Service.
    gateway_dir = work_dir / "gateway"
    gateway_dir.mkdir(exist_ok=True)
    gateway = RunningGateway(storage_url=database.url, workdir=gateway_dir, password=database.password)
    gateway.start()
    gateway_env = {ADDRESS_ENV: gateway.address, TOKEN_KEYS_ENV: str(gateway.key_file),
                   CA_FILE_ENV: str(gateway.ca_file)}

    account_namespace, account = chart.controller_service_account
    kubeconfig = service_account_kubeconfig(
        api_client, admin_kubeconfig, account_namespace, account, work_dir / "controller.kubeconfig"
    )

    def environment() -> dict[str, str]:
        return {
            # What any process needs here; in the pod the image sets these.
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(work_dir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            # What the chart's Deployment sets, Secrets (as they are now) and fields resolved as
            # the kubelet resolves them when it starts the pod.
            **chart.controller_env({DB_SECRET: _secret_data(core, chart.namespace, DB_SECRET)}),
            **gateway_env,  # the chart's mounted key and CA files are the local gateway's
            # In a pod the ServiceAccount's token is mounted; here it comes through a kubeconfig.
            "KUBECONFIG": str(kubeconfig),
        }

    controller = LocalController(chart.controller_args, environment, work_dir / "controller.log", health_port)
    return TunefleetInstall(api_client, chart, database, controller, work_dir, gateway)


def _secret_data(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    secret = core.read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
