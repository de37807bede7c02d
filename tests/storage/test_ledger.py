"""The budget ledger on real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from controller.budget.accounting import Charge
from controller.budget.ledger import SCHEMA_VERSION, Ledger

D = datetime.datetime
HOUR = 3600


@pytest.fixture
def ledger(storage_url: str) -> Iterator[Ledger]:
    with Ledger(storage_url) as opened:
        yield opened


def test_a_budget_worth_three_trials_admits_exactly_three(ledger: Ledger) -> None:
    ledger.set_study_limits("s", gpu_seconds=3 * 3630, cpu_seconds=None)
    admitted = [ledger.reserve(f"s/{n}", "s", n, Charge(gpu_seconds=3630)) for n in range(5)]
    assert admitted == [True, True, True, False, False]
    assert ledger.totals("s").reserved.gpu_seconds == 3 * 3630


def test_settling_replaces_the_reservation_and_frees_the_rest(ledger: Ledger) -> None:
    ledger.set_study_limits("s", gpu_seconds=200, cpu_seconds=None)
    assert ledger.reserve("s/0", "s", 0, Charge(gpu_seconds=150))
    assert not ledger.reserve("s/1", "s", 1, Charge(gpu_seconds=150))
    assert ledger.settle("pod-a", "s/0", Charge(gpu_seconds=40), 40.0) == Charge(gpu_seconds=40)
    totals = ledger.totals("s")
    assert (totals.settled.gpu_seconds, totals.reserved.gpu_seconds) == (40, 0)
    assert ledger.reserve("s/1", "s", 1, Charge(gpu_seconds=150))
    assert ledger.open_reservations("s") == {"s/1": 1}
    assert ledger.charges_by_trial("s") == {0: Charge(gpu_seconds=40)}


def test_reserve_and_settle_are_idempotent(ledger: Ledger) -> None:
    ledger.set_study_limits("s", gpu_seconds=100, cpu_seconds=None)
    assert ledger.reserve("s/0", "s", 0, Charge(gpu_seconds=100))
    assert ledger.reserve("s/0", "s", 0, Charge(gpu_seconds=100))  # a retry after a lost reply
    assert ledger.totals("s").reserved.gpu_seconds == 100
    assert ledger.settle("pod-a", "s/0", Charge(gpu_seconds=30), 30.0) == Charge(gpu_seconds=30)
    assert ledger.settle("pod-a", "s/0", Charge(gpu_seconds=90), 90.0) == Charge(gpu_seconds=30)
    assert ledger.totals("s").settled.gpu_seconds == 30
    assert ledger.settlement("pod-a") == Charge(gpu_seconds=30)
    assert ledger.settlement("pod-b") is None


def test_pods_of_one_reservation_never_together_exceed_it(ledger: Ledger) -> None:
    # A Job re-admitted after an eviction runs a second pod against the same reservation.
    assert ledger.reserve("s/0", "s", 0, Charge(gpu_seconds=100))
    assert ledger.settle("pod-evicted", "s/0", Charge(gpu_seconds=70), 70.0).gpu_seconds == 70
    assert ledger.settle("pod-readmitted", "s/0", Charge(gpu_seconds=70), 70.0).gpu_seconds == 30
    assert ledger.totals("s").settled.gpu_seconds == 100


def test_the_pods_of_a_multi_node_trial_keep_its_room_until_the_last_is_billed(ledger: Ledger) -> None:
    ledger.set_study_limits("s", gpu_seconds=200, cpu_seconds=None)
    assert ledger.reserve("s/0", "s", 0, Charge(gpu_seconds=200))  # two pods of 100 each, worst case
    assert ledger.settle("rank-0", "s/0", Charge(gpu_seconds=60), 60.0, release=False).gpu_seconds == 60
    # Rank 1 still runs: the room stays reserved, no other trial gets it, and what rank 0 used
    # counts once (settled 60, still reserved 140).
    assert ledger.open_reservations("s") == {"s/0": 0}
    totals = ledger.totals("s")
    assert (totals.settled.gpu_seconds, totals.reserved.gpu_seconds) == (60, 140)
    assert not ledger.reserve("s/1", "s", 1, Charge(gpu_seconds=100))
    assert ledger.settle("rank-1", "s/0", Charge(gpu_seconds=100), 100.0).gpu_seconds == 100
    assert ledger.open_reservations("s") == {}
    assert ledger.totals("s").settled.gpu_seconds == 160
    assert ledger.reserve("s/1", "s", 1, Charge(gpu_seconds=40))


def test_settling_a_pod_again_as_the_last_releases_what_it_kept_open(ledger: Ledger) -> None:
    assert ledger.reserve("s/0", "s", 0, Charge(gpu_seconds=100))
    ledger.settle("rank-1", "s/0", Charge(gpu_seconds=10), 10.0, release=False)
    # A controller restarted between settling and releasing settles the same pod again.
    assert ledger.settle("rank-1", "s/0", Charge(gpu_seconds=10), 10.0).gpu_seconds == 10
    assert ledger.open_reservations("s") == {}
    assert ledger.totals("s").settled.gpu_seconds == 10


def test_a_released_reservation_frees_its_room(ledger: Ledger) -> None:
    ledger.set_study_limits("s", gpu_seconds=100, cpu_seconds=None)
    assert ledger.reserve("s/0", "s", 0, Charge(gpu_seconds=100))
    ledger.release("s/0")
    ledger.release("s/0")
    assert ledger.totals("s").reserved.gpu_seconds == 0
    assert ledger.reserve("s/1", "s", 1, Charge(gpu_seconds=100))


def test_settling_an_unknown_reservation_names_it(ledger: Ledger) -> None:
    with pytest.raises(KeyError, match="no reservation 'nope' to settle"):
        ledger.settle("pod", "nope", Charge(gpu_seconds=1), 1.0)


def test_cpu_seconds_are_capped_like_gpu_seconds(ledger: Ledger) -> None:
    ledger.set_study_limits("s", gpu_seconds=None, cpu_seconds=30)
    assert ledger.reserve("s/0", "s", 0, Charge(cpu_seconds=20))
    assert not ledger.reserve("s/1", "s", 1, Charge(cpu_seconds=20))


def test_a_lowered_limit_applies_to_the_next_reservation(ledger: Ledger) -> None:
    ledger.set_study_limits("s", gpu_seconds=1000, cpu_seconds=None)
    assert ledger.reserve("s/0", "s", 0, Charge(gpu_seconds=300))
    ledger.set_study_limits("s", gpu_seconds=500, cpu_seconds=None)
    assert not ledger.reserve("s/1", "s", 1, Charge(gpu_seconds=300))
    assert ledger.totals("s").gpu_seconds_limit == 500


def test_bad_limits_name_the_field(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="gpu_seconds: -5 is not a whole number"):
        ledger.set_study_limits("s", gpu_seconds=-5, cpu_seconds=None)
    with pytest.raises(ValueError, match="period: 'hourly' is not one of"):
        ledger.set_namespace_budget("ns", 100, "hourly", None)


def test_a_namespace_budget_is_shared_by_its_studies(ledger: Ledger) -> None:
    now = D(2026, 3, 4, 12)
    ledger.set_namespace_budget("team-a", 2 * HOUR, "none", None, now)
    assert ledger.reserve("team-a/one/0", "team-a/one", 0, Charge(gpu_seconds=HOUR), "team-a", now)
    assert ledger.reserve("team-a/two/0", "team-a/two", 0, Charge(gpu_seconds=HOUR), "team-a", now)
    assert not ledger.reserve("team-a/two/1", "team-a/two", 1, Charge(gpu_seconds=1), "team-a", now)
    # Another namespace is not affected, and CPU-only trials draw no GPU-seconds.
    assert ledger.reserve("team-b/x/0", "team-b/x", 0, Charge(gpu_seconds=HOUR), "team-b", now)
    assert ledger.reserve("team-a/cpu/0", "team-a/cpu", 0, Charge(cpu_seconds=HOUR), "team-a", now)
    spent = ledger.namespace_totals("team-a", now)
    assert spent is not None and (spent.used, spent.reserved, spent.remaining) == (0, 2 * HOUR, 0)
    assert ledger.namespace_totals("team-b", now) is None


def test_a_periodic_namespace_budget_refills_on_the_utc_calendar(ledger: Ledger) -> None:
    monday = D(2026, 3, 2, 9)
    ledger.set_namespace_budget("team-a", HOUR, "weekly", None, monday)
    assert ledger.reserve("k0", "team-a/s", 0, Charge(gpu_seconds=HOUR), "team-a", monday)
    assert ledger.settle("pod-0", "k0", Charge(gpu_seconds=HOUR), float(HOUR)) == Charge(gpu_seconds=HOUR)
    sunday = D(2026, 3, 8, 23, 59)
    assert not ledger.reserve("k1", "team-a/s", 1, Charge(gpu_seconds=60), "team-a", sunday)
    next_monday = D(2026, 3, 9, 0, 0, 1)
    assert ledger.reserve("k1", "team-a/s", 1, Charge(gpu_seconds=HOUR), "team-a", next_monday)
    this_week = ledger.namespace_totals("team-a", next_monday)
    assert this_week is not None
    assert (this_week.used, this_week.reserved, this_week.period_start) == (0, HOUR, D(2026, 3, 9))
    last_week = ledger.namespace_totals("team-a", sunday)
    assert last_week is not None and (last_week.used, last_week.reserved) == (HOUR, 0)


def test_the_per_study_cap_limits_one_study_within_the_namespace(ledger: Ledger) -> None:
    now = D(2026, 3, 4)
    ledger.set_namespace_budget("team-a", 10 * HOUR, "monthly", HOUR, now)
    assert ledger.reserve("a0", "team-a/a", 0, Charge(gpu_seconds=HOUR), "team-a", now)
    assert not ledger.reserve("a1", "team-a/a", 1, Charge(gpu_seconds=1), "team-a", now)
    assert ledger.reserve("b0", "team-a/b", 0, Charge(gpu_seconds=HOUR), "team-a", now)
    spent = ledger.namespace_totals("team-a", now, study_key="team-a/a")
    assert spent is not None and spent.study_remaining == 0 and spent.remaining == 8 * HOUR


def test_a_deleted_gpubudget_no_longer_caps_its_namespace(ledger: Ledger) -> None:
    ledger.set_namespace_budget("team-a", 10, "none", None)
    assert not ledger.reserve("k", "team-a/s", 0, Charge(gpu_seconds=20), "team-a")
    ledger.delete_namespace_budget("team-a")
    assert ledger.reserve("k", "team-a/s", 0, Charge(gpu_seconds=20), "team-a")


def test_threads_sharing_one_ledger_never_overspend(storage_url: str) -> None:
    with Ledger(storage_url) as shared:
        shared.set_study_limits("s", gpu_seconds=10 * 100, cpu_seconds=None)
        results: list[bool] = []
        lock = threading.Lock()

        def reserve_some(worker: int) -> None:
            for n in range(6):
                ok = shared.reserve(f"s/{worker}/{n}", "s", worker * 100 + n, Charge(gpu_seconds=100))
                with lock:
                    results.append(ok)

        threads = [threading.Thread(target=reserve_some, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results.count(True) == 10
        assert shared.totals("s").reserved.gpu_seconds == 1000


V1_TABLES = """
CREATE TABLE tunefleet_ledger_schema (version INTEGER PRIMARY KEY);
CREATE TABLE tunefleet_budgets (scope VARCHAR(320) PRIMARY KEY, gpu_seconds_limit BIGINT,
    cpu_seconds_limit BIGINT, updated_at TIMESTAMP NOT NULL);
CREATE TABLE tunefleet_reservations (key VARCHAR(320) PRIMARY KEY, study VARCHAR(320) NOT NULL,
    trial_number INTEGER NOT NULL, gpu_seconds BIGINT NOT NULL, cpu_seconds BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL, released_at TIMESTAMP);
CREATE TABLE tunefleet_settlements (key VARCHAR(320) PRIMARY KEY, reservation_key VARCHAR(320) NOT NULL,
    study VARCHAR(320) NOT NULL, trial_number INTEGER NOT NULL, gpu_seconds BIGINT NOT NULL,
    cpu_seconds BIGINT NOT NULL, wall_seconds FLOAT NOT NULL, settled_at TIMESTAMP NOT NULL);
INSERT INTO tunefleet_ledger_schema VALUES (1);
INSERT INTO tunefleet_budgets VALUES ('study:s', 300, NULL, '2026-01-01 00:00:00');
INSERT INTO tunefleet_reservations VALUES ('s/0', 's', 0, 100, 0, '2026-01-01 00:00:00',
    '2026-01-01 00:01:00');
INSERT INTO tunefleet_reservations VALUES ('s/1', 's', 1, 100, 0, '2026-01-01 00:02:00', NULL);
INSERT INTO tunefleet_settlements VALUES ('pod-0', 's/0', 's', 0, 60, 0, 60.0, '2026-01-01 00:01:00');
"""


def test_a_version_1_ledger_is_migrated_in_place(storage_url: str) -> None:
    engine = sa.create_engine(storage_url)
    with engine.begin() as conn:
        for statement in V1_TABLES.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    engine.dispose()
    with Ledger(storage_url) as ledger:
        assert ledger.migrated_from == 1
        totals = ledger.totals("s")
        assert (totals.settled.gpu_seconds, totals.reserved.gpu_seconds, totals.gpu_seconds_limit) == (
            60,
            100,
            300,
        )
        assert ledger.reserve("s/2", "s", 2, Charge(gpu_seconds=140))
        assert not ledger.reserve("s/3", "s", 3, Charge(gpu_seconds=1))
        ledger.set_namespace_budget("team-a", 100, "daily", None)  # the v2 columns exist
    with Ledger(storage_url) as again:
        assert again.migrated_from == SCHEMA_VERSION
    engine = sa.create_engine(storage_url)
    with engine.begin() as conn:
        versions = [row[0] for row in conn.exec_driver_sql("SELECT version FROM tunefleet_ledger_schema")]
    engine.dispose()
    assert sorted(versions) == [1, 2]


def test_a_ledger_from_a_newer_tunefleet_is_refused(storage_url: str) -> None:
    Ledger(storage_url).close()
    engine = sa.create_engine(storage_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO tunefleet_ledger_schema VALUES ({SCHEMA_VERSION + 1})")
    engine.dispose()
    with pytest.raises(RuntimeError, match=f"version {SCHEMA_VERSION + 1}, newer than this tunefleet"):
        Ledger(storage_url)


def test_controllers_starting_at_once_create_the_tables_once(postgres_url: str) -> None:
    errors: list[BaseException] = []

    def open_ledger() -> None:
        try:
            Ledger(postgres_url).close()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=open_ledger) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
