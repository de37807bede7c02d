"""Two controller replicas as the chart runs them (``--peering``), killed and restarted at will.

A replica may be started with a named crash point (``TUNEFLEET_CRASH_AT``, see
``controller/crashpoints.py``): it SIGKILLs itself the first time it reaches that step.

Both replicas sign trial tokens for the emulated cluster's one trial gateway (as the chart's do).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from controller.kube.leadership import LEASE_ANNOTATION
from tests.cluster.controller_harness import ControllerProcess
from tests.cluster.emulator import KubeEmulator

PEERING = "tunefleet"
CRASH_ENV = "TUNEFLEET_CRASH_AT"  # the controller's crash-point hook (a test hook, see faults.py)
CRASH_MESSAGE = "crash point reached"


class Replica(ControllerProcess):
    """One replica; ``crash_at`` names the crash point its next start carries (None: none)."""

    def __init__(self, kube: KubeEmulator, storage_url: str, work_dir: Path, name: str) -> None:
        super().__init__(kube, storage_url, work_dir, "--peering", PEERING, name=name)
        self.name = name
        self.crash_at: str | None = None
        self.starts = 0
        self.crashes_seen = 0

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT (dump_stacks) writes every thread's stack to the log
        if self.crash_at is not None:
            env[CRASH_ENV] = self.crash_at
        return env

    def start(self) -> Replica:
        self.starts += 1
        super().start()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.alive and self.process is not None else None

    def scheduling(self) -> str:
        """CPU time run and waited for (``/proc/<pid>/task/*/schedstat``): a replica that waited far longer
        than it ran was starved by busier processes, not stuck on a lock."""
        if not self.alive or self.process is None:
            return f"{self.name}: not running"
        ran = waited = 0.0
        try:  # summed over its threads
            for task in Path(f"/proc/{self.process.pid}/task").iterdir():
                ran_ns, waited_ns, _slices = (task / "schedstat").read_text().split()
                ran, waited = ran + int(ran_ns) / 1e9, waited + int(waited_ns) / 1e9
        except (OSError, ValueError):
            return f"{self.name}: no schedstat"
        return f"{self.name}: ran {ran:.1f} s on a CPU, waited {waited:.1f} s for one"

    def dump_stacks(self) -> None:
        """Every thread's stack into the log (then the process ends): what a hung replica waits on."""
        if self.alive and self.process is not None:
            os.kill(self.process.pid, signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)

    def crashed_at_point(self) -> bool:
        """True once per crash: the log holds one more "crash point reached" than counted."""
        seen = self.log().count(CRASH_MESSAGE)
        if seen > self.crashes_seen:
            self.crashes_seen = seen
            return True
        return False


def leader_pid(kube: KubeEmulator) -> int | None:
    """The pid in the lease holder's identity (``<host>-<pid>-<hex>``), if a lease is held."""
    for resource, namespace in (("kopfpeerings.kopf.dev", None), ("clusterkopfpeerings.kopf.dev", None)):
        for peering in kube.api.list(resource, namespace):
            if peering["metadata"]["name"] != PEERING:
                continue
            raw = (peering["metadata"].get("annotations") or {}).get(LEASE_ANNOTATION)
            holder = _holder(raw)
            if holder is not None:
                parts = holder.rsplit("-", 2)
                if len(parts) == 3 and parts[1].isdigit():
                    return int(parts[1])
    return None


def _holder(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        return None
    holder = parsed.get("holder") if isinstance(parsed, dict) else None
    return str(holder) if holder else None
