"""Provisional reservations: hold a trial's room before the trial exists, then rekey it to the trial.

On SQLite and PostgreSQL. A reservation refused in a race must leave no trial behind, so the
controller reserves under a provisional key first; these tests hold the ledger to that contract.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator

import pytest

from controller.budget.accounting import Charge
from controller.budget.ledger import (
    PROVISIONAL_TRIAL,
    Ledger,
    is_provisional,
    provisional_key,
)

STUDY = "team-a/s"
NAMESPACE = "team-a"
WORST = Charge(gpu_seconds=100)


@pytest.fixture
def ledger(storage_url: str) -> Iterator[Ledger]:
    with Ledger(storage_url) as opened:
        yield opened


def reserve_provisional(ledger: Ledger, study: str = STUDY, amount: Charge = WORST) -> str | None:
    key = provisional_key(study)
    return key if ledger.reserve(key, study, PROVISIONAL_TRIAL, amount, NAMESPACE) else None


def test_provisional_keys_are_fresh_marked_and_fit_the_key_column() -> None:
    first, second = provisional_key(STUDY), provisional_key(STUDY)
    assert first != second
    assert first.startswith("team-a/s/provisional/")
    assert is_provisional(first, STUDY) and not is_provisional(first, "team-a/other")
    assert not is_provisional("team-a/s/3", STUDY)
    long_study = "n" * 63 + "/" + "s" * 253  # the longest namespace/name Kubernetes allows
    long_key = provisional_key(long_study)
    assert len(long_key) <= 320 and is_provisional(long_key, long_study)


def test_rekey_moves_the_reservation_to_the_trial_and_keeps_the_totals(ledger: Ledger) -> None:
    ledger.set_study_limits(STUDY, gpu_seconds=250, cpu_seconds=None)
    ledger.set_namespace_budget(NAMESPACE, 1000, "daily", None)
    provisional = reserve_provisional(ledger)
    assert provisional is not None
    held = ledger.reservation(provisional)
    assert held is not None and held.trial_number == PROVISIONAL_TRIAL
    before = (ledger.totals(STUDY), ledger.namespace_totals(NAMESPACE, study_key=STUDY))

    assert ledger.rekey(provisional, "team-a/s/7", 7)

    assert ledger.reservation(provisional) is None
    moved = ledger.reservation("team-a/s/7")
    assert moved is not None
    assert (moved.trial_number, moved.amount, moved.study, moved.namespace) == (7, WORST, STUDY, NAMESPACE)
    assert moved.created_at == held.created_at and moved.released_at is None  # same budget period
    assert (ledger.totals(STUDY), ledger.namespace_totals(NAMESPACE, study_key=STUDY)) == before
    assert ledger.open_reservations(STUDY) == {"team-a/s/7": 7}
    # The trial's pod settles against its own key, as any reservation.
    assert ledger.settle("pod-7", "team-a/s/7", Charge(gpu_seconds=40), 40.0) == Charge(gpu_seconds=40)
    assert ledger.charges_by_trial(STUDY) == {7: Charge(gpu_seconds=40)}


def test_rekey_after_release_provisional_returns_false_and_leaves_nothing_open(ledger: Ledger) -> None:
    first, second = reserve_provisional(ledger), reserve_provisional(ledger)
    assert first is not None and second is not None
    assert ledger.reserve("team-a/s/0", STUDY, 0, WORST, NAMESPACE)  # a trial's own: not provisional
    other = reserve_provisional(ledger, study="team-a/other")
    assert other is not None

    assert ledger.release_provisional(STUDY) == 2
    assert ledger.release_provisional(STUDY) == 0

    assert not ledger.rekey(first, "team-a/s/1", 1)
    assert ledger.reservation("team-a/s/1") is None
    assert ledger.open_reservations(STUDY) == {"team-a/s/0": 0}
    assert ledger.totals(STUDY).reserved == WORST
    assert ledger.open_reservations("team-a/other") == {other: PROVISIONAL_TRIAL}  # another study's
    assert not ledger.rekey(provisional_key(STUDY), "team-a/s/2", 2)  # never reserved at all


def test_rekey_twice_is_idempotent(ledger: Ledger) -> None:
    provisional = reserve_provisional(ledger)
    assert provisional is not None
    assert ledger.rekey(provisional, "team-a/s/3", 3)
    assert ledger.rekey(provisional, "team-a/s/3", 3)  # a retry after a lost reply
    assert ledger.open_reservations(STUDY) == {"team-a/s/3": 3}
    assert ledger.totals(STUDY).reserved == WORST


def test_rekey_onto_an_existing_trial_key_releases_the_provisional_room(ledger: Ledger) -> None:
    # A controller that crashed after reserving the trial's own key, retrying with a new provisional.
    assert ledger.reserve("team-a/s/4", STUDY, 4, WORST, NAMESPACE)
    provisional = reserve_provisional(ledger)
    assert provisional is not None
    assert ledger.totals(STUDY).reserved == WORST + WORST
    assert ledger.rekey(provisional, "team-a/s/4", 4)
    assert ledger.open_reservations(STUDY) == {"team-a/s/4": 4}
    assert ledger.totals(STUDY).reserved == WORST


def test_a_provisional_reservation_is_refused_when_the_budget_is_full(ledger: Ledger) -> None:
    ledger.set_study_limits(STUDY, gpu_seconds=250, cpu_seconds=None)
    assert reserve_provisional(ledger) is not None
    assert reserve_provisional(ledger) is not None
    assert reserve_provisional(ledger) is None  # 3 x 100 > 250: nothing written
    assert len(ledger.open_reservations(STUDY)) == 2
    assert ledger.totals(STUDY).reserved.gpu_seconds == 200
    ledger.release_provisional(STUDY)
    assert reserve_provisional(ledger) is not None  # released room is reservable again


def test_a_gpubudget_counts_provisional_reservations(ledger: Ledger) -> None:
    ledger.set_namespace_budget(NAMESPACE, 250, "none", None)
    assert reserve_provisional(ledger, study="team-a/one") is not None
    assert reserve_provisional(ledger, study="team-a/two") is not None
    spent = ledger.namespace_totals(NAMESPACE, study_key="team-a/one")
    assert spent is not None
    assert (spent.used, spent.reserved, spent.remaining, spent.study_reserved) == (0, 200, 50, 100)
    # Neither a provisional nor a trial's own reservation of any study fits the 50 left.
    assert reserve_provisional(ledger, study="team-a/three") is None
    assert not ledger.reserve("team-a/three/0", "team-a/three", 0, WORST, NAMESPACE)
    assert ledger.release_provisional("team-a/two") == 1
    assert ledger.reserve("team-a/three/0", "team-a/three", 0, WORST, NAMESPACE)


def test_a_rekeyed_reservation_counts_in_the_period_it_was_made_in(ledger: Ledger) -> None:
    monday = datetime.datetime(2026, 3, 2, 12, 0)
    ledger.set_namespace_budget(NAMESPACE, 150, "weekly", None, now=monday)
    provisional = provisional_key(STUDY)
    assert ledger.reserve(provisional, STUDY, PROVISIONAL_TRIAL, WORST, NAMESPACE, now=monday)
    assert ledger.rekey(provisional, "team-a/s/0", 0)
    this_week = ledger.namespace_totals(NAMESPACE, now=monday + datetime.timedelta(days=1))
    next_week = ledger.namespace_totals(NAMESPACE, now=monday + datetime.timedelta(days=7))
    assert this_week is not None and next_week is not None
    assert (this_week.reserved, next_week.reserved) == (100, 0)


def race_for_the_last_room(storage_url: str, namespace: str, racers: int) -> list[str]:
    """``racers`` controllers, each with its own Ledger (its own connections) and study, reserve
    provisionally at once; returns the keys that were granted."""
    ledgers = [Ledger(storage_url) for _ in range(racers)]
    barrier = threading.Barrier(racers)
    won: list[str] = []
    lock = threading.Lock()

    def race(racer: int, own: Ledger) -> None:
        study = f"{namespace}/racer-{racer}"
        key = provisional_key(study)
        barrier.wait()
        if own.reserve(key, study, PROVISIONAL_TRIAL, WORST, namespace):
            with lock:
                won.append(key)

    threads = [threading.Thread(target=race, args=(i, own)) for i, own in enumerate(ledgers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for own in ledgers:
        own.close()
    return won


@pytest.mark.timeout(120)
def test_controllers_racing_for_the_last_room_get_exactly_one_provisional_reservation(
    storage_url: str,
) -> None:
    with Ledger(storage_url) as setup:
        for round_number in range(5):
            namespace = f"team-{round_number}"
            # Room for one more worst case beside the running trial's, and 10 GPU-seconds over.
            setup.set_namespace_budget(namespace, 2 * WORST.gpu_seconds + 10, "none", None)
            assert setup.reserve(f"{namespace}/busy/0", f"{namespace}/busy", 0, WORST, namespace)
            won = race_for_the_last_room(storage_url, namespace, racers=6)
            assert len(won) == 1, f"round {round_number}: {len(won)} racers reserved the last room"
            spent = setup.namespace_totals(namespace)
            assert spent is not None and spent.reserved == 2 * WORST.gpu_seconds
