"""Local GPU slots: a trial with ``gpus: k`` gets k of this machine's GPUs to itself.

A local worker process keeps one slot for its whole life (CUDA reads ``CUDA_VISIBLE_DEVICES``
once, when it initializes), so the runner hands a slot to each worker it spawns and takes it
back when the worker goes. Charging is the ledger's: k x wall seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Mapping

from controller.spec.errors import SpecError, SpecInvalid

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


def local_gpu_ids(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this machine offers: ``CUDA_VISIBLE_DEVICES`` if set, else what nvidia-smi lists."""
    env = os.environ if environ is None else environ
    visible = env.get(CUDA_VISIBLE_DEVICES)
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU.
        return ids[: ids.index("-1")] if "-1" in ids else ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listed = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listed.returncode != 0:
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


class GpuSlots:
    """Disjoint groups of ``per_trial`` GPUs, handed out and taken back; thread-safe."""

    def __init__(self, gpu_ids: list[str], per_trial: int) -> None:
        if per_trial < 1:
            raise ValueError("per_trial: a GPU slot holds at least one GPU")
        groups = len(gpu_ids) // per_trial
        self.per_trial = per_trial
        self.gpu_ids = list(gpu_ids)
        self._free = [",".join(gpu_ids[i * per_trial : (i + 1) * per_trial]) for i in range(groups)]
        self._free.reverse()  # hand out the first GPUs first
        self.capacity = groups
        self._lock = threading.Lock()

    @classmethod
    def for_trial(cls, gpus: int, environ: Mapping[str, str] | None = None) -> GpuSlots | None:
        """Slots for trials of ``gpus`` GPUs on this machine; None for CPU-only trials.

        Raises:
            SpecInvalid: naming ``spec.trial.gpus`` when the machine has fewer GPUs than one trial needs.
        """
        if gpus <= 0:
            return None
        ids = local_gpu_ids(environ)
        if len(ids) < gpus:
            raise SpecInvalid([
                SpecError(
                    "spec.trial.gpus",
                    f"each trial needs {gpus} GPU{'s' if gpus != 1 else ''} but this machine offers "
                    f"{len(ids)} (from {CUDA_VISIBLE_DEVICES} or nvidia-smi)",
                )
            ])
        return cls(ids, gpus)

    def take(self) -> str:
        """A free slot as a ``CUDA_VISIBLE_DEVICES`` value.

        Raises:
            RuntimeError: if every slot is taken (the runner caps parallelism at ``capacity``).
        """
        with self._lock:
            if not self._free:
                raise RuntimeError(f"all {self.capacity} GPU slots are in use")
            return self._free.pop()

    def give_back(self, slot: str) -> None:
        with self._lock:
            if slot not in self._free:
                self._free.append(slot)

    @property
    def free(self) -> int:
        with self._lock:
            return len(self._free)
