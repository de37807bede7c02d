"""PBT objectives for the storage and cluster tiers: models whose weights move between members.

Each records a fingerprint of the weights it loaded and of those it saved (trial user attributes
``loaded`` and ``saved``), so a test can follow the weights from member to member. Fault hooks,
driven by env so worker processes see them:

- ``TUNEFLEET_TEST_KILL_SEGMENT=<member>:<index>``: that segment SIGKILLs its own worker after
  loading its checkpoint, once (a marker file in ``TUNEFLEET_TEST_MARKER_DIR`` remembers it).
- ``TUNEFLEET_TEST_CORRUPT_SEGMENT=<member>:<index>``: that segment saves garbage, not a pickle.
- ``TUNEFLEET_TEST_SLEEP``: seconds to sleep per step (so a test can act on a running segment).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import optuna

from trial_worker import checkpoints

DATA_SIZE = 256


def torch_regression(trial: optuna.Trial) -> float:
    """A real PyTorch linear model trained with SGD, a step being a few mini-batches."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    lr = trial.suggest_float("lr", 0.001, 0.3, log=True)
    segment = checkpoints.segment(trial)
    assert segment is not None, "this objective is for pbt studies"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(DATA_SIZE, 4, generator=generator)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.3 * torch.randn(DATA_SIZE, generator=generator)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    state = segment.load_state()
    if state is not None:
        model.load_state_dict(state["model"])
    loaded = _fingerprint({"model": model.state_dict()}) if state is not None else None
    trial.set_user_attr("loaded", loaded)
    _faults(trial, segment)
    loss = float("inf")
    for step in segment.steps:
        for start in range(0, DATA_SIZE, 32):
            optimizer.zero_grad()
            batch = slice(start, start + 32)
            nn.functional.mse_loss(model(x[batch]).squeeze(1), y[batch]).backward()
            optimizer.step()
        with torch.no_grad():
            loss = nn.functional.mse_loss(model(x).squeeze(1), y).item()
        trial.report(loss, step)
    _save(trial, segment, {"model": model.state_dict()})
    return loss


def pure_python(trial: optuna.Trial) -> float:
    """No framework (fast to start in a pod): minimise (w - 3)² by gradient steps of size lr."""
    lr = trial.suggest_float("lr", 0.01, 0.5, log=True)
    segment = checkpoints.segment(trial)
    assert segment is not None, "this objective is for pbt studies"
    state = segment.load_state()
    weight = float(state["w"]) if state is not None else 0.0
    trial.set_user_attr("loaded", _fingerprint(state) if state is not None else None)
    _faults(trial, segment)
    for step in segment.steps:
        weight -= lr * 2 * (weight - 3.0)
        time.sleep(float(os.environ.get("TUNEFLEET_TEST_SLEEP", "0")))
        trial.report((weight - 3.0) ** 2, step)
    _save(trial, segment, {"w": weight})
    return (weight - 3.0) ** 2


def _faults(trial: optuna.Trial, segment: checkpoints.Segment) -> None:
    here = f"{segment.member}:{segment.index}"
    if os.environ.get("TUNEFLEET_TEST_KILL_SEGMENT") == here:
        marker = Path(os.environ["TUNEFLEET_TEST_MARKER_DIR"]) / f"killed-{here}"
        if not marker.exists():
            marker.write_text(str(trial.number), encoding="utf-8")
            os.kill(os.getpid(), signal.SIGKILL)


def _save(trial: optuna.Trial, segment: checkpoints.Segment, state: dict[str, Any]) -> None:
    if os.environ.get("TUNEFLEET_TEST_CORRUPT_SEGMENT") == f"{segment.member}:{segment.index}":
        segment.save_dir.mkdir(parents=True, exist_ok=True)
        (segment.save_dir / checkpoints.STATE_FILE).write_bytes(b"not a pickle")
        trial.set_user_attr("saved", "garbage")
        return
    segment.save_state(state)
    trial.set_user_attr("saved", _fingerprint(state))


def _fingerprint(state: Any) -> str:
    if isinstance(state, dict) and "model" in state:
        tensors = state["model"]
        raw = b"".join(tensors[k].detach().numpy().tobytes() for k in sorted(tensors))
    else:
        raw = repr(sorted(state.items())).encode()
    return hashlib.sha256(raw).hexdigest()[:16]
