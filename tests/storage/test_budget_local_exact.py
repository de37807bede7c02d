"""Local parity: a CPU-hour budget worth exactly three worst cases runs exactly three hung trials.

A hung trial (a deadlock, a stuck collective) cannot run its worker's own maxDuration watchdog; the
local runner kills its worker at maxDuration + LOCAL_GRACE_S, so the trial uses its whole worst case.
The objective below stops its own process with SIGSTOP to play that hang (the worker imports it as
``tests.storage.test_budget_local_exact:hangs``).

Figures printed (run with ``-s``): limit, settled, fraction used, overspend, wall seconds per trial.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from controller.budget.ledger import Ledger
from controller.budget.schema import settlements
from controller.local.runner import LOCAL_GRACE_S
from controller.planner import StopReason
from tests.storage.test_budget_local import run_study
from tests.support.specs import study_document
from trial_worker.contract import ATTR_ATTEMPT, ATTR_REASON

pytestmark = [pytest.mark.storage, pytest.mark.timeout(120)]
MAX_DURATION_S = 2
CPUS = 1
WORST_CASE_S = CPUS * (MAX_DURATION_S + LOCAL_GRACE_S)  # CPU-seconds one trial reserves


def hangs(trial: optuna.Trial) -> float:
    """The whole worker process stops (its watchdog thread too) until something SIGKILLs it."""
    x = trial.suggest_float("x", -10.0, 10.0)
    os.kill(os.getpid(), signal.SIGSTOP)
    return x * x


class _LedgerSampler(threading.Thread):
    """Samples settled + open reservations against the limit while the runner runs."""

    def __init__(self, storage_url: str, study: str, limit: int) -> None:
        super().__init__(daemon=True)
        self.storage_url, self.study, self.limit = storage_url, study, limit
        self.overspend = 0
        self.samples = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        with Ledger(self.storage_url) as ledger:
            while not self.stopping.wait(0.1):
                totals = ledger.totals(self.study)
                committed = totals.settled.cpu_seconds + totals.reserved.cpu_seconds
                self.overspend = max(self.overspend, committed - self.limit)
                self.samples += 1


def test_a_cpu_budget_worth_exactly_three_hung_trials_runs_exactly_three(
    storage_url: str, tmp_path: Path
) -> None:
    limit = 3 * WORST_CASE_S
    document = study_document(
        parallelism=4,
        # Every trial hangs to maxDuration and fails: the budget, not the failure budget, must stop it.
        budget={"maxTrials": 8, "cpuHours": limit / 3600, "maxFailedTrials": 8},
        trial={
            "python": "tests.storage.test_budget_local_exact:hangs",
            "maxDuration": f"{MAX_DURATION_S}s",
            "cpus": CPUS,
        },
    )
    sampler = _LedgerSampler(storage_url, "test-study", limit)
    sampler.start()
    try:
        result = run_study(document, storage_url, tmp_path)
    finally:
        sampler.stopping.set()
        sampler.join(timeout=10)

    trials = optuna.load_study(study_name="test-study", storage=storage_url).get_trials()
    with Ledger(storage_url) as ledger:
        totals = ledger.totals("test-study")
        open_reservations = ledger.open_reservations("test-study")
    engine = sa.create_engine(storage_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(settlements.c.cpu_seconds, settlements.c.wall_seconds)).all()
    engine.dispose()
    settled = totals.settled.cpu_seconds
    print(
        f"local exact budget: limit {limit} CPU-s (3 worst cases of {WORST_CASE_S}), settled {settled} "
        f"CPU-s ({settled / limit:.3f} of it), overspend {sampler.overspend} over {sampler.samples} "
        f"samples, trials {len(trials)}, charged/wall per trial "
        f"{[(int(cpu), round(float(wall), 2)) for cpu, wall in rows]}"
    )
    assert result.stop_reason is StopReason.BUDGET_EXHAUSTED
    # Exactly three: no fourth trial asked, none retried (maxDuration is not an infrastructure failure).
    outcomes = [(t.state.name, t.user_attrs.get(ATTR_REASON), t.user_attrs.get(ATTR_ATTEMPT, 0))
                for t in trials]
    assert outcomes == [("FAIL", "maxDuration", 0)] * 3
    # Each held its slot for its whole worst case (killed at maxDuration + grace, not by its watchdog).
    assert len(rows) == 3 and all(float(wall) >= WORST_CASE_S for _, wall in rows)
    assert [int(cpu) for cpu, _ in rows] == [WORST_CASE_S] * 3  # charged its reservation, no more
    assert sampler.samples > 0 and sampler.overspend <= 0
    assert open_reservations == {}
    assert settled == limit
