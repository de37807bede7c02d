"""Objectives whose ranks really talk: torch.distributed over gloo on CPU (trial.nodes > 1)."""

from __future__ import annotations

import os

import optuna


def allreduce(trial: optuna.Trial) -> float:
    """Each rank contributes x * (rank + 1); the all-reduced sum (x * 3 for two ranks) is the
    value, so it depends on both. Every rank also writes, and only rank 0's writes may land."""
    import torch
    import torch.distributed as dist

    x = trial.suggest_float("x", -10.0, 10.0)
    dist.init_process_group("gloo")  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    rank = dist.get_rank()
    contribution = torch.tensor([x * (rank + 1)], dtype=torch.float64)
    dist.all_reduce(contribution)
    trial.set_user_attr("written_by_rank", rank)
    trial.set_user_attr("world_size", dist.get_world_size())
    trial.set_user_attr("node_rank_env", os.environ["TUNEFLEET_NODE_RANK"])
    trial.report(float(rank), step=0)
    dist.barrier()  # every rank reported before rank 0 tells
    return float(contribution.item())


def rank_one_fails(trial: optuna.Trial) -> float:
    """In the first attempt rank 1 is killed (its node was lost) while rank 0 waits for it."""
    import signal
    import time

    x = trial.suggest_float("x", -10.0, 10.0)
    if trial.number == 0:
        if os.environ["TUNEFLEET_NODE_RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    return x


def allreduce_after_a_pause(trial: optuna.Trial) -> float:
    """The first trial's ranks meet, then wait (a test stops one meanwhile); later trials go on."""
    import time

    import torch.distributed as dist

    if trial.number == 0:
        dist.init_process_group("gloo")
        time.sleep(float(os.environ.get("TUNEFLEET_TEST_SLEEP", "30")))
        dist.destroy_process_group()
    return allreduce(trial)


def pruned_at_once_or_sleeps(trial: optuna.Trial) -> float:
    """Rank 0 is pruned at once (as when its pruner says so); the other ranks would run for minutes."""
    import time

    x = trial.suggest_float("x", -10.0, 10.0)
    if os.environ["TUNEFLEET_NODE_RANK"] == "0":
        raise optuna.TrialPruned()
    time.sleep(300)
    return x
