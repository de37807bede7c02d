"""The task ``bench/search.py`` tunes: a small MLP regression written in numpy.

Built so that search methods separate by more than seed noise:

- **a small training set** (256 rows) with **irrelevant features** (14 of 20 inputs are noise),
  so regularization and the input penalty matter, and large networks overfit;
- **a wide cost range**: width, depth and batch size set a trial's cost from about 0.05 s to
  several seconds for the same 30 epochs, and the costliest configurations are not the best;
- **9 hyperparameters, one conditional** (``momentum`` only with ``sgd``), 30 epochs reported as
  intermediate values (``trial.report``), so pruners have a fidelity to work with.

The data set is fixed (seeded once); a trial's initialization and batch order follow its trial
number, so a configuration gives the same curve in Optuna's loop and in tunefleet's worker. Numpy
only (no torch import), with one BLAS thread per process (the bench sets it), so process start-up
costs both sides alike. The metric is the validation R² (maximize), floored at -1 so a diverged
run still reports a number.
"""

from __future__ import annotations

import itertools
import math
from functools import cache
from typing import Any

import numpy as np
import optuna

EPOCHS = 30
TRAIN_ROWS = 256
VALIDATION_ROWS = 384
FEATURES = 20
RELEVANT = 6
METRIC = "val_r2"
FLOOR = -1.0

SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 0.3, "log": True},
    "width": {"type": "int", "low": 8, "high": 256, "log": True},
    "depth": {"type": "int", "low": 1, "high": 4},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64, 128, 256]},
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"optimizer": "sgd"}},
    "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-1, "log": True},
    "input_l1": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True},
    "activation": {"type": "categorical", "choices": ["relu", "tanh"]},
}
"""The space as a Study spec writes it; :func:`suggest` asks Optuna for exactly these."""


@cache
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and validation sets: 6 informative inputs (interactions, a sine), 14 of noise."""
    rng = np.random.default_rng(20240917)
    rows = TRAIN_ROWS + VALIDATION_ROWS
    x = rng.standard_normal((rows, FEATURES))
    y = (
        np.sin(1.5 * x[:, 0])
        + x[:, 1] * x[:, 2]
        + 0.5 * x[:, 3] ** 2
        - 0.8 * x[:, 4]
        + 0.6 * np.tanh(2.0 * x[:, 5])
        + 0.2 * rng.standard_normal(rows)
    )
    y = (y - y.mean()) / y.std()
    return x[:TRAIN_ROWS], y[:TRAIN_ROWS, None], x[TRAIN_ROWS:], y[TRAIN_ROWS:, None]


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Every parameter of :data:`SEARCH_SPACE` whose condition holds, asked in declared order."""
    params: dict[str, Any] = {}
    for name, declared in SEARCH_SPACE.items():
        when = declared.get("when")
        if when and any(params.get(k) != v for k, v in when.items()):
            continue
        kind = declared["type"]
        if kind == "float":
            params[name] = trial.suggest_float(
                name, declared["low"], declared["high"], log=declared.get("log", False)
            )
        elif kind == "int":
            params[name] = trial.suggest_int(
                name, declared["low"], declared["high"], log=declared.get("log", False)
            )
        else:
            params[name] = trial.suggest_categorical(name, declared["choices"])
    return params


def objective(trial: optuna.Trial) -> float:
    """Train for :data:`EPOCHS` epochs, reporting the validation R² after each; prunable."""
    params = suggest(trial)
    curve = train(params, seed=trial.number, report=lambda epoch, value: _report(trial, epoch, value))
    return curve[-1]


def _report(trial: optuna.Trial, epoch: int, value: float) -> None:
    trial.report(value, epoch)
    if trial.should_prune():
        raise optuna.TrialPruned()


def train(params: dict[str, Any], seed: int, report: Any = None) -> list[float]:
    """The validation R² after each epoch (``report(epoch, value)`` is called as they come)."""
    x_train, y_train, x_val, y_val = data()
    rng = np.random.default_rng(seed)
    width, depth = int(params["width"]), int(params["depth"])
    sizes = [FEATURES] + [width] * depth + [1]
    weights = [
        rng.standard_normal((a, b)) * math.sqrt(2.0 / a) for a, b in itertools.pairwise(sizes)
    ]
    biases = [np.zeros((1, b)) for b in sizes[1:]]
    step = _Optimizer(params, [*weights, *biases])
    relu = params["activation"] == "relu"
    batch = int(params["batch_size"])
    decay, l1 = float(params["weight_decay"]), float(params["input_l1"])
    curve: list[float] = []
    for epoch in range(EPOCHS):
        order = rng.permutation(TRAIN_ROWS)
        for start in range(0, TRAIN_ROWS, batch):
            rows = order[start : start + batch]
            grads_w, grads_b = _gradients(weights, biases, x_train[rows], y_train[rows], relu)
            for i, weight in enumerate(weights):
                grads_w[i] += decay * weight
            grads_w[0] += l1 * np.sign(weights[0])
            step.apply([*grads_w, *grads_b])
        curve.append(_r2(_forward(weights, biases, x_val, relu)[-1], y_val))
        if report is not None:
            report(epoch, curve[-1])
    return curve


def _forward(
    weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray, relu: bool
) -> list[np.ndarray]:
    activations = [x]
    for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        z = activations[-1] @ weight + bias
        if i < len(weights) - 1:
            z = np.maximum(z, 0.0) if relu else np.tanh(z)
        activations.append(z)
    return activations


def _gradients(
    weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray, y: np.ndarray, relu: bool
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    activations = _forward(weights, biases, x, relu)
    delta = 2.0 * (activations[-1] - y) / len(x)
    grads_w: list[np.ndarray] = [np.empty(0)] * len(weights)
    grads_b: list[np.ndarray] = [np.empty(0)] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        grads_w[i] = activations[i].T @ delta
        grads_b[i] = delta.sum(axis=0, keepdims=True)
        if i > 0:
            delta = delta @ weights[i].T
            delta = delta * (activations[i] > 0) if relu else delta * (1.0 - activations[i] ** 2)
    return grads_w, grads_b


def _r2(prediction: np.ndarray, y: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        residual = float(np.mean((prediction - y) ** 2))
    value = 1.0 - residual / float(np.var(y))
    return value if math.isfinite(value) and value > FLOOR else FLOOR


class _Optimizer:
    """Adam, or SGD with momentum; updates the arrays in place. A diverged run stops moving."""

    def __init__(self, params: dict[str, Any], arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.lr = float(params["lr"])
        self.adam = params["optimizer"] == "adam"
        self.momentum = float(params.get("momentum", 0.0))
        self.first = [np.zeros_like(a) for a in arrays]
        self.second = [np.zeros_like(a) for a in arrays] if self.adam else []
        self.steps = 0

    def apply(self, grads: list[np.ndarray]) -> None:
        self.steps += 1
        with np.errstate(all="ignore"):
            for i, (array, grad) in enumerate(zip(self.arrays, grads, strict=True)):
                grad = np.nan_to_num(np.clip(grad, -1e3, 1e3))
                if self.adam:
                    self.first[i] = 0.9 * self.first[i] + 0.1 * grad
                    self.second[i] = 0.999 * self.second[i] + 0.001 * grad * grad
                    first = self.first[i] / (1.0 - 0.9**self.steps)
                    second = self.second[i] / (1.0 - 0.999**self.steps)
                    update = first / (np.sqrt(second) + 1e-8)
                else:
                    self.first[i] = self.momentum * self.first[i] + grad
                    update = self.first[i]
                array -= np.nan_to_num(self.lr * update)
