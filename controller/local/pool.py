"""The local runner's worker processes: which are idle, and which GPUs each one owns."""

from __future__ import annotations

import queue
from pathlib import Path

from controller.budget.slots import CUDA_VISIBLE_DEVICES, GpuSlots
from controller.local.workers import LocalWorker, WorkerEvent

# What every worker process (and every further rank of a multi-node trial) gets beside its env.
WORKER_ENV = {"TUNEFLEET_LOG_FORMAT": "json"}


class WorkerPool:
    """Starts, hands out and retires worker processes.

    With ``trial.gpus: k`` each worker owns k of this machine's GPUs (``CUDA_VISIBLE_DEVICES``)
    for its life, so no more workers run at once than there are slots (:attr:`gpu_capacity`).
    """

    def __init__(
        self, events: queue.Queue[WorkerEvent], log_dir: Path, workdir: str, gpus_per_trial: int
    ) -> None:
        self._events = events
        self._log_dir = log_dir
        self._workdir = workdir
        self._gpu_slots = GpuSlots.for_trial(gpus_per_trial)
        self._slot_of: dict[int, str] = {}
        self.workers: dict[int, LocalWorker] = {}
        self.idle: list[LocalWorker] = []
        self._next_id = 0

    @property
    def gpu_capacity(self) -> int | None:
        """How many workers the machine's GPUs allow at once; None without GPUs."""
        return self._gpu_slots.capacity if self._gpu_slots is not None else None

    def spawn(self) -> LocalWorker:
        worker_id = self._next_id
        self._next_id += 1
        env = dict(WORKER_ENV)
        if self._gpu_slots is not None:
            slot = self._slot_of[worker_id] = self._gpu_slots.take()
            env[CUDA_VISIBLE_DEVICES] = slot
        worker = LocalWorker(
            worker_id, self._events, self._log_dir / f"worker-{worker_id}.log", self._workdir, env
        )
        self.workers[worker_id] = worker
        return worker

    def retire_idle(self) -> None:
        """Let idle workers exit (nothing more will start)."""
        for worker in self.idle:
            worker.retire()
        self.idle.clear()

    def forget(self, worker: LocalWorker) -> None:
        """The worker is gone or going: give its GPUs back and never hand it a trial again."""
        slot = self._slot_of.pop(worker.worker_id, None)
        if slot is not None and self._gpu_slots is not None:
            self._gpu_slots.give_back(slot)
        worker.retire()
        self.workers.pop(worker.worker_id, None)
        if worker in self.idle:
            self.idle.remove(worker)

    def kill_all(self) -> None:
        for worker in list(self.workers.values()):
            worker.kill()

    def shut_down(self, wait_s: float = 5) -> None:
        """Ask every worker to exit; kill those that do not within ``wait_s``."""
        for worker in list(self.workers.values()):
            worker.retire()
        for worker in list(self.workers.values()):
            if worker.wait(timeout=wait_s) is None:
                worker.kill()
        self.workers.clear()
        self.idle.clear()
