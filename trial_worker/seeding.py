"""Seeding every random number generator a trial may use, and deterministic flags."""

from __future__ import annotations

import os
import random
import sys

SEED_ENV = "TUNEFLEET_SEED"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (CPU and CUDA) if they are loaded or importable.

    Args:
        seed: the trial's seed, from the assignment.
        deterministic: also make torch choose deterministic algorithms (slower, but the same
            inputs give the same outputs on the same hardware).
    """
    os.environ[SEED_ENV] = str(seed)
    if deterministic:
        # cuBLAS reads this when its handle is created, so it must be set before any CUDA work.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    try:
        import numpy
    except ImportError:
        pass
    else:
        numpy.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is None and deterministic:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is not None:
        _seed_torch(torch, seed, deterministic)


def _seed_torch(torch: object, seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)  # type: ignore[attr-defined]
    cuda = torch.cuda  # type: ignore[attr-defined]
    if cuda.is_available():
        cuda.manual_seed_all(seed)
    cudnn = torch.backends.cudnn  # type: ignore[attr-defined]
    if deterministic:
        torch.use_deterministic_algorithms(True)  # type: ignore[attr-defined]
        cudnn.deterministic = True
        cudnn.benchmark = False
