"""A throwaway PostgreSQL server for the test session: real, never mocked.

Started from the machine's PostgreSQL binaries in a temporary directory (as the ``postgres``
user when running as root), listening on 127.0.0.1 on a free port; removed at the end.
``TUNEFLEET_TEST_POSTGRES_URL`` points the tests at an existing server instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

EXISTING_SERVER_ENV = "TUNEFLEET_TEST_POSTGRES_URL"


class PostgresUnavailable(RuntimeError):
    pass


def _bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found; install them with `apt-get install postgresql` "
        "(the README's test command does this)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server; ``url(db)`` gives a SQLAlchemy URL for one of its databases."""

    host: str
    port: int
    user: str
    data_dir: Path | None = None
    _bin: Path | None = None
    _as_postgres: bool = False
    max_connections: int = 300  # the tests' own; bench/gateway_scale.py uses PostgreSQL's default, 100

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, owner: str | None = None, name: str | None = None) -> str:
        """A fresh, empty database (owned by ``owner`` if given); returns its URL as the admin."""
        name = name or "t_" + uuid.uuid4().hex[:12]
        owned = f' OWNER "{owner}"' if owner else ""
        self.execute(f'CREATE DATABASE "{name}"{owned}')
        return self.url(name)

    def execute(self, *statements: str, params: tuple[object, ...] = ()) -> None:
        """Run statements as the admin on the ``postgres`` database (autocommit)."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement, params or None)
        finally:
            conn.close()

    def create_login(self, role: str, password: str) -> None:
        """A login role that must present ``password`` over TCP, as a real install's user does.

        The rest of the server still trusts local connections (the admin needs none). On a server
        the tests did not start (``TUNEFLEET_TEST_POSTGRES_URL``) the role is created, but whether
        its password is checked is that server's business.
        """
        self.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD %s', params=(password,))
        if self.data_dir is None:
            return
        hba = self.data_dir / "pg_hba.conf"
        rule = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
        hba.write_text(rule + hba.read_text())  # the first matching line wins
        self.execute("SELECT pg_reload_conf()")
        self._wait_until_password_required(role)

    def _wait_until_password_required(self, role: str, timeout_s: float = 10.0) -> None:
        """The postmaster reloads pg_hba.conf asynchronously: wait until it refuses ``role``
        without a password."""
        import psycopg2

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg2.connect(host=self.host, port=self.port, user=role, dbname="postgres").close()
            except psycopg2.OperationalError as error:
                if "password" in str(error):
                    return
                raise
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"the server still lets {role} in without a password")
            time.sleep(0.05)

    def set_password(self, role: str, password: str) -> None:
        self.execute(f'ALTER ROLE "{role}" PASSWORD %s', params=(password,))

    def terminate_connections(self, role: str) -> None:
        """End every session of ``role``: its clients must reconnect (with the password of now)."""
        self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", params=(role,)
        )

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self._bin / args[0]), *args[1:]] if self._bin else list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    def stop(self, mode: str = "fast") -> None:
        if self.data_dir is not None:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def start(self) -> None:
        if self.data_dir is None:
            raise PostgresUnavailable("this server was not started by the tests; cannot restart it")
        options = " ".join(
            [
                f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1",
                f"-c max_connections={self.max_connections}",
                # A throwaway server: fsync and full-page writes guard only against an OS crash,
                # which no test causes. Commits stay synchronous: a server killed mid-study
                # (`stop -m immediate`, as the restart tests and chaos do) must lose nothing it
                # acknowledged, as a production server would not; asynchronous commits lost a
                # trial the controller had already made a Job for.
                "-c fsync=off -c synchronous_commit=on -c full_page_writes=off",
            ]
        )
        result = self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-o",
            options,
            "-l",
            str(self.data_dir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        if result.returncode != 0:
            log = (
                (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
                if (self.data_dir / "server.log").exists()
                else ""
            )
            raise PostgresUnavailable(f"pg_ctl start failed: {result.stderr or result.stdout}\n{log}")

    def restart(self) -> None:
        self.stop("immediate")
        self.start()


def start_server() -> PostgresServer:
    existing = os.environ.get(EXISTING_SERVER_ENV)
    if existing:
        from sqlalchemy.engine import make_url

        url = make_url(existing)
        return PostgresServer(
            host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username or "postgres"
        )
    bin_dir = _bin_dir()
    as_postgres = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="tunefleet-pg-"))
    data_dir = root / "data"
    data_dir.mkdir()
    if as_postgres:
        os.chmod(root, 0o755)
        shutil.chown(data_dir, "postgres", "postgres")
    server = PostgresServer("127.0.0.1", _free_port(), "postgres", data_dir, bin_dir, as_postgres)
    result = server._run(
        "initdb", "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
    )
    if result.returncode != 0:
        raise PostgresUnavailable(f"initdb failed: {result.stderr or result.stdout}")
    server.start()
    return server


def remove_server(server: PostgresServer) -> None:
    if server.data_dir is None:
        return
    server.stop("immediate")
    shutil.rmtree(server.data_dir.parent, ignore_errors=True)
