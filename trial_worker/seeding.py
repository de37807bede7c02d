"""Seeding every random number generator a trial may use, and deterministic flags.

Called by the worker with the assignment's seed after the objective is imported and before it
runs, so the objective's module-level imports (torch, numpy) are seeded too. Command-mode trials
get the seed as ``TUNEFLEET_SEED`` and ``PYTHONHASHSEED`` in their environment.

With ``deterministic`` the worker also sets, before the objective runs:
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (read by cuBLAS when its handle is created, so before any CUDA
work), ``torch.use_deterministic_algorithms(True)`` (an operation without a deterministic
implementation raises instead of silently varying), ``cudnn.deterministic = True`` and
``cudnn.benchmark = False`` (benchmarking picks kernels by timing, which varies between runs).
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

SEED_ENV = "TUNEFLEET_SEED"
CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int, deterministic: bool = False) -> dict[str, Any]:
    """Seed python, numpy and torch (CPU and CUDA) if they are loaded or importable.

    Args:
        seed: the trial's seed, from the assignment.
        deterministic: also make torch choose deterministic algorithms (slower, but the same
            inputs give the same outputs on the same hardware).

    Returns:
        What was set, for the trial's record: seeded libraries and deterministic flags.
    """
    applied: dict[str, Any] = {"seed": seed, "seeded": ["python"], "deterministic": deterministic}
    os.environ[SEED_ENV] = str(seed)
    os.environ["PYTHONHASHSEED"] = str(seed % 2**32)  # for command-mode children; not this process
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        applied["CUBLAS_WORKSPACE_CONFIG"] = os.environ["CUBLAS_WORKSPACE_CONFIG"]
    random.seed(seed)
    try:
        import numpy
    except ImportError:
        pass
    else:
        numpy.random.seed(seed % 2**32)
        applied["seeded"].append("numpy")
    torch = sys.modules.get("torch")
    if torch is None and deterministic:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is not None:
        applied["seeded"] += _seed_torch(torch, seed, deterministic)
    return applied


def _seed_torch(torch: Any, seed: int, deterministic: bool) -> list[str]:
    seeded = ["torch"]
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        seeded.append("cuda")
    cudnn = torch.backends.cudnn
    if deterministic:
        torch.use_deterministic_algorithms(True)
        cudnn.deterministic = True
        cudnn.benchmark = False
    return seeded


def gpu_model() -> str | None:
    """The model of the GPU(s) this process sees through torch, if torch is loaded and has CUDA.

    Does not import torch: a trial that never loaded it used no GPU through it.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    return ", ".join(names) or None
