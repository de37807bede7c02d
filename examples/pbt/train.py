"""Population-based training example: an MLP whose best learning rate falls during training.

A noisy regression (targets carry noise of variance 1, so the best possible validation MSE is
about 1.0) trained with SGD and momentum. A large learning rate makes progress fast but leaves
the weights bouncing around in the noise; a small one settles closer but takes long to get
there. The best schedule starts high and falls, which no single constant can do: population-based
training finds such a schedule by copying the members that are ahead and perturbing their rate.

The objective also runs under any other sampler: without a segment it trains all ``EPOCHS``
from scratch and can be pruned (``bench/pbt.py`` compares the two on this task).
"""

from __future__ import annotations

import functools
import math

import optuna
import torch
from torch import nn

from trial_worker import checkpoints

EPOCHS = 20
FEATURES = 8
TRAIN_SIZE = 4096
BATCH_SIZE = 128
MOMENTUM = 0.9
DIVERGED = 1e6


@functools.cache
def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same data in every process: y = 2 sin(x.w1 / 2) + (x.w2)² + noise."""
    generator = torch.Generator().manual_seed(0)
    w1 = torch.randn(FEATURES, generator=generator)
    w2 = torch.randn(FEATURES, generator=generator) / math.sqrt(FEATURES)

    def sample(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(size, FEATURES, generator=generator)
        y = 2 * torch.sin(x @ w1 / 2) + (x @ w2) ** 2 + torch.randn(size, generator=generator)
        return x, y.unsqueeze(1)

    return (*sample(TRAIN_SIZE), *sample(2048))


def _model(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(FEATURES, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
    )


def objective(trial: optuna.Trial) -> float:
    """Validation MSE after the epochs this trial trains (a PBT segment's, or all of them)."""
    torch.set_num_threads(1)  # trials run side by side; one core each
    lr = trial.suggest_float("lr", 1e-3, 0.3, log=True)  # mutable: PBT may change it per segment
    width = trial.suggest_categorical("width", [16, 32, 64])  # fixed: it travels with the weights
    x_train, y_train, x_val, y_val = _data()
    model = _model(width)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)

    segment = checkpoints.segment(trial)  # None under any other sampler
    if segment is not None:
        state = segment.load_state()  # None for a member's first segment
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            for group in optimizer.param_groups:
                group["lr"] = lr  # the (possibly explored) rate applies from this segment on
    epochs = segment.steps if segment is not None else range(EPOCHS)

    loss_fn = nn.MSELoss()
    val_mse = math.inf
    for epoch in epochs:
        model.train()
        order = torch.randperm(TRAIN_SIZE)
        for start in range(0, TRAIN_SIZE, BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss_fn(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_mse = loss_fn(model(x_val), y_val).item()
        if not math.isfinite(val_mse) or val_mse > DIVERGED:
            val_mse = DIVERGED  # too large a rate: the worst score, so PBT replaces this member
        trial.report(val_mse, epoch)
        if segment is None and trial.should_prune():
            raise optuna.TrialPruned()

    if segment is not None:
        segment.save_state({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    return val_mse
