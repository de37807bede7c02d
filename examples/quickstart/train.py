"""Quickstart objective: a PyTorch MLP on scikit-learn's bundled digits (no download needed).

An ordinary Optuna objective: tunefleet passes a real ``optuna.Trial`` whose parameters the
controller already chose, so ``trial.suggest_*`` returns them, and ``trial.report`` /
``trial.should_prune`` drive pruning.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import optuna
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

EPOCHS = 20


@functools.cache
def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits split once per process; a warm worker loads it only for its first trial."""
    features, labels = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        features / 16.0, labels, test_size=0.2, random_state=0, stratify=labels
    )
    as_x = functools.partial(torch.tensor, dtype=torch.float32)
    as_y = functools.partial(torch.tensor, dtype=torch.long)
    return as_x(x_train), as_y(y_train), as_x(x_val), as_y(y_val)


def _model(n_layers: int, hidden: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = 64
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def train(
    lr: float,
    batch_size: int,
    optimizer_name: str,
    n_layers: int,
    hidden: int,
    momentum: float | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[float, nn.Module]:
    """Train the MLP; ``on_epoch(epoch, val_accuracy)`` after each epoch. Returns the last
    validation accuracy and the model."""
    x_train, y_train, x_val, y_val = _data()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _model(n_layers, hidden).to(device)
    if optimizer_name == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum or 0.0
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x_train, y_train, x_val, y_val = (t.to(device) for t in (x_train, y_train, x_val, y_val))
    loss_fn = nn.CrossEntropyLoss()

    accuracy = 0.0
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(x_train), device=device)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss_fn(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(dim=1) == y_val).float().mean().item()
        if on_epoch is not None:
            on_epoch(epoch, accuracy)
    return accuracy, model


def objective(trial: optuna.Trial) -> float:
    """Validation accuracy after training; reported every epoch so pruning can stop it early."""
    torch.set_num_threads(1)  # trials run side by side; one core each
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    batch_size = trial.suggest_categorical("batch_size", [32, 64, 128])
    optimizer_name = trial.suggest_categorical("optimizer", ["adam", "sgd"])
    n_layers = trial.suggest_int("n_layers", 1, 3)
    hidden = trial.suggest_int("hidden", 32, 256, log=True)
    momentum = trial.suggest_float("momentum", 0.8, 0.99) if optimizer_name == "sgd" else None

    def report(epoch: int, accuracy: float) -> None:
        trial.report(accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    accuracy, _ = train(lr, batch_size, optimizer_name, n_layers, hidden, momentum, on_epoch=report)
    return accuracy


def accuracy_and_latency(trial: optuna.Trial) -> tuple[float, float]:
    """Two objectives (examples/multi-objective.yaml): validation accuracy, and the model's
    inference time per sample in milliseconds, which wider and deeper models pay for."""
    torch.set_num_threads(1)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    n_layers = trial.suggest_int("n_layers", 1, 3)
    hidden = trial.suggest_int("hidden", 32, 256, log=True)
    accuracy, model = train(lr, 64, "adam", n_layers, hidden)
    _, _, x_val, _ = _data()
    x_val = x_val.to(next(model.parameters()).device)
    with torch.no_grad():
        started = time.perf_counter()
        for _ in range(10):
            model(x_val)
        latency_ms = (time.perf_counter() - started) / (10 * len(x_val)) * 1000.0
    return accuracy, latency_ms
