"""Trial pods whose container is the real worker code, run in a thread of the test process.

The emulator runs pods in simulate mode; for each trial pod the behaviour hands the pod's
assignment (its ``TUNEFLEET_ASSIGNMENT`` env) to ``trial_worker.run.run_assignment`` on a thread
and the pod runs until that returns: the worker attaches, checks its trial is RUNNING, runs the
objective, tells the outcome with its retries, and exits with its ``ExitCode``. Starting a Python
process per trial would cost the shared CPUs more than the controller under test.

A real container stops running code when it is killed; here the objective polls its pod
(``current_pod_alive``) and unwinds with :class:`PodGone`, a ``BaseException`` the worker does
not catch, so a killed trial tells nothing, as a killed process would.

Each thread reaches its study as its pod would: through the trial gateway, with the token and CA
of the pod's environment as the kubelet resolves it (``trial_worker.storage.pod_environment``),
and drops that connection when its pod ends.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import trial_worker.run
from tests.cluster.emulator import KubeEmulator
from tests.cluster.emulator.podenv import container_env
from trial_worker.contract import ASSIGNMENT_ENV, Assignment
from trial_worker.run import run_assignment
from trial_worker.storage import forget_storage, pod_environment

_current = threading.local()
EXIT_KILLED = 137


class PodGone(BaseException):  # a signal, not an error: the worker must not catch it
    """The trial's pod stopped running (deleted, evicted, node lost, deadline)."""


def current_pod_alive() -> None:
    """Raise PodGone if the pod this thread runs for no longer runs (no-op outside a pod)."""
    pod_check = getattr(_current, "alive", None)
    if pod_check is not None and not pod_check():
        raise PodGone()


class _NoWatchdog:
    """The worker's maxDuration watchdog ends its process (``os._exit``): here that would end the
    test. The pod's ``activeDeadlineSeconds`` still ends a trial that outlives its limit."""

    def __init__(self, *args: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def cancel(self) -> None:
        pass


class InProcessWorkers:
    """The simulate-mode behaviour of the chaos emulator: one worker thread per trial pod."""

    def __init__(self, max_threads: int = 48) -> None:
        self.kube: KubeEmulator | None = None  # set once the emulator is started
        self._pool = concurrent.futures.ThreadPoolExecutor(max_threads, thread_name_prefix="trial-pod")
        self.started = 0
        self._closing = False
        self._watchdog = trial_worker.run._Watchdog
        trial_worker.run._Watchdog = _NoWatchdog  # type: ignore[misc,assignment]

    def behaviour(self, pod: dict[str, Any]) -> tuple[Any, ...]:
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env") or []}
        raw = env.get(ASSIGNMENT_ENV)
        if raw is None:
            return (0.1, 2)  # ExitCode.BAD_ASSIGNMENT, as the worker exits without one
        assignment = Assignment.model_validate_json(raw)
        assert self.kube is not None
        # The kubelet (on this thread) found every Secret the env names before calling this.
        pod_env = container_env(self.kube.api.store, pod, container, {})
        meta = pod["metadata"]
        self.started += 1
        return (self._pool.submit(self._run, meta["namespace"], meta["name"], meta["uid"], assignment,
                                  pod_env),)

    def _run(self, namespace: str, name: str, uid: str, assignment: Assignment,
             pod_env: dict[str, str]) -> int:
        _current.alive = lambda: self._alive(namespace, name, uid)
        with pod_environment(pod_env):
            try:
                return run_assignment(assignment).exit_code
            except PodGone:
                return EXIT_KILLED
            finally:
                _current.alive = None
                forget_storage(assignment.storage_url)

    def _alive(self, namespace: str, name: str, uid: str) -> bool:
        if self._closing:
            return False
        if self.kube is None:
            return True
        pod = self.kube.api.find("pods", namespace, name)
        if pod is None or pod["metadata"]["uid"] != uid or pod["metadata"].get("deletionTimestamp"):
            return False
        return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")

    def shutdown(self) -> None:
        self._closing = True  # every worker thread unwinds at its next poll
        self._pool.shutdown(wait=False, cancel_futures=True)
        trial_worker.run._Watchdog = self._watchdog  # type: ignore[misc]
