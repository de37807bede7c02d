"""Separate controller processes on one ledger: racing reservations, and a kill mid-transaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.budget.accounting import Charge
from controller.budget.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]

RACER = """
import sys
from controller.budget.accounting import Charge
from controller.budget.ledger import Ledger
url, name = sys.argv[1], sys.argv[2]
ledger = Ledger(url)
study = "team-a/" + name
won = sum(ledger.reserve(f"{name}/{n}", study, n, Charge(gpu_seconds=100), "team-a") for n in range(15))
print(won)
"""

HOLDER = """
import sys, time
import sqlalchemy as sa
from controller.budget.ledger import Ledger
url = sys.argv[1]
ledger = Ledger(url)
with ledger._transaction() as conn:
    conn.execute(sa.text("SELECT * FROM tunefleet_budgets WHERE scope = 'namespace:team-a' FOR UPDATE")
                 if conn.dialect.name == "postgresql" else sa.text("SELECT 1"))
    conn.execute(sa.text(
        "INSERT INTO tunefleet_reservations (key, study, trial_number, gpu_seconds, cpu_seconds, "
        "created_at, namespace) VALUES ('half', 'team-a/x', 0, 500, 0, '2026-01-01', 'team-a')"))
    print("holding", flush=True)
    time.sleep(600)
"""


def _python(script: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], cwd=REPO, text=True, stdout=subprocess.PIPE, **kwargs
    )  # type: ignore[call-overload]


@pytest.mark.timeout(300)
def test_controller_processes_racing_on_one_namespace_budget_never_overspend(storage_url: str) -> None:
    with Ledger(storage_url) as ledger:
        ledger.set_namespace_budget("team-a", 20 * 100, "none", None)
        racers = [_python(RACER, storage_url, f"s{i}") for i in range(4)]
        won = [int(racer.communicate(timeout=240)[0]) for racer in racers]
        assert all(racer.returncode == 0 for racer in racers)
        assert sum(won) == 20
        spent = ledger.namespace_totals("team-a")
        assert spent is not None and spent.reserved == 2000 and spent.remaining == 0


@pytest.mark.timeout(120)
def test_a_controller_killed_inside_a_reservation_leaves_no_trace_and_no_lock(storage_url: str) -> None:
    with Ledger(storage_url) as ledger:
        ledger.set_namespace_budget("team-a", 1000, "none", None)
        holder = _python(HOLDER, storage_url, start_new_session=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
        time.sleep(0.5)  # Postgres notices the dropped connection and rolls back
        assert ledger.reservation("half") is None
        assert ledger.reserve("team-a/x/0", "team-a/x", 0, Charge(gpu_seconds=1000), "team-a")
        spent = ledger.namespace_totals("team-a")
        assert spent is not None and spent.reserved == 1000
