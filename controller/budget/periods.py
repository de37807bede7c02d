"""Budget periods on the UTC calendar: when a namespace's GPUBudget last refilled and next refills.

All datetimes here are naive UTC, as the ledger stores them. An aware datetime is converted first.
"""

from __future__ import annotations

import datetime
from typing import Literal

Period = Literal["none", "daily", "weekly", "monthly"]
PERIODS: tuple[Period, ...] = ("none", "daily", "weekly", "monthly")

# The start of a budget that never refills: every reservation ever made belongs to it.
EPOCH = datetime.datetime(1970, 1, 1)


def as_naive_utc(moment: datetime.datetime) -> datetime.datetime:
    """``moment`` in UTC without tzinfo (naive datetimes are taken to be UTC already)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(datetime.UTC).replace(tzinfo=None)


def check_period(period: str) -> Period:
    """``period`` if it is one of none/daily/weekly/monthly; ValueError naming the field otherwise."""
    if period not in PERIODS:
        raise ValueError(f"period: {period!r} is not one of {', '.join(PERIODS)}")
    return period


def period_start(period: str, now: datetime.datetime) -> datetime.datetime:
    """When the period holding ``now`` began: midnight, Monday midnight, the 1st, or the epoch."""
    moment = as_naive_utc(now)
    kind = check_period(period)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "daily":
        return midnight
    if kind == "weekly":
        return midnight - datetime.timedelta(days=midnight.weekday())
    if kind == "monthly":
        return midnight.replace(day=1)
    return EPOCH


def next_period_start(period: str, now: datetime.datetime) -> datetime.datetime | None:
    """When the budget next refills, or None for ``period: none``."""
    start = period_start(period, now)
    if period == "daily":
        return start + datetime.timedelta(days=1)
    if period == "weekly":
        return start + datetime.timedelta(days=7)
    if period == "monthly":
        if start.month == 12:
            return start.replace(year=start.year + 1, month=1)
        return start.replace(month=start.month + 1)
    return None
