"""A seeded random schedule of faults, and the injector that applies it.

The schedule (which fault, when, with which parameters) comes from ``random.Random(seed)``
alone, so a seed replays the same faults at the same offsets. Which pod a pod fault hits is
also drawn from the seed, as an index into the trial pods running at that instant (sorted by
name); the system under test is not deterministic, so the pods there are can differ.

Each fault that takes something away (a controller, the API, PostgreSQL, a running study) also
schedules its repair; by the end of the fault window everything is repaired.
"""

from __future__ import annotations

import heapq
import itertools
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import controller
from tests.chaos.replicas import Replica, leader_pid
from tests.chaos.studies import ChaosStudy
from tests.cluster.controller_harness import NAMESPACE, STUDIES
from tests.cluster.emulator import ApiError, Disruption, KubeEmulator
from tests.support.postgres import PostgresServer


def named_crash_points() -> tuple[str, ...]:
    """Every ``crash_point("<name>")`` the controller's source calls: the named steps of asking,
    creating, reserving and settling, found in the code so that a point added later is drawn too."""
    root = Path(controller.__file__).parent
    return tuple(sorted({
        name for path in root.rglob("*.py")
        for name in re.findall(r'crash_point\(\s*"([a-z0-9-]+)"', path.read_text())
    }))


NAMED_CRASH_POINTS = named_crash_points()

# kind -> weight: how often the schedule draws it.
WEIGHTS: dict[str, int] = {
    "controller_kill": 5,  # SIGKILL a replica (the leader more often than not) at a random instant
    "crash_point": 3,  # restart a replica that SIGKILLs itself at a named step
    "pod_delete": 3,
    "pod_evict": 3,  # DisruptionTarget, then a graceful delete
    "node_loss": 2,  # the pod's process dies, no final status, force-deleted
    "postgres_restart": 1,
    "api_429": 2,
    "api_500": 2,
    "api_slow": 2,
    "watch_close": 2,
    "parallelism_change": 2,
    "suspend_resume": 1,
}
KINDS = tuple(WEIGHTS)


@dataclass
class Environment:
    """What the faults act on."""

    kube: KubeEmulator
    postgres: PostgresServer | None
    replicas: list[Replica]
    studies: list[ChaosStudy]
    log: Callable[[str], None]


@dataclass(order=True)
class _Pending:
    due: float
    order: int
    action: Callable[[], object] = field(compare=False)


class FaultInjector:
    """Draws the next fault from the seed; applies it and its repair when due."""

    def __init__(self, seed: int, env: Environment, window_s: float, mean_gap_s: float = 1.5) -> None:
        self.rng = random.Random(seed)
        self.env = env
        self.window_s = window_s
        self.mean_gap_s = mean_gap_s
        self.injected: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()  # drawn but with nothing to act on (no running pod)
        self.exits: Counter[str] = Counter()  # replicas that exited though no fault killed them
        self._repairs: list[_Pending] = []
        self._order = itertools.count()
        self._start = time.monotonic()
        self._next_at = self._start + self.rng.uniform(1.0, 2 * mean_gap_s)
        self._restarting: set[str] = set()
        self._postgres_down = False  # stopped by a postgres_restart whose start is pending

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    @property
    def over(self) -> bool:
        return self.elapsed() >= self.window_s and not self._repairs

    def step(self) -> None:
        """Apply what is due: repairs first, then the next fault (within the window)."""
        now = time.monotonic()
        while self._repairs and self._repairs[0].due <= now:
            heapq.heappop(self._repairs).action()
        self._restart_crashed()
        if now >= self._next_at and self.elapsed() < self.window_s:
            kind = self.rng.choices(KINDS, weights=[WEIGHTS[k] for k in KINDS])[0]
            self._next_at = now + self.rng.expovariate(1.0 / self.mean_gap_s)
            getattr(self, f"_{kind}")(kind)

    def repair_all(self) -> None:
        """End of the window: apply every pending repair now. A replica still armed with a crash
        point stays armed (taking the lease over takes a while): it dies there, or never gets
        there, and keep_alive brings it back without it."""
        while self._repairs:
            heapq.heappop(self._repairs).action()
        self.keep_alive()

    def keep_alive(self) -> None:
        """After the window: restart a replica that died (at once, with no crash point)."""
        self._restart_crashed()
        while self._repairs:
            heapq.heappop(self._repairs).action()

    def _later(self, seconds: float, action: Callable[[], object]) -> None:
        heapq.heappush(self._repairs, _Pending(time.monotonic() + seconds, next(self._order), action))

    def _count(self, kind: str, detail: str) -> None:
        self.injected[kind] += 1
        self.env.log(f"[{self.elapsed():6.1f}s] fault {kind}: {detail}")

    # -- controllers ------------------------------------------------------------------------------

    def _restart_crashed(self) -> None:
        """A replica that died at its crash point comes back (without one) a moment later."""
        for replica in self.env.replicas:
            if replica.name in self._restarting or replica.alive or replica.process is None:
                continue
            if replica.crashed_at_point():
                self.injected[f"crash_point:{replica.crash_at}"] += 1
                self.env.log(f"[{self.elapsed():6.1f}s] {replica.name} died at {replica.crash_at}")
            else:  # nobody killed it: worth a look in its log
                self.exits[replica.name] += 1
                self.env.log(f"[{self.elapsed():6.1f}s] {replica.name} exited by itself "
                             f"(code {replica.process.returncode})")
            self._schedule_restart(replica, self.rng.uniform(0.5, 3.0))

    def _schedule_restart(self, replica: Replica, seconds: float, crash_at: str | None = None) -> None:
        self._restarting.add(replica.name)

        def restart() -> None:
            self._restarting.discard(replica.name)
            replica.crash_at = crash_at
            replica.start()

        self._later(seconds, restart)

    def _pick_replica(self, leader_share: float) -> Replica | None:
        # A replica armed with a crash point is left alone until it gets there.
        alive = [r for r in self.env.replicas
                 if r.alive and r.name not in self._restarting and r.crash_at is None]
        if not alive:
            return None
        leading = leader_pid(self.env.kube)
        leaders = [r for r in alive if r.pid == leading]
        if leaders and self.rng.random() < leader_share:
            return leaders[0]
        return alive[self.rng.randrange(len(alive))]

    def _controller_kill(self, kind: str) -> None:
        replica = self._pick_replica(leader_share=0.7)
        delay = self.rng.uniform(0.5, 4.0)
        if replica is None:
            self.skipped[kind] += 1
            return
        was_leader = replica.pid == leader_pid(self.env.kube)
        replica.kill()
        replica.crashes_seen = replica.log().count("crash point reached")
        self._count(kind, f"SIGKILL {replica.name}{' (leader)' if was_leader else ''}, back in {delay:.1f} s")
        self._schedule_restart(replica, delay)

    def _crash_point(self, kind: str) -> None:
        """Arm the standby with a named crash point, then kill the leader: the standby takes the
        lease over and dies at that step (only the leader runs the steps), the other comes back."""
        alive = [r for r in self.env.replicas
                 if r.alive and r.name not in self._restarting and r.crash_at is None]
        point = self.rng.choice(NAMED_CRASH_POINTS)
        if len(alive) < 2:
            self.skipped[kind] += 1
            return
        leading = leader_pid(self.env.kube)
        leader = next((r for r in alive if r.pid == leading), alive[self.rng.randrange(2)])
        standby = next(r for r in alive if r is not leader)
        standby.kill()
        standby.crashes_seen = standby.log().count("crash point reached")
        standby.crash_at = point
        standby.start()
        leader.kill()
        leader.crashes_seen = leader.log().count("crash point reached")
        back = self.rng.uniform(3.0, 8.0)
        self._count(kind, f"{standby.name} armed to die at {point}; "
                          f"leader {leader.name} killed, back in {back:.1f} s")
        self._schedule_restart(leader, back)

    # -- trial pods -------------------------------------------------------------------------------

    def _running_pod(self) -> dict[str, Any] | None:
        listed = self.env.kube.api.list("pods", NAMESPACE, label_selector="tunefleet.dev/study")
        pods = sorted((p for p in listed if _running(p)), key=lambda p: p["metadata"]["name"])
        index = self.rng.randrange(1 << 30)
        return pods[index % len(pods)] if pods else None

    def _on_pod(self, kind: str, act: Callable[[str], object]) -> None:
        pod = self._running_pod()
        if pod is None:
            self.skipped[kind] += 1
            return
        name = pod["metadata"]["name"]
        try:
            act(name)
        except (ApiError, KeyError, ValueError):
            self.skipped[kind] += 1  # it ended meanwhile
            return
        self._count(kind, name)

    def _pod_delete(self, kind: str) -> None:
        self._on_pod(kind, lambda name: self.env.kube.api.delete("pods", NAMESPACE, name))

    def _pod_evict(self, kind: str) -> None:
        self._on_pod(kind, lambda name: self.env.kube.runner.preempt_pod(NAMESPACE, name))

    def _node_loss(self, kind: str) -> None:
        self._on_pod(kind, lambda name: self.env.kube.runner.vanish_pod(NAMESPACE, name))

    # -- PostgreSQL and the API server ------------------------------------------------------------

    def _postgres_restart(self, kind: str) -> None:
        postgres = self.env.postgres
        # Drawn again while the server is down: it is already down, and a second start scheduled
        # behind the first would find it running and fail (seed 408 of the first 30-minute soak).
        if postgres is None or postgres.data_dir is None or self._postgres_down:
            self.skipped[kind] += 1
            return
        down = self.rng.uniform(0.5, 4.0)
        postgres.stop("immediate")
        self._postgres_down = True
        self._count(kind, f"down for {down:.1f} s")

        def back_up() -> None:
            postgres.start()
            self._postgres_down = False

        self._later(down, back_up)

    def _disrupt(self, kind: str, disruption: Disruption) -> None:
        seconds = self.rng.uniform(2.0, 8.0)
        self.env.kube.disrupt(disruption)
        self._count(kind, f"{disruption.share:.0%} of requests for {seconds:.1f} s")
        self._later(seconds, lambda: self.env.kube.disrupt(None))

    def _api_429(self, kind: str) -> None:
        self._disrupt(kind, Disruption("429", self.rng.uniform(0.1, 0.5), seed=self.rng.randrange(1 << 30)))

    def _api_500(self, kind: str) -> None:
        self._disrupt(kind, Disruption("500", self.rng.uniform(0.1, 0.4), seed=self.rng.randrange(1 << 30)))

    def _api_slow(self, kind: str) -> None:
        self._disrupt(kind, Disruption("slow", self.rng.uniform(0.3, 1.0), self.rng.uniform(0.2, 1.5),
                                       seed=self.rng.randrange(1 << 30)))

    def _watch_close(self, kind: str) -> None:
        abort = self.rng.random() < 0.5
        closed = self.env.kube.close_watches(abort=abort)
        self._count(kind, f"{closed} watches {'dropped' if abort else 'ended'}")

    # -- spec changes -----------------------------------------------------------------------------

    def _patch_study(self, name: str, spec: dict[str, Any]) -> bool:
        try:
            self.env.kube.api.patch(STUDIES, NAMESPACE, name, {"spec": spec})
        except ApiError:
            return False
        return True

    def _parallelism_change(self, kind: str) -> None:
        study = self.env.studies[self.rng.randrange(len(self.env.studies))]
        parallelism = self.rng.randint(1, 4)
        if self._patch_study(study.name, {"parallelism": parallelism}):
            self._count(kind, f"{study.name} parallelism {parallelism}")

    def _suspend_resume(self, kind: str) -> None:
        study = self.env.studies[self.rng.randrange(len(self.env.studies))]
        seconds = self.rng.uniform(1.0, 5.0)
        if self._patch_study(study.name, {"suspend": True}):
            self._count(kind, f"{study.name} suspended for {seconds:.1f} s")
            self._later(seconds, lambda: self._patch_study(study.name, {"suspend": False}))


def _running(pod: dict[str, Any]) -> bool:
    deleting = pod["metadata"].get("deletionTimestamp")
    return (pod.get("status") or {}).get("phase") == "Running" and not deleting
