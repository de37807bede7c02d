"""Runs the whole emulated cluster in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .api import Api
from .disruption import Disruption
from .jobs import JobController
from .kubelet import PodBehaviour, PodRunner
from .server import ApiServer
from .store import Store

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent


class KubeEmulator:
    """API server + Job controller + pod runner, reachable through `kubeconfig_path`.

    Args:
        work_dir: where the kubeconfig and the pod logs go.
        mode: "exec" runs pod containers as local processes; "simulate" only pretends.
        behaviour: simulate mode: pod -> (seconds, exit code[, terminated reason]).
        workdir: the working directory of exec-mode processes (the repo root by default).
        extra_path: directories put before $PATH (the venv's bin by default).
        default_entrypoint: argv used when a container has no `command` (the image ENTRYPOINT).
        history_size: watch events kept for resuming; older resourceVersions get 410 Gone.
        bookmark_interval_s: how often an idle watch with allowWatchBookmarks sends a BOOKMARK.

    Example:
        with KubeEmulator(tmp_path) as kube:
            kubernetes.config.load_kube_config(config_file=str(kube.kubeconfig_path))
    """

    def __init__(self, work_dir: Path, *, mode: str = "exec", behaviour: PodBehaviour | None = None,
                 workdir: Path | None = None, extra_path: list[str] | None = None,
                 default_entrypoint: list[str] | None = None, history_size: int = 20_000,
                 bookmark_interval_s: float = 1.0) -> None:
        self.work_dir = work_dir
        self.mode = mode
        self.behaviour = behaviour
        self.workdir = workdir or REPO_ROOT
        self.extra_path = extra_path if extra_path is not None else [str(VENV_BIN)]
        self.default_entrypoint = default_entrypoint
        self.store = Store(history_size=history_size)
        self.api = Api(self.store)
        self.kubeconfig_path = work_dir / "kubeconfig"
        self._bookmark_interval_s = bookmark_interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ApiServer | None = None
        self._runner: PodRunner | None = None
        self._jobs: JobController | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> KubeEmulator:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready: collections.deque[Exception | None] = collections.deque()
        started = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._astart())
                ready.append(None)
            except Exception as exc:  # noqa: BLE001 -- reported to the starting thread
                ready.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=main, name="kube-emulator", daemon=True)
        self._thread.start()
        if not started.wait(timeout=30) or not ready:
            raise RuntimeError("the Kubernetes emulator did not start in 30 seconds")
        if (error := ready[0]) is not None:
            raise RuntimeError("the Kubernetes emulator failed to start") from error
        self._write_kubeconfig()
        return self

    async def _astart(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = ApiServer(self.store, log_source=self._log_source,
                                 bookmark_interval_s=self._bookmark_interval_s)
        await self._server.start()
        self._jobs = JobController(self.store, loop)
        self._runner = PodRunner(self.store, loop, mode=self.mode, workdir=self.workdir,
                                 log_dir=self.work_dir / "logs", volume_dir=self.volume_dir,
                                 extra_path=self.extra_path,
                                 behaviour=self.behaviour,
                                 default_entrypoint=self.default_entrypoint)

    @property
    def volume_dir(self) -> Path:
        return self.work_dir / "volumes"

    def claim_path(self, namespace: str, claim: str) -> Path:
        """The host directory that emulates a PersistentVolumeClaim (see podenv.volume_mounts)."""
        return self.volume_dir / namespace / claim

    def _log_source(self, namespace: str, name: str) -> Path | None:
        return self._runner.log_path(namespace, name) if self._runner else None

    def stop(self) -> None:
        """Stop serving and kill every process the pod runner started."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        pids = self._runner.running_pids() if self._runner else []
        if thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
        for pid in pids:  # belt and braces: nothing outlives the fixture
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    async def _astop(self) -> None:
        if self._runner is not None:
            await self._runner.shutdown()
        if self._jobs is not None:
            self._jobs.stop()
        if self._server is not None:
            await self._server.stop()

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator",
                          "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "emulator", "user": {}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator",
                                                          "user": "emulator",
                                                          "namespace": "default"}}],
            "current-context": "emulator",
        }
        self.kubeconfig_path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML

    # -- accessors --------------------------------------------------------------------------

    @property
    def server(self) -> ApiServer:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return self._server

    @property
    def runner(self) -> PodRunner:
        """The kubelet: fault injection (kill_pod, preempt_pod, vanish_pod, block_scheduling)."""
        if self._runner is None:
            raise RuntimeError("the emulator is not started")
        return self._runner

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def request_counts(self) -> collections.Counter[tuple[str, str]]:
        """HTTP requests served, by (verb, resource), e.g. ("patch", "pods/status")."""
        return self.server.request_counts

    def reset_request_counts(self) -> None:
        self.server.request_counts.clear()

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig whose requests are made as the ServiceAccount and authorized by the RBAC
        objects stored here (a token from this server's TokenRequest, issued without HTTP)."""
        token = self.server.access.issue_token(namespace, name, {})["status"]["token"]
        config = json.loads(self.kubeconfig_path.read_text())
        config["users"] = [{"name": "emulator", "user": {"token": token}}]
        path.write_text(json.dumps(config, indent=2))
        return path

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (e.g. the controller) to find the emulator."""
        return {"KUBECONFIG": str(self.kubeconfig_path)}

    # -- outages and watch control ----------------------------------------------------------

    def _call(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        if self._loop is None:
            raise RuntimeError("the emulator is not started")
        return asyncio.run_coroutine_threadsafe(factory(), self._loop).result(timeout=30)

    def pause(self, mode: str = "503") -> None:
        """API outage: requests answer 503 ("503") or connections are refused ("refuse");
        open watch-streams are dropped either way."""
        self._call(lambda: self.server.pause(mode))

    def resume(self) -> None:
        self._call(self.server.resume)

    def disrupt(self, disruption: Disruption | None) -> None:
        """Fail or delay a share of requests (429, 500 or slow; see disruption.py); None ends it."""
        self.server.disruption = disruption

    def close_watches(self, abort: bool = False) -> int:
        """End all open watch-streams (cleanly, or by dropping the connection)."""
        return self.store.close_watches(abort=abort)

    def compact_history(self) -> None:
        """Forget the watch history: resuming from any older resourceVersion gets 410 Gone."""
        self.store.compact()

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0,
                 interval: float = 0.05, message: str = "") -> T:
        """Poll `predicate` until it returns something truthy; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(message or f"condition not met within {timeout}s")
            time.sleep(interval)
