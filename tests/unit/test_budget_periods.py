"""GPUBudget periods on the UTC calendar."""

from __future__ import annotations

import datetime

import pytest

from controller.budget.periods import EPOCH, next_period_start, period_start

D = datetime.datetime


@pytest.mark.parametrize(
    ("period", "now", "start", "following"),
    [
        ("daily", D(2026, 3, 4, 17, 30), D(2026, 3, 4), D(2026, 3, 5)),
        ("weekly", D(2026, 3, 4, 17, 30), D(2026, 3, 2), D(2026, 3, 9)),  # 2026-03-02 is a Monday
        ("monthly", D(2026, 3, 31, 23, 59), D(2026, 3, 1), D(2026, 4, 1)),
        ("monthly", D(2026, 12, 15), D(2026, 12, 1), D(2027, 1, 1)),
        ("none", D(2026, 3, 4), EPOCH, None),
    ],
)
def test_period_bounds(period: str, now: D, start: D, following: D | None) -> None:
    assert period_start(period, now) == start
    assert next_period_start(period, now) == following


def test_aware_times_are_taken_in_utc() -> None:
    # 00:30 on the 5th in UTC+2 is still the 4th in UTC.
    local = D(2026, 3, 5, 0, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert period_start("daily", local) == D(2026, 3, 4)


def test_an_unknown_period_is_named() -> None:
    with pytest.raises(ValueError, match="period: 'hourly' is not one of none, daily, weekly, monthly"):
        period_start("hourly", D(2026, 1, 1))
