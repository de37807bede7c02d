"""Reproducibility: the worker's seeding and deterministic flags, and resolved strategy settings."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna

from controller.analysis.reproducibility import resolved_settings

# Run in a fresh interpreter: deterministic algorithms are a process-wide torch setting.
PROBE = """
import json, os, random, sys
import numpy, torch
from trial_worker.seeding import seed_everything, gpu_model
applied = seed_everything(int(sys.argv[1]), deterministic=sys.argv[2] == "1")
print(json.dumps({
    "applied": applied,
    "draws": [random.random(), float(numpy.random.rand()), float(torch.rand(1))],
    "algorithms": torch.are_deterministic_algorithms_enabled(),
    "cudnn": [torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark],
    "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    "env_seed": os.environ["TUNEFLEET_SEED"],
    "hash_seed": os.environ["PYTHONHASHSEED"],
    "gpu": gpu_model(),
}))
"""


def probe(seed: int, deterministic: bool) -> dict[str, object]:
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(seed), "1" if deterministic else "0"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    document: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return document


def test_the_same_seed_gives_the_same_draws_in_python_numpy_and_torch() -> None:
    first, again, other = probe(123, False), probe(123, False), probe(124, False)
    assert first["draws"] == again["draws"]
    assert first["draws"] != other["draws"]
    assert first["env_seed"] == "123" and first["hash_seed"] == "123"
    applied = first["applied"]
    assert isinstance(applied, dict) and applied["seeded"][:3] == ["python", "numpy", "torch"]


def test_deterministic_sets_torch_cudnn_and_cublas_flags() -> None:
    plain = probe(5, False)
    assert plain["algorithms"] is False and plain["cublas"] is None
    strict = probe(5, True)
    assert strict["algorithms"] is True
    assert strict["cudnn"] == [True, False]
    assert strict["cublas"] == ":4096:8"
    assert strict["draws"] == plain["draws"]  # the flags change kernels, not the seeds


def test_gpu_model_is_none_without_cuda() -> None:
    assert probe(1, False)["gpu"] is None


def test_resolved_settings_name_every_constructor_setting() -> None:
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3)
    settings = resolved_settings(pruner, {"n_startup_trials": 3})
    assert settings == {"n_startup_trials": 3, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1}
    sampler = optuna.samplers.TPESampler(seed=9, multivariate=True, n_startup_trials=4)
    resolved = resolved_settings(sampler, {"seed": 9})
    assert resolved["multivariate"] is True and resolved["n_startup_trials"] == 4 and resolved["seed"] == 9
    assert resolved["prior_weight"] == 1.0  # held in the sampler's parzen-estimator parameters
