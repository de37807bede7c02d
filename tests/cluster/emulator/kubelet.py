"""The scheduler and kubelet of one emulated node: runs pods and reports their status.

Two modes per runner: `exec` runs the first container as a local process (image ignored,
executable resolved on PATH), `simulate` only pretends, with an asyncio timer per pod, cheap
enough for a thousand pods. Fault injection methods are plain, thread-safe methods.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import logging
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import podenv
from .errors import ApiError
from .network import PodNetwork
from .store import POD_KEY, Store, now_iso
from .watching import DELETED, Event

logger = logging.getLogger(__name__)
T = TypeVar("T")

# simulate mode: pod -> (seconds, exit code) or (seconds, exit code, terminated reason); or
# (future,): the container runs until the concurrent.futures.Future resolves to its exit code
# (an in-process worker thread, say), or exits 1 if it raised.
PodBehaviour = Callable[[dict[str, Any]], tuple[Any, ...]]
SchedulingPredicate = Callable[[dict[str, Any]], bool]

NODE_NAME = "emulated-node"
HOST_IP = "10.0.0.1"
_TERMINAL = ("Succeeded", "Failed")


def default_behaviour(pod: dict[str, Any]) -> tuple[float, int]:
    return (0.2, 0)


@dataclass
class PodRun:
    """The kubelet's memory of one pod (by uid)."""

    namespace: str
    name: str
    uid: str
    proc: asyncio.subprocess.Process | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    started_at: str | None = None
    running: bool = False
    finished: bool = False
    stopping: bool = False
    vanished: bool = False
    reason_override: str | None = None  # e.g. OOMKilled
    pod_reason: tuple[str, str] | None = None  # status.reason/message, e.g. DeadlineExceeded
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class PodRunner:
    """Binds pods to the one emulated node and plays their containers."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, *, mode: str = "exec",
                 workdir: Path, log_dir: Path, volume_dir: Path | None = None,
                 extra_path: list[str] | None = None,
                 behaviour: PodBehaviour | None = None,
                 default_entrypoint: list[str] | None = None,
                 image_pull_backoff_s: float = 1.0, config_retry_s: float = 1.0) -> None:
        if mode not in ("exec", "simulate"):
            raise ValueError(f"unknown pod runner mode {mode!r}")
        self.store = store
        self.loop = loop
        self.mode = mode
        self.workdir = workdir
        self.log_dir = log_dir
        self.volume_dir = volume_dir or log_dir.parent / "volumes"  # persistentVolumeClaims
        self.extra_path = extra_path or []
        self.behaviour = behaviour or default_behaviour
        self.default_entrypoint = default_entrypoint
        self.image_pull_backoff_s = image_pull_backoff_s
        self.config_retry_s = config_retry_s
        self._pod_rt = store.type_for_key(POD_KEY)
        self.network = PodNetwork(store)
        self._runs: dict[str, PodRun] = {}
        self._logs: dict[tuple[str, str], Path] = {}
        self._blocked: SchedulingPredicate | None = None
        self._unscheduled: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._procs: set[asyncio.subprocess.Process] = set()  # until their exit is reaped
        self._closing = False
        log_dir.mkdir(parents=True, exist_ok=True)
        store.add_listener(self._on_event)

    # -- thread-safe public API -------------------------------------------------------------

    def _on_loop(self, fn: Callable[[], T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            return fn()

        async def call() -> T:
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=30)

    def log_path(self, namespace: str, name: str) -> Path | None:
        return self._logs.get((namespace, name))

    def kill_pod(self, namespace: str, name: str, reason: str = "Error") -> None:
        """SIGKILL the container: exitCode 137 with `reason` (Error, or OOMKilled)."""
        self._on_loop(lambda: self._kill(self._run_for(namespace, name), reason))

    def preempt_pod(self, namespace: str, name: str) -> None:
        """Preemption: DisruptionTarget condition, then a graceful delete (ends Failed)."""
        def preempt() -> None:
            self._run_for(namespace, name)
            self._set_condition(namespace, name, {
                "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": "default-scheduler: preempting to accommodate a higher priority pod",
                "lastProbeTime": None, "lastTransitionTime": now_iso()})
            self.store.delete(self._pod_rt, namespace, name)
        self._on_loop(preempt)

    def vanish_pod(self, namespace: str, name: str) -> None:
        """Node lost: the process dies, no final status is written, the pod is force-deleted
        (finalizers still hold the object)."""
        def vanish() -> None:
            run = self._run_for(namespace, name)
            run.vanished = True
            self._stop_process(run, signal.SIGKILL)
            with contextlib.suppress(ApiError):
                self.store.delete(self._pod_rt, namespace, name, grace_period=0)
        self._on_loop(vanish)

    def freeze_pod(self, namespace: str, name: str) -> None:
        """A hung container (stuck collective, deadlock): SIGSTOP its process group (exec mode).

        It runs no code any more, its own watchdog included, so only activeDeadlineSeconds or a
        delete ends it: SIGKILL ends stopped processes, a SIGTERM waits for the grace's SIGKILL.
        """
        def freeze() -> None:
            run = self._run_for(namespace, name)
            if run.proc is None or run.proc.returncode is not None:
                raise ValueError(f"pod {namespace}/{name} has no live process to freeze "
                                 f"(freeze_pod needs exec mode and a Running pod)")
            # Not _stop_process: that cancels the timers, and the deadline timer must stay.
            os.killpg(run.proc.pid, signal.SIGSTOP)
        self._on_loop(freeze)

    def block_scheduling(self, predicate: SchedulingPredicate | None) -> None:
        """Pods for which predicate(pod) is true stay Pending/Unschedulable; None unblocks."""
        def apply() -> None:
            self._blocked = predicate
            for namespace, name in list(self._unscheduled):
                with contextlib.suppress(ApiError):
                    self._try_schedule(self.store.get(self._pod_rt, namespace, name))
        self._on_loop(apply)

    def running_pids(self) -> list[int]:
        return [proc.pid for proc in list(self._procs) if proc.returncode is None]

    async def shutdown(self) -> None:
        self._closing = True
        for run in list(self._runs.values()):
            run.vanished = True
            for timer in run.timers:
                timer.cancel()
        procs = list(self._procs)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        # Reap them before the loop closes, so no transport outlives it (ResourceWarning).
        if procs:
            await asyncio.wait([asyncio.ensure_future(proc.wait()) for proc in procs], timeout=5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _run_for(self, namespace: str, name: str) -> PodRun:
        for run in self._runs.values():
            if (run.namespace, run.name) == (namespace, name):
                return run
        raise KeyError(f"pod {namespace}/{name} is not running on the emulated node")

    # -- reacting to pod changes ------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_event(self, event: Event) -> None:
        if event.key != POD_KEY:
            return
        pod, meta = event.obj, event.obj["metadata"]
        uid = meta["uid"]
        run = self._runs.get(uid)
        if event.type == DELETED:
            self._unscheduled.discard((meta["namespace"], meta["name"]))
            if run is not None:  # force-deleted under us: kill without a word
                run.vanished = True
                self._stop_process(run, signal.SIGKILL)
                self._runs.pop(uid, None)
            return
        if run is not None:
            if meta.get("deletionTimestamp") and not run.stopping:
                run.stopping = True
                grace = int(meta.get("deletionGracePeriodSeconds") or 0)
                self._spawn(self._terminate(run, grace))
            return
        if meta.get("deletionTimestamp"):
            self._unscheduled.discard((meta["namespace"], meta["name"]))
            if self.store.is_stopping(uid):
                self.store.release_pod(meta["namespace"], meta["name"])
            return
        if (pod.get("status") or {}).get("phase") in _TERMINAL:
            return
        node = (pod.get("spec") or {}).get("nodeName")
        if node and node != NODE_NAME:
            return
        self._try_schedule(pod)

    def _try_schedule(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        slot = (meta["namespace"], meta["name"])
        if meta["uid"] in self._runs or meta.get("deletionTimestamp"):
            return
        if self._blocked is not None and self._blocked(pod):
            if slot not in self._unscheduled:
                self._unscheduled.add(slot)
                self._set_condition(*slot, {
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/1 nodes are available: scheduling is blocked by the emulator. "
                               "preemption: 0/1 nodes are available.",
                    "lastProbeTime": None, "lastTransitionTime": now_iso()})
            return
        self._unscheduled.discard(slot)
        run = PodRun(meta["namespace"], meta["name"], meta["uid"])
        self._runs[meta["uid"]] = run
        self._spawn(self._start(run))

    # -- status writing ---------------------------------------------------------------------

    def _write_status(self, run: PodRun, fn: Callable[[dict[str, Any]], None]) -> bool:
        if run.vanished:
            return False
        try:
            pod = self.store.get(self._pod_rt, run.namespace, run.name)
            if pod["metadata"]["uid"] != run.uid:
                return False
            self.store.mutate(self._pod_rt, run.namespace, run.name,
                              lambda draft: fn(draft.setdefault("status", {})),
                              subresource="status")
            return True
        except ApiError:
            return False

    def _set_condition(self, namespace: str, name: str, condition: dict[str, Any]) -> None:
        def apply(draft: dict[str, Any]) -> None:
            status = draft.setdefault("status", {})
            conditions = [c for c in status.get("conditions") or []
                          if c.get("type") != condition["type"]]
            status["conditions"] = [*conditions, condition]
        self.store.mutate(self._pod_rt, namespace, name, apply, subresource="status")

    @staticmethod
    def _conditions(status: dict[str, Any], **states: bool) -> None:
        stamp = now_iso()
        existing = {c["type"]: c for c in status.get("conditions") or []}
        for kind, value in states.items():
            old = existing.get(kind)
            text = "True" if value else "False"
            if old is None or old.get("status") != text:
                existing[kind] = {"type": kind, "status": text, "lastProbeTime": None,
                                  "lastTransitionTime": stamp}
                if kind in ("Ready", "ContainersReady") and not value:
                    existing[kind]["reason"] = "PodCompleted"
        status["conditions"] = list(existing.values())

    def _container_status(self, pod: dict[str, Any], state: dict[str, Any],
                          ready: bool = False) -> list[dict[str, Any]]:
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        return [{"name": container.get("name", ""), "image": container.get("image", ""),
                 "imageID": f"emulated://{container.get('image', '')}",
                 "containerID": f"emulated://{pod['metadata']['uid']}",
                 "ready": ready, "started": "running" in state, "restartCount": 0,
                 "state": state, "lastState": {}}]

    # -- lifecycle --------------------------------------------------------------------------

    async def _start(self, run: PodRun) -> None:
        try:
            self.store.mutate(self._pod_rt, run.namespace, run.name,
                              lambda d: d["spec"].__setitem__("nodeName", NODE_NAME))
            pod = self.store.get(self._pod_rt, run.namespace, run.name)
        except ApiError:
            return

        def accepted(status: dict[str, Any]) -> None:
            status.update(phase="Pending", hostIP=HOST_IP, podIP=_pod_ip(run.uid),
                          startTime=now_iso(), hostIPs=[{"ip": HOST_IP}],
                          podIPs=[{"ip": _pod_ip(run.uid)}])
            self._conditions(status, PodScheduled=True, PodReadyToStartContainers=True,
                             Initialized=True, Ready=False, ContainersReady=False)
            status["containerStatuses"] = self._container_status(
                pod, {"waiting": {"reason": "ContainerCreating"}})
        if not self._write_status(run, accepted):
            return
        pod = self.store.get(self._pod_rt, run.namespace, run.name)
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        if "does-not-exist" in str(container.get("image", "")):
            await self._image_pull_failure(run, pod, str(container.get("image")))
            return
        await self._launch(run)

    async def _image_pull_failure(self, run: PodRun, pod: dict[str, Any], image: str) -> None:
        for reason in ("ErrImagePull", "ImagePullBackOff"):
            message = (f'failed to pull and unpack image "{image}": not found'
                       if reason == "ErrImagePull" else f'Back-off pulling image "{image}"')
            self._waiting(run, pod, reason, message)
            await asyncio.sleep(self.image_pull_backoff_s)

    def _waiting(self, run: PodRun, pod: dict[str, Any], reason: str, message: str) -> None:
        def write(status: dict[str, Any]) -> None:
            status["containerStatuses"] = self._container_status(
                pod, {"waiting": {"reason": reason, "message": message}})
        self._write_status(run, write)

    async def _launch(self, run: PodRun) -> None:
        while not run.stopping and not run.vanished:
            try:
                pod = self.store.get(self._pod_rt, run.namespace, run.name)
            except ApiError:
                return
            container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
            try:
                env = podenv.container_env(self.store, pod, container, self._base_env(pod))
                env = self.network.resolve(pod, env)  # pod DNS names of headless Services
            except podenv.ContainerConfigError as exc:
                self._waiting(run, pod, "CreateContainerConfigError", str(exc))
                await asyncio.sleep(self.config_retry_s)
                continue
            try:
                mounts = podenv.volume_mounts(self.store, pod, container, self.volume_dir)
                break
            except podenv.ContainerConfigError as exc:
                self._waiting(run, pod, "ContainerCreating", str(exc))
                await asyncio.sleep(self.config_retry_s)
        else:
            return
        if self.mode == "simulate":
            self._simulate(run, pod)
            return
        env = {key: podenv.on_host(value, mounts) for key, value in env.items()}
        argv = [podenv.on_host(part, mounts)
                for part in podenv.container_argv(container, env, self.default_entrypoint)]
        executable = shutil.which(argv[0], path=env.get("PATH")) if argv else None
        if executable is None:
            what = argv[0] if argv else "<no command; image entrypoints are not emulated>"
            self._finish_status(run, 128, "StartError",
                                f'exec: "{what}": executable file not found in $PATH')
            return
        log_path = self.log_dir / f"{run.namespace}.{run.name}.log"
        self._logs[(run.namespace, run.name)] = log_path
        if self._closing:
            return
        with open(log_path, "ab") as log:
            run.proc = proc = await asyncio.create_subprocess_exec(
                executable, *argv[1:], stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=asyncio.subprocess.STDOUT, cwd=str(self.workdir), env=env,
                start_new_session=True)  # its own process group: children die with it
        self._procs.add(proc)
        if self._closing:
            self._stop_process(run, signal.SIGKILL)
        else:
            self._mark_running(run, pod)
        code = await proc.wait()
        self._procs.discard(proc)
        run.exited.set()
        self._finish(run, 128 - code if code < 0 else code)

    def _simulate(self, run: PodRun, pod: dict[str, Any]) -> None:
        outcome = tuple(self.behaviour(pod))
        if isinstance(outcome[0], concurrent.futures.Future):
            self._mark_running(run, pod)
            outcome[0].add_done_callback(lambda done: self._finish_from(run, done))
            return
        seconds, code = float(outcome[0]), int(outcome[1])
        if len(outcome) > 2:
            run.reason_override = str(outcome[2])
        self._mark_running(run, pod)
        run.timers.append(self.loop.call_later(seconds, self._finish, run, code))

    def _finish_from(self, run: PodRun, done: concurrent.futures.Future[Any]) -> None:
        """A simulated container's future resolved (on any thread): exit with its code."""
        code = 1 if done.cancelled() or done.exception() is not None else int(done.result())
        with contextlib.suppress(RuntimeError):  # the loop is closed: the emulator stopped
            self.loop.call_soon_threadsafe(self._finish, run, code)

    def _mark_running(self, run: PodRun, pod: dict[str, Any]) -> None:
        if run.finished or run.vanished:  # deleted while the process was starting
            self._stop_process(run, signal.SIGKILL)
            return
        run.running = True
        run.started_at = now_iso()

        def running(status: dict[str, Any]) -> None:
            status["phase"] = "Running"
            self._conditions(status, Ready=True, ContainersReady=True)
            status["containerStatuses"] = self._container_status(
                pod, {"running": {"startedAt": run.started_at}}, ready=True)
        self._write_status(run, running)
        deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
        if deadline is not None:  # counted from status.startTime, as Kubernetes does
            left = float(deadline) - _seconds_since((pod.get("status") or {}).get("startTime"))
            run.timers.append(self.loop.call_later(max(0.0, left), self._deadline, run))
        if run.stopping:  # deleted while starting
            grace = int(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
            self._spawn(self._terminate(run, grace))

    def _deadline(self, run: PodRun) -> None:
        if run.finished or run.stopping:
            return
        run.pod_reason = ("DeadlineExceeded",
                          "Pod was active on the node longer than the specified deadline")
        run.stopping = True
        # As the kubelet does: SIGTERM, then SIGKILL after the pod's terminationGracePeriodSeconds,
        # so a hung container holds its node (and GPUs) for the deadline plus the grace.
        try:
            pod = self.store.get(self._pod_rt, run.namespace, run.name)
            grace = int((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        except ApiError:
            grace = 0
        self._spawn(self._terminate(run, grace))

    def _kill(self, run: PodRun, reason: str) -> None:
        run.reason_override = None if reason == "Error" else reason
        if self.mode == "simulate" or run.proc is None:
            self._finish(run, 137)
        else:
            self._stop_process(run, signal.SIGKILL)

    def _stop_process(self, run: PodRun, sig: signal.Signals) -> None:
        for timer in run.timers:
            timer.cancel()
        if run.proc is not None and run.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.proc.pid, sig)

    async def _terminate(self, run: PodRun, grace: int) -> None:
        """SIGTERM, SIGKILL after the grace period, then release the deleted pod."""
        if run.running and not run.finished:
            if self.mode == "simulate" or run.proc is None:
                self._finish(run, 143 if grace > 0 else 137)
            else:
                self._stop_process(run, signal.SIGTERM if grace > 0 else signal.SIGKILL)
                try:
                    await asyncio.wait_for(run.exited.wait(), timeout=grace)
                except TimeoutError:
                    self._stop_process(run, signal.SIGKILL)
                return  # _launch sees the exit and calls _finish, which releases
        elif not run.running:
            run.finished = True
        self._release(run)

    def _finish(self, run: PodRun, code: int) -> None:
        if run.finished:
            return
        reason = run.reason_override or ("Completed" if code == 0 else "Error")
        self._finish_status(run, code, reason, None)

    def _finish_status(self, run: PodRun, code: int, reason: str, message: str | None) -> None:
        run.finished = True
        for timer in run.timers:
            timer.cancel()
        if run.vanished:
            return
        terminated: dict[str, Any] = {"exitCode": code, "reason": reason,
                                      "startedAt": run.started_at or now_iso(),
                                      "finishedAt": now_iso(),
                                      "containerID": f"emulated://{run.uid}"}
        if message:
            terminated["message"] = message

        def done(status: dict[str, Any]) -> None:
            failed = code != 0 or run.pod_reason is not None
            status["phase"] = "Failed" if failed else "Succeeded"
            if run.pod_reason is not None:
                status["reason"], status["message"] = run.pod_reason
            self._conditions(status, Ready=False, ContainersReady=False)
            try:
                pod = self.store.get(self._pod_rt, run.namespace, run.name)
            except ApiError:
                return
            status["containerStatuses"] = self._container_status(pod, {"terminated": terminated})
        self._write_status(run, done)
        self._release(run)

    def _release(self, run: PodRun) -> None:
        """If the pod is being deleted, tell the store its containers are gone."""
        try:
            pod = self.store.get(self._pod_rt, run.namespace, run.name)
        except ApiError:
            return
        if pod["metadata"]["uid"] == run.uid and pod["metadata"].get("deletionTimestamp"):
            self.store.release_pod(run.namespace, run.name)

    def _base_env(self, pod: dict[str, Any]) -> dict[str, str]:
        path = os.pathsep.join([*self.extra_path, os.environ.get("PATH", "")])
        env = {"PATH": path, "HOSTNAME": str(pod["metadata"]["name"])}
        for key in ("HOME", "PYTHONPATH", "LANG", "TMPDIR"):
            if key in os.environ:
                env[key] = os.environ[key]
        return env


def _seconds_since(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    moment = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return max(0.0, (datetime.datetime.now(datetime.UTC) - moment).total_seconds())


def _pod_ip(uid: str) -> str:
    number = int(uid.replace("-", "")[:6], 16)
    return f"10.244.{(number >> 8) % 256}.{number % 254 + 1}"
