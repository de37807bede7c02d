"""A distributed training script for torchrun: DDP over gloo (CPU) or NCCL (GPU).

Each process trains on its shard of a synthetic regression task; gradients are averaged by
DistributedDataParallel, the validation loss is all-reduced, and global rank 0 prints
``val_loss=<value> step=<epoch>`` lines, which tunefleet reads (and the pruner sees).

Run it alone on one machine with ``torchrun --nproc-per-node=2 -m examples.torchrun.train --lr 0.01``,
or as trials of ``examples/torchrun/study.yaml`` (two nodes per trial, ``tunefleet run`` starts
them on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

FEATURES = 16
SAMPLES = 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)  # torchrun set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if backend == "nccl" else "cpu")

    data = torch.Generator().manual_seed(1234)  # every rank builds the same task, takes its shard
    inputs = torch.randn(SAMPLES, FEATURES, generator=data)
    targets = inputs @ torch.randn(FEATURES, 1, generator=data) + 0.1 * torch.randn(
        SAMPLES, 1, generator=data
    )
    split = SAMPLES * 3 // 4
    train_x, train_y = inputs[:split][rank::world].to(device), targets[:split][rank::world].to(device)
    val_x, val_y = inputs[split:][rank::world].to(device), targets[split:][rank::world].to(device)

    torch.manual_seed(0)  # the same initial weights on every rank
    layers = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 1)
    ).to(device)
    model = DistributedDataParallel(layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = torch.nn.MSELoss()
    for epoch in range(args.epochs):
        model.train()
        for start in range(0, len(train_x), 32):
            optimizer.zero_grad()
            loss_fn(model(train_x[start : start + 32]), train_y[start : start + 32]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            count = torch.tensor(float(len(val_x)), device=device)
            val = torch.stack([loss_fn(model(val_x), val_y) * count, count])
        dist.all_reduce(val)
        if rank == 0:
            print(f"val_loss={(val[0] / val[1]).item():.6f} step={epoch} world_size={world}", flush=True)
    dist.barrier()  # both ranks reach the end before either leaves
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # gloo's worker threads outlive destroy_process_group and free finished collectives (and the
    # tensors they hold) on their own; one that does so while Python is shutting down needs the
    # GIL, is cancelled inside C++, and the process aborts (SIGABRT) after a run that succeeded.
    # Everything is printed: leave without interpreter shutdown.
    sys.stdout.flush()
    os._exit(0)
