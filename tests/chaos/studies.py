"""The Studies a chaos run applies at once, and the GPUBudget two of them share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.kube.manifests import DEADLINE_GRACE_SECONDS, KUBELET_REACTION_SECONDS
from tests.cluster.controller_harness import NAMESPACE, TRIAL_TERMINATION_GRACE_S, study_manifest

MAX_DURATION_S = 10
WORST_CASE_S = MAX_DURATION_S + DEADLINE_GRACE_SECONDS + TRIAL_TERMINATION_GRACE_S + KUBELET_REACTION_SECONDS
GPUBUDGET_NAME = "chaos-team"
GPUBUDGET_WORST_CASES = 5  # fewer than the two GPU studies' parallelism: reservations must wait
MAX_FAILED_TRIALS = 4


@dataclass(frozen=True)
class ChaosStudy:
    name: str
    body: dict[str, Any]
    gpus: int
    max_trials: int
    confirm_runs: int

    @property
    def key(self) -> str:
        return f"{NAMESPACE}/{self.name}"


def _study(name: str, objective: str, *, max_trials: int, parallelism: int, seed: int,
           gpus: int = 0, **spec: Any) -> dict[str, Any]:
    body = study_manifest(
        name, objective=f"tests.chaos.objectives:{objective}", max_trials=max_trials,
        parallelism=parallelism, max_retries=3, max_duration=f"{MAX_DURATION_S}s", **spec,
    )
    body["spec"]["searchSpace"] = {
        "x": {"type": "float", "low": -10, "high": 10},
        "y": {"type": "int", "low": 0, "high": 50},
    }
    body["spec"]["strategy"]["seed"] = seed
    body["spec"]["trial"]["gpus"] = gpus
    body["spec"]["budget"]["maxFailedTrials"] = MAX_FAILED_TRIALS
    return body


def chaos_studies(seed: int) -> list[ChaosStudy]:
    """Two GPU studies sharing the namespace's GPUBudget, a multi-objective one, one with
    confirmation runs; sampler seeds come from the run's seed."""
    gpu_a = _study("gpu-a", "quadratic", max_trials=8, parallelism=3, seed=seed % 1000 + 1, gpus=1)
    gpu_b = _study("gpu-b", "quadratic", max_trials=6, parallelism=3, seed=seed % 1000 + 2, gpus=1)
    pareto = _study("pareto", "two_distances", max_trials=8, parallelism=3, seed=seed % 1000 + 3)
    pareto["spec"]["objective"] = {"metrics": [
        {"name": "to_two", "direction": "minimize"}, {"name": "to_minus_two", "direction": "minimize"},
    ]}
    confirm = _study("confirm", "noisy_quadratic", max_trials=6, parallelism=2, seed=seed % 1000 + 4,
                     confirm={"topK": 2, "repeats": 2})
    return [
        ChaosStudy("gpu-a", gpu_a, 1, 8, 0),
        ChaosStudy("gpu-b", gpu_b, 1, 6, 0),
        ChaosStudy("pareto", pareto, 0, 8, 0),
        ChaosStudy("confirm", confirm, 0, 6, 4),
    ]


def gpubudget() -> dict[str, Any]:
    return {
        "apiVersion": "tunefleet.dev/v1alpha1",
        "kind": "GPUBudget",
        "metadata": {"name": GPUBUDGET_NAME, "namespace": NAMESPACE},
        "spec": {"gpuHours": GPUBUDGET_WORST_CASES * WORST_CASE_S / 3600, "period": "none"},
    }


def gpubudget_limit_s() -> int:
    return GPUBUDGET_WORST_CASES * WORST_CASE_S
