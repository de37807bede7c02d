"""How far the local runner asks ahead: trials queued behind a busy worker.

One process asks every trial (the sampler, the ledger, the storage writes) and warm workers run
them. When trials are short next to what asking one costs, a worker that finishes would wait for
the runner; so the runner asks its next trial while it is still busy, and the worker claims it
(WAITING -> RUNNING) the moment it is free. Longer trials are asked when a worker is free, so
each sample sees every result finished by then. Never with parallelism 1 (the runner's rule):
there, a seeded study samples the same sequence on every run.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

PREFETCH_SHARE = 0.01
"""Starting a trial costs more than this share of a trial: queue one behind each busy worker."""
DEEP_PREFETCH_SHARE = 0.25
"""More than this share: queue two. A trial pruned at its first step can end before the runner
has asked the next (``bench/search.py``: trials of 25-100 ms, asks of 30-45 ms); with one
queued, its worker then waited for the runner."""
MIN_DURATIONS = 3
"""Trials that must have finished before their durations count."""


def prefetch_depth(start_s: float, recent_durations: Sequence[float]) -> int:
    """Trials to queue behind each busy worker, given what starting one costs the runner
    (``start_s``, seconds) and how long recent trials ran: 0 (ask when a worker is free), 1 or 2."""
    if len(recent_durations) < MIN_DURATIONS:
        return 0
    median = statistics.median(recent_durations)
    if start_s > DEEP_PREFETCH_SHARE * median:
        return 2
    return 1 if start_s > PREFETCH_SHARE * median else 0
