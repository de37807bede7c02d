"""Invalid Study and GPUBudget documents, shared by the unit, cluster and real-cluster tiers.

``CORPUS`` is issue 18's corpus: 24 Study specs that ``tunefleet validate`` refuses, 11 of them
breaking a rule that spans fields and 13 a single field. ``RULE_EXAMPLES`` breaks each remaining
admission rule once (tests/unit/test_crd_rules.py fails when a CEL rule has no example), and
``GPUBUDGETS`` does the same for GPUBudget. Each names the field ``tunefleet validate`` reports
(dotted, as the CLI prints it) and whether ``kubectl apply`` refuses it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

VALID_STUDY: dict[str, Any] = {
    "apiVersion": "tunefleet.dev/v1alpha1",
    "kind": "Study",
    "metadata": {"name": "bad-spec"},
    "spec": {
        "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
        "searchSpace": {
            "lr": {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True},
            "layers": {"type": "int", "low": 1, "high": 4},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
        },
        "strategy": {"sampler": "random", "pruner": "none", "seed": 7},
        "budget": {"maxTrials": 4, "deadline": "1h"},
        "trial": {"command": ["python", "train.py", "--lr={{lr}}", "--layers", "{{ layers }}"]},
    },
}

VALID_GPUBUDGET: dict[str, Any] = {
    "apiVersion": "tunefleet.dev/v1alpha1",
    "kind": "GPUBudget",
    "metadata": {"name": "bad-budget"},
    "spec": {"gpuHours": 10, "period": "monthly", "maxGpuHoursPerStudy": 4},
}


@dataclass(frozen=True)
class BadSpec:
    """One invalid document: what ``tunefleet validate`` names, and when Kubernetes refuses it."""

    id: str
    document: dict[str, Any]
    field: str
    at_admission: bool = True

    @property
    def kind(self) -> str:
        return str(self.document["kind"])


def _changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with dotted paths set (value None removes the key)."""
    document = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is None:
            node.pop(last)
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return document


def study(spec_id: str, field: str, changes: dict[str, Any], *, at_admission: bool = True) -> BadSpec:
    return BadSpec(spec_id, _changed(VALID_STUDY, changes), field, at_admission)


def gpubudget(spec_id: str, field: str, changes: dict[str, Any]) -> BadSpec:
    return BadSpec(spec_id, _changed(VALID_GPUBUDGET, changes), field)


# A valid population-based study (each PBT example breaks one of its rules).
PBT = {
    "spec.strategy.sampler": "pbt",
    "spec.searchSpace.lr.mutable": True,
    "spec.objective.steps": 10,
}
TWO_METRICS = [{"name": "loss", "direction": "minimize"}, {"name": "latency", "direction": "minimize"}]

CROSS_FIELD = [
    study("low-above-high", "spec.searchSpace.lr.high", {"spec.searchSpace.lr.high": 1.0e-5}),
    study("log-low-not-positive", "spec.searchSpace.lr.low", {"spec.searchSpace.lr.low": 0.0}),
    study("int-fractional-bound", "spec.searchSpace.layers.high", {"spec.searchSpace.layers.high": 4.5}),
    study(
        "condition-unknown-parameter",
        "spec.searchSpace.momentum.when.solver",
        {"spec.searchSpace.momentum.when": {"solver": "sgd"}},
        at_admission=False,
    ),
    study(
        "condition-value-not-a-choice",
        "spec.searchSpace.momentum.when.optimizer",
        {"spec.searchSpace.momentum.when": {"optimizer": "rmsprop"}},
        at_admission=False,
    ),
    study(
        "duplicate-metric",
        "spec.objective.metrics",
        {"spec.objective.metrics": [*TWO_METRICS[:1], {"name": "loss", "direction": "maximize"}]},
    ),
    study(
        "goal-with-two-metrics",
        "spec.objective.goal",
        {"spec.objective": {"metrics": TWO_METRICS, "goal": 0.1}},
    ),
    study(
        "grid-over-a-continuous-space",
        "spec.searchSpace",
        # One continuous float: with several, the API server may name another one than the CLI.
        {
            "spec.strategy.sampler": "grid",
            "spec.searchSpace.lr": {"type": "categorical", "choices": [0.01, 0.1]},
        },
    ),
    study("neither-python-nor-command", "spec.trial.python", {"spec.trial.command": None}),
    study("both-python-and-command", "spec.trial.python", {"spec.trial.python": "train:objective"}),
    study(
        "placeholder-names-no-parameter",
        "spec.trial.command",
        {"spec.trial.command": ["python", "train.py", "--lr={{lr}}", "--wd={{ weight_decay }}"]},
    ),
]

SINGLE_FIELD = [
    study("unknown-parameter-type", "spec.searchSpace.lr", {"spec.searchSpace.lr.type": "normal"}),
    study(
        "bad-direction", "spec.objective.metrics.0.direction", {"spec.objective.metrics.0.direction": "down"}
    ),
    study("bad-metric-name", "spec.objective.metrics.0.name", {"spec.objective.metrics.0.name": "val loss"}),
    study("no-metrics", "spec.objective.metrics", {"spec.objective.metrics": []}),
    study("zero-parallelism", "spec.parallelism", {"spec.parallelism": 0}),
    study("too-many-gpus", "spec.trial.gpus", {"spec.trial.gpus": 65}),
    study("too-many-retries", "spec.trial.maxRetries", {"spec.trial.maxRetries": 21}),
    study("unknown-sampler", "spec.strategy.sampler", {"spec.strategy.sampler": "bayesian"}),
    study("unknown-pruner", "spec.strategy.pruner", {"spec.strategy.pruner": "early"}),
    study("no-gpu-hours", "spec.budget.gpuHours", {"spec.budget.gpuHours": 0}),
    study("bad-deadline", "spec.budget.deadline", {"spec.budget.deadline": "3 weeks"}),
    study(
        "python-entry-form",
        "spec.trial.python",
        {"spec.trial.command": None, "spec.trial.python": "train.py"},
    ),
    study("memory-quantity", "spec.trial.memory", {"spec.trial.memory": "lots"}),
]

CORPUS = CROSS_FIELD + SINGLE_FIELD
"""Issue 18's 24 invalid Study specs."""

RULE_EXAMPLES = [
    study(
        "float-log-with-step",
        "spec.searchSpace.lr.step",
        {"spec.searchSpace.lr.step": 0.01},
    ),
    study(
        "int-log-low-below-one",
        "spec.searchSpace.layers.low",
        {"spec.searchSpace.layers": {"type": "int", "low": 0, "high": 4, "log": True}},
    ),
    study(
        "int-log-with-step",
        "spec.searchSpace.layers.step",
        {"spec.searchSpace.layers": {"type": "int", "low": 1, "high": 8, "log": True, "step": 2}},
    ),
    study("int-fractional-low", "spec.searchSpace.layers.low", {"spec.searchSpace.layers.low": 0.5}),
    study("int-fractional-step", "spec.searchSpace.layers.step", {"spec.searchSpace.layers.step": 1.5}),
    study("float-without-low", "spec.searchSpace.lr.low", {"spec.searchSpace.lr.low": None}),
    study("float-without-high", "spec.searchSpace.lr.high", {"spec.searchSpace.lr.high": None}),
    study("int-without-low", "spec.searchSpace.layers.low", {"spec.searchSpace.layers.low": None}),
    study("int-without-high", "spec.searchSpace.layers.high", {"spec.searchSpace.layers.high": None}),
    study("categorical-with-low", "spec.searchSpace.optimizer.low", {"spec.searchSpace.optimizer.low": 0}),
    study("categorical-with-high", "spec.searchSpace.optimizer.high", {"spec.searchSpace.optimizer.high": 1}),
    study("categorical-with-log", "spec.searchSpace.optimizer.log", {"spec.searchSpace.optimizer.log": True}),
    study("categorical-with-step", "spec.searchSpace.optimizer.step", {"spec.searchSpace.optimizer.step": 1}),
    study(
        "float-with-choices",
        "spec.searchSpace.lr.choices",
        {"spec.searchSpace.lr.choices": [0.1, 0.2]},
        at_admission=False,
    ),
    study(
        "categorical-without-choices",
        "spec.searchSpace.optimizer.choices",
        {"spec.searchSpace.optimizer.choices": None},
        at_admission=False,
    ),
    study(
        "constraint-is-an-objective-metric",
        "spec.objective.constraints",
        {"spec.objective.constraints": ["loss"]},
    ),
    study(
        "patience-with-two-metrics",
        "spec.budget.patience",
        {"spec.objective.metrics": TWO_METRICS, "spec.budget.patience": 5},
    ),
    study(
        "cmaes-with-two-metrics",
        "spec.strategy.sampler",
        {"spec.objective.metrics": TWO_METRICS, "spec.strategy.sampler": "cmaes"},
    ),
    study("nsga2-with-one-metric", "spec.strategy.sampler", {"spec.strategy.sampler": "nsga2"}),
    study(
        "pruner-with-two-metrics",
        "spec.strategy.pruner",
        {"spec.objective.metrics": TWO_METRICS, "spec.strategy.pruner": "median"},
    ),
    study(
        "terminator-with-two-metrics",
        "spec.strategy.terminator",
        {"spec.objective.metrics": TWO_METRICS, "spec.strategy.terminator": True},
    ),
    study(
        "bad-parameter-name",
        "spec.searchSpace",
        {
            "spec.searchSpace": {"learning rate": {"type": "float", "low": 0.1, "high": 1.0}},
            "spec.trial.command": ["python", "t.py"],
        },
    ),
    study("zero-deadline", "spec.budget.deadline", {"spec.budget.deadline": "0h"}),
    study("zero-max-duration", "spec.trial.maxDuration", {"spec.trial.maxDuration": "0s"}),
    study("zero-expected-duration", "spec.trial.expectedDuration", {"spec.trial.expectedDuration": "00"}),
    study(
        "settings-with-auto-sampler",
        "spec.strategy.settings",
        {"spec.strategy.sampler": "auto", "spec.strategy.settings": {"n_startup_trials": 5}},
        at_admission=False,
    ),
    study(
        "tracking-uri-with-credentials",
        "spec.tracking.mlflow.trackingUri",
        {"spec.tracking": {"mlflow": {"trackingUri": "https://bob:hunter2@mlflow.example"}}},
    ),
    study(
        "tracking-uri-not-http",
        "spec.tracking.mlflow.trackingUri",
        {"spec.tracking": {"mlflow": {"trackingUri": "file:///tmp/mlruns"}}},
    ),
    study(
        "tracking-tag-key-empty",
        "spec.tracking.mlflow.tags",
        {"spec.tracking": {"mlflow": {"trackingUri": "http://mlflow:5000", "tags": {"": "x"}}}},
    ),
    study(
        "tracking-tag-key-reserved",
        "spec.tracking.mlflow.tags",
        {"spec.tracking": {"mlflow": {"trackingUri": "http://mlflow:5000", "tags": {"mlflow.user": "x"}}}},
    ),
    study("pbt-mutable-without-pbt", "spec.searchSpace", {"spec.searchSpace.lr.mutable": True}),
    study("pbt-without-a-mutable-parameter", "spec.searchSpace",
          {"spec.strategy.sampler": "pbt", "spec.objective.steps": 10}),
    study("pbt-with-two-metrics", "spec.objective.metrics", {**PBT, "spec.objective.metrics": TWO_METRICS}),
    study("pbt-without-steps", "spec.objective.steps",
          {"spec.strategy.sampler": "pbt", "spec.searchSpace.lr.mutable": True}),
    study("pbt-parameter-named-like-a-placeholder", "spec.searchSpace",
          {**PBT, "spec.searchSpace.member": {"type": "int", "low": 1, "high": 4}}),
    study("pbt-with-a-pruner", "spec.strategy.pruner", {**PBT, "spec.strategy.pruner": "median"}),
    study("pbt-with-warm-start", "spec.warmStart", {**PBT, "spec.warmStart": {"fromStudy": "earlier"}}),
    study("pbt-with-confirmation-runs", "spec.confirm", {**PBT, "spec.confirm": {"topK": 2}}),
    study("pbt-with-the-terminator", "spec.strategy.terminator", {**PBT, "spec.strategy.terminator": True}),
    study(
        "checkpoints-outside-the-volume",
        "spec.checkpoints.path",
        {"spec.checkpoints": {"persistentVolumeClaim": "checkpoints", "path": "runs/../.."}},
    ),
]

GPUBUDGETS = [
    gpubudget("no-budget-hours", "spec.gpuHours", {"spec.gpuHours": 0}),
    gpubudget("unknown-period", "spec.period", {"spec.period": "fortnightly"}),
    gpubudget("no-hours-per-study", "spec.maxGpuHoursPerStudy", {"spec.maxGpuHoursPerStudy": -1}),
]

EVERY_BAD_SPEC = CORPUS + RULE_EXAMPLES + GPUBUDGETS


def dotted(path: str) -> str:
    """A field path in the CLI's dotted form (``[key]`` and ``[0]`` become ``.key`` and ``.0``)."""
    return re.sub(r"\[([^\]]*)\]", r".\1", path)
