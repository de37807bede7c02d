"""The other ranks of a local trial that spans several nodes (``trial.nodes`` > 1).

Rank 0 runs in a :class:`~controller.local.workers.LocalWorker` like any trial and is the trial's
voice. Ranks 1..N-1 are one-shot ``tunefleet-worker`` processes started beside it with the same
assignment and their own rank, meeting rank 0 on 127.0.0.1 at a port free on this machine, as
the pods of an Indexed Job meet at the index-0 pod's DNS name on the cluster.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from controller.local.workers import WorkerEvent
from trial_worker.contract import ASSIGNMENT_ENV, Assignment, Rendezvous

LOCAL_ADDRESS = "127.0.0.1"
STOP_GRACE_S = 10.0  # followers still finishing when rank 0 reported get this long to exit


def local_rendezvous(nodes: int) -> Rendezvous:
    """Rank 0's place: a port free now, below the ephemeral range (the trial's processes bind it next).

    A port the OS hands out for binding port 0 comes from the range it also uses for outgoing
    connections, so another process's connection could take it before rank 0 binds it; a port
    below that range is only ever taken by an explicit bind.
    """
    return Rendezvous(nodes=nodes, node_rank=0, master_addr=LOCAL_ADDRESS, master_port=_free_port())


def _free_port() -> int:
    low = _ephemeral_low()
    candidates = random.Random().sample(range(max(1024, low - 12000), low), 64) if low > 14000 else []
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOCAL_ADDRESS, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # all taken: any free port
        probe.bind((LOCAL_ADDRESS, 0))
        return int(probe.getsockname()[1])


def _ephemeral_low() -> int:
    """The lowest port the OS assigns to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class LocalGang:
    """Ranks 1..N-1 of one trial whose rank 0 runs in worker ``worker_id``.

    Each follower's exit comes back as a :class:`WorkerEvent` with ``rank`` set, so the runner can
    end the whole trial when one rank fails, as a pod failure policy fails the whole Job.
    """

    def __init__(
        self,
        assignment: Assignment,
        worker_id: int,
        events: queue.Queue[WorkerEvent],
        log_dir: Path,
        cwd: str,
        env: dict[str, str],
    ) -> None:
        rendezvous = assignment.rendezvous
        assert rendezvous is not None and rendezvous.leads, "a gang starts from rank 0's assignment"
        self.trial_number = assignment.trial_number
        self._processes: list[subprocess.Popen[bytes]] = []
        for rank in range(1, rendezvous.nodes):
            mine = assignment.model_copy(
                update={"rendezvous": rendezvous.model_copy(update={"node_rank": rank}), "log_path": None}
            )
            log_path = log_dir / f"trial-{assignment.trial_number}.rank-{rank}.log"
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "trial_worker"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={
                        **os.environ,
                        **env,
                        ASSIGNMENT_ENV: mine.model_dump_json(),
                        "PYTHONUNBUFFERED": "1",
                    },
                    cwd=cwd,
                    start_new_session=True,
                )
            self._processes.append(process)
            threading.Thread(
                target=self._wait, args=(process, rank, worker_id, events), name=f"rank-{rank}", daemon=True
            ).start()

    def _wait(
        self, process: subprocess.Popen[bytes], rank: int, worker_id: int, events: queue.Queue[WorkerEvent]
    ) -> None:
        code = process.wait()
        events.put(WorkerEvent(worker_id, exit_code=code, rank=rank, trial_number=self.trial_number))

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop every follower: at once, or after ``grace_s`` for them to finish (in a thread, so
        the runner does not wait)."""
        if grace_s <= 0:
            self._kill()
            return
        threading.Thread(target=self._stop_after, args=(grace_s,), daemon=True).start()

    def _stop_after(self, grace_s: float) -> None:
        for process in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace_s)
        self._kill()

    def _kill(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> None:
        for process in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)
