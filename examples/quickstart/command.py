"""The quickstart's training as a program, for command mode (examples/command-mode.yaml).

    python -m examples.quickstart.command --lr 0.01 --batch-size 64 --optimizer adam \\
        --n-layers 2 --hidden 64

Prints ``val_accuracy=<value> step=<epoch>`` after every epoch (the worker reports them, so the
pruner can stop the run) and the last one is the trial's value.
"""

from __future__ import annotations

import argparse

import torch

from examples.quickstart.train import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], required=True)
    parser.add_argument("--n-layers", type=int, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--momentum", type=float, default=0.9, help="sgd only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    def show(epoch: int, accuracy: float) -> None:
        print(f"val_accuracy={accuracy:.6f} step={epoch}", flush=True)

    train(args.lr, args.batch_size, args.optimizer, args.n_layers, args.hidden, args.momentum, on_epoch=show)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
