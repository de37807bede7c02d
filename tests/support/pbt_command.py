"""A command-mode PBT segment: minimise (w - 3)² by gradient steps of size --lr.

It resumes w from ``<load>/w.txt`` (placeholder ``{{checkpoint.load}}``; empty for a fresh member),
trains the steps in ``TUNEFLEET_STEP_START``..``TUNEFLEET_STEP_END``, prints ``step=<n> loss=<v>``
each step, and saves w to ``<save>/w.txt`` (``{{checkpoint.save}}``). A checkpoint it cannot
parse makes it exit 74, the documented code for an unreadable checkpoint. With
``TUNEFLEET_TEST_CORRUPT_SEGMENT=<member>:<segment>`` that segment saves garbage.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

UNREADABLE = 74


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--load", default="")
    parser.add_argument("--save", required=True)
    args = parser.parse_args()
    weight = 0.0
    if args.load:
        try:
            weight = float((Path(args.load) / "w.txt").read_text())
        except (OSError, ValueError) as exc:
            print(f"cannot read the checkpoint: {exc}", file=sys.stderr)
            return UNREADABLE
    start, end = int(os.environ["TUNEFLEET_STEP_START"]), int(os.environ["TUNEFLEET_STEP_END"])
    for step in range(start, end):
        weight -= args.lr * 2 * (weight - 3.0)
        print(f"step={step} loss={(weight - 3.0) ** 2}", flush=True)
    here = f"{os.environ['TUNEFLEET_MEMBER']}:{os.environ['TUNEFLEET_SEGMENT']}"
    text = "garbage" if os.environ.get("TUNEFLEET_TEST_CORRUPT_SEGMENT") == here else repr(weight)
    (Path(args.save) / "w.txt").write_text(text)
    print(f"loss={(weight - 3.0) ** 2}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
