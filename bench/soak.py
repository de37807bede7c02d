"""The chaos harness for long runs: seed after seed until the minutes are spent.

Each seed is one run of ``tests/chaos`` (four Studies, two controller replicas, a seeded random
fault schedule, every invariant checked throughout and at the end) on one throwaway PostgreSQL,
each seed on a fresh database. Prints, per invariant, how many checks ran and how many failed,
the faults injected by kind, and for each broken seed the command that replays it.

    nice .venv/bin/python -m bench.soak --seeds 1000 --minutes 30 [--first-seed 100] [--window 40]

Stops at whichever comes first: ``--seeds`` seeds, or ``--minutes`` (a seed that started runs
to its end). Stopped early (Ctrl-C, or SIGTERM), it stops the seed under way, cleans up, and
prints the figures of the seeds that finished.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.chaos.harness import replay_command, run_chaos
from tests.chaos.invariants import ALL_NAMES, Tally
from tests.support.postgres import remove_server, start_server


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000, help="at most this many seeds")
    parser.add_argument("--minutes", type=float, default=30.0, help="start no seed after this")
    parser.add_argument("--first-seed", type=int, default=1000, help="seeds run from here upwards")
    parser.add_argument("--window", type=float, default=40.0, help="seconds of faults per seed")
    parser.add_argument("--quiet", action="store_true", help="do not print each fault")
    args = parser.parse_args()
    # Also when started in the background (where the shell ignores SIGINT): stop cleanly.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    postgres = start_server()
    work = Path(tempfile.mkdtemp(prefix="tunefleet-soak-"))
    total = Tally.empty()
    faults: Counter[str] = Counter()
    broken: list[tuple[int, list[str]]] = []
    started = time.monotonic()
    seeds_run = 0
    stopped = False
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if time.monotonic() - started > args.minutes * 60:
                break
            url = postgres.create_database()
            result = run_chaos(seed, work / f"seed-{seed}", postgres, url, window_s=args.window,
                               log=(lambda _line: None) if args.quiet else print)
            seeds_run += 1
            total.merge(result.tally)
            faults.update(result.faults)
            print(result.summary(), flush=True)
            if not result.ok:
                broken.append((seed, result.tally.broken))
                print(f"  replay: {replay_command(seed, args.window)}", flush=True)
                (work / f"seed-{seed}.log").write_text(result.log_tail)
            else:
                shutil.rmtree(work / f"seed-{seed}", ignore_errors=True)
    except KeyboardInterrupt:
        stopped = True  # run_chaos stopped its controllers on the way out
    finally:
        remove_server(postgres)
    minutes = (time.monotonic() - started) / 60
    if stopped:
        print("\nsoak stopped early: the figures below are those of the seeds that finished")
    print(f"\nsoak: {seeds_run} seeds in {minutes:.1f} min (window {args.window:g} s each), "
          f"seeds {args.first_seed}..{args.first_seed + seeds_run - 1}")
    print(f"{'invariant':34} {'checks':>8} {'failed':>8}")
    for name in ALL_NAMES:
        print(f"{name:34} {total.runs[name]:8d} {total.failures[name]:8d}")
    print("faults injected by kind:")
    for kind, count in sorted(faults.items()):
        print(f"  {kind:34} {count:6d}")
    print(f"  {'total':34} {sum(faults.values()):6d}")
    for seed, names in broken:
        print(f"broken seed {seed}: {', '.join(names)}  replay: {replay_command(seed, args.window)}")
    if broken:
        print(f"logs of broken seeds: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if broken or stopped else 0


if __name__ == "__main__":
    sys.exit(main())
