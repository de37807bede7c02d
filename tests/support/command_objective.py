"""A command-mode objective: prints intermediate and final metrics the way training scripts do."""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--x", type=float, required=True)
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--silent", action="store_true")
    args = parser.parse_args()
    if args.silent:
        print("training finished, but no metric was printed")
        return args.exit
    for step in range(3):
        print(f"step={step} loss={args.x + 3 - step} lr=0.1", flush=True)
    print(json.dumps({"loss": args.x, "accuracy": 0.5}), flush=True)
    print(f"loss={args.x!r}", flush=True)
    return args.exit


if __name__ == "__main__":
    sys.exit(main())
