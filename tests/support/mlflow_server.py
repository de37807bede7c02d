"""A real MLflow tracking server for the test session: SQLite backend, local artifact folder.

Started with MLflow's own ``mlflow server`` command (the ``mlflow`` test dependency) on a free
loopback port, with MLflow's basic-auth app, so every test also exercises credentials: the admin
user's name and password are in :attr:`MlflowServer.username` / :attr:`MlflowServer.password`.
The server's background job runner is switched off (the tests need none of it). ``stop()`` and
``start()`` take the same server down and up again on the same port with the same data, as an
outage would; ``close()`` removes it.

A browser cannot send basic-auth credentials from the page URL to the UI's own API calls
(Chromium refuses to build such requests), so :func:`signed_in_proxy` serves the UI on another
loopback port and adds the admin's ``Authorization`` header, as a signed-in browser would.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT_S = 180.0  # a cold start imports a lot; a loaded CI machine takes its time


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MlflowServer:
    """One ``mlflow server`` process and its data directory."""

    root: Path
    port: int = field(default_factory=_free_port)
    username: str = "admin"
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def env(self) -> dict[str, str]:
        """The client-side environment that authenticates as the admin user."""
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}

    def _write_auth_config(self) -> Path:
        config = self.root / "basic_auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{self.root / 'auth.db'}\n"
            f"admin_username = {self.username}\n"
            f"admin_password = {self.password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Without it, every request hashes the password again (PBKDF2): slow on a busy machine.
            "auth_cache_ttl_seconds = 600\n"
        )
        return config

    def start(self) -> MlflowServer:
        executable = Path(sys.executable).parent / "mlflow"
        env = {
            **os.environ,
            "MLFLOW_AUTH_CONFIG_PATH": str(self._write_auth_config()),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "tunefleet-tests-" + secrets.token_hex(8),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(name, None)
        command = [
            str(executable),
            "server",
            "--app-name",
            "basic-auth",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.process.returncode}): {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server not ready after {READY_TIMEOUT_S:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Kill the whole process group (the CLI, its uvicorn worker), as a crash would; the data
        stays (SQLite keeps what was committed)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> MlflowServer:
    return MlflowServer(Path(tempfile.mkdtemp(prefix="tunefleet-mlflow-"))).start()


@contextmanager
def signed_in_proxy(server: MlflowServer) -> Iterator[str]:
    """A loopback URL that serves the MLflow UI signed in as the admin user."""
    token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()

    class Forward(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            headers["Authorization"] = f"Basic {token}"
            upstream = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
            finally:
                upstream.close()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        def log_message(self, *args: object) -> None:
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()
