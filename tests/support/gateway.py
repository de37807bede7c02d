"""A real trial gateway for tests: ``tunefleet gateway`` in a subprocess, with a throwaway CA.

A subprocess, so that ``restart()`` is a real restart (the process killed, a new one on the same
port) and the gateway's log is the one an operator would read.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.gateway.tokens import TokenClaims, TokenKeys
from trial_worker.contract import DB_PASSWORD_ENV, GATEWAY_CA_ENV, GATEWAY_TOKEN_ENV
from trial_worker.gateway import DEFAULT_RETRY_BUDGET_S, GatewayStorage

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Certificates:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def make_certificates(
    names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)
) -> Certificates:
    """A CA and a server certificate it signed, for ``names`` and ``ips`` (valid one day)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tunefleet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Certificates(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_key_file(path: Path, count: int = 1) -> Path:
    path.write_text(
        "# tunefleet gateway token keys: the first signs, every one verifies\n"
        + "".join(secrets.token_urlsafe(36) + "\n" for _ in range(count))
    )
    return path


@dataclass
class RunningGateway:
    """One ``tunefleet gateway`` process and what a client needs to reach it."""

    storage_url: str
    workdir: Path
    password: str | None = None
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        certificates = make_certificates()
        self.ca_pem = certificates.ca_pem.decode()
        self.cert_file = self.workdir / "gateway.crt"
        self.key_pem_file = self.workdir / "gateway.key"
        self.ca_file = self.workdir / "ca.crt"
        self.cert_file.write_bytes(certificates.cert_pem)
        self.key_pem_file.write_bytes(certificates.key_pem)
        self.ca_file.write_bytes(certificates.ca_pem)
        self.key_file = write_key_file(self.workdir / "token-keys")
        self.keys = TokenKeys.from_file(self.key_file)
        self.log_file = self.workdir / "gateway.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"tunefleet-gateway://{self.address}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def environment(self) -> dict[str, str]:
        env = {
            **os.environ,
            "TUNEFLEET_STORAGE_URL": self.storage_url,
            "TUNEFLEET_GATEWAY_LISTEN": self.address,
            "TUNEFLEET_GATEWAY_HTTP_PORT": str(self.http_port),
            "TUNEFLEET_GATEWAY_TLS_CERT": str(self.cert_file),
            "TUNEFLEET_GATEWAY_TLS_KEY": str(self.key_pem_file),
            "TUNEFLEET_GATEWAY_TOKEN_KEYS": str(self.key_file),
            "TUNEFLEET_LOG_FORMAT": "json",
            **self.extra_env,
        }
        if self.password is not None:
            env[DB_PASSWORD_ENV] = self.password
        return env

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting for it (:meth:`wait_ready` does): a caller overlaps
        the gateway's start with its own work."""
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "gateway"],
                env=self.environment(),
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        give_up = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < give_up:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(self.http_url + "/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the gateway did not start within {START_TIMEOUT_S} s:\n{self.log_text()}")

    def stop(self, hard: bool = False) -> None:
        """SIGTERM (calls in flight finish) or, ``hard``, SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, hard: bool = True, down_s: float = 0.0) -> None:
        """Kill the gateway and start a new one on the same port (``down_s`` seconds later)."""
        self.stop(hard=hard)
        time.sleep(down_s)
        self.start()

    def token(self, claims: TokenClaims) -> str:
        return self.keys.mint(claims)

    def env_for(self, claims: TokenClaims) -> dict[str, str]:
        """The worker's environment for ``claims``: what the trial's Secret gives its pod."""
        return {GATEWAY_TOKEN_ENV: self.keys.mint(claims), GATEWAY_CA_ENV: self.ca_pem}

    def client(
        self,
        claims: TokenClaims | None = None,
        token: str | None = None,
        server_name: str | None = None,
        retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
    ) -> GatewayStorage:
        """A worker's storage client holding ``claims``' token (or ``token`` as given)."""
        if token is None:
            assert claims is not None, "a client needs claims or a token"
            token = self.keys.mint(claims)
        return GatewayStorage(
            host="127.0.0.1",
            port=self.port,
            token=token,
            ca_pem=self.ca_pem.encode(),
            server_name=server_name,
            retry_budget_s=retry_budget_s,
        )

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_events(self, event: str) -> list[dict[str, object]]:
        """The gateway's JSON log lines whose event is ``event``."""
        found = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
        return found

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.http_url + "/metrics", timeout=5) as reply:
            return str(reply.read().decode())


@contextmanager
def running_gateway(
    storage_url: str,
    password: str | None = None,
    tmp_path: Path | None = None,
    pool_size: int | None = None,
    max_in_flight: int | None = None,
    **env: str,
) -> Iterator[RunningGateway]:
    """A started gateway for ``storage_url``; stopped on exit. ``env`` adds other settings
    (e.g. ``TUNEFLEET_GATEWAY_HTTP_PORT="0"``)."""
    if pool_size is not None:
        env["TUNEFLEET_GATEWAY_POOL_SIZE"] = str(pool_size)
    if max_in_flight is not None:
        env["TUNEFLEET_GATEWAY_MAX_IN_FLIGHT"] = str(max_in_flight)
    if tmp_path is None:
        import tempfile

        with (
            tempfile.TemporaryDirectory(prefix="tunefleet-gateway-") as scratch,
            running_gateway(storage_url, password, Path(scratch), None, None, **env) as gateway,
        ):
            yield gateway
        return
    workdir = tmp_path / "gateway"
    workdir.mkdir(exist_ok=True)
    gateway = RunningGateway(storage_url=storage_url, workdir=workdir, password=password, extra_env=env)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()
