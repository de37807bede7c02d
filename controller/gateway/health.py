"""The gateway's HTTP side port: /healthz (the process serves), /readyz (the database answers),
/metrics (Prometheus)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sqlalchemy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.pool import NullPool


class HealthServer:
    """Readiness opens its own short connection (NullPool): a probe never waits behind a busy pool,
    and holds no connection between probes."""

    def __init__(self, host: str, port: int, database_url: str) -> None:
        connect_args = {"connect_timeout": 3} if database_url.startswith("postgresql") else {}
        self._probe = sqlalchemy.create_engine(database_url, poolclass=NullPool, connect_args=connect_args)
        self._server = ThreadingHTTPServer((host or "0.0.0.0", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="gateway-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._probe.dispose()

    def database_ready(self) -> str | None:
        """None when the database answers, else why not."""
        try:
            with self._probe.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        except sqlalchemy.exc.SQLAlchemyError as error:
            return f"database unreachable: {type(error).__name__}"
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    problem = owner.database_ready()
                    body = (problem or "ok").encode() + b"\n"
                    self._send(503 if problem else 200, body, "text/plain")
                elif path == "/metrics":
                    self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: quiet
                return

        return Handler
