"""A key's credit-limit period (none, daily, weekly, monthly: calendar
periods in UTC, weeks from Monday), and what keys spent in one, read from
the daily usage rollups."""

import datetime
from decimal import Decimal

from peewee import fn

from .models import UsageRollup, from_nano
from .models.rollup import DAY


def period_start(reset, now):
    """The first moment of the period `now` is in (naive UTC), or None for
    "none": a limit that never resets counts everything the key spent."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == "daily":
        return day
    if reset == "weekly":
        return day - datetime.timedelta(days=day.weekday())
    if reset == "monthly":
        return day.replace(day=1)
    return None


def next_reset(reset, now):
    """When the period `now` is in ends, or None for "none"."""
    start = period_start(reset, now)
    if start is None:
        return None
    if reset == "daily":
        return start + datetime.timedelta(days=1)
    if reset == "weekly":
        return start + datetime.timedelta(days=7)
    return (start.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)


def key_spend(starts):
    """{key_id: credits spent since its period's start} for {key_id: start
    or None}, from the daily rollups (periods begin at midnight, so whole
    days add up to a period). On the database thread."""
    spent = {}
    by_start = {}
    for key_id, start in starts.items():
        by_start.setdefault(start, []).append(key_id)
        spent[key_id] = Decimal(0)
    for start, key_ids in by_start.items():
        query = (UsageRollup.select(UsageRollup.key_id, fn.SUM(UsageRollup.credits))
                 .where((UsageRollup.period == DAY + "k") & UsageRollup.key_id.in_(key_ids)))
        if start is not None:
            query = query.where(UsageRollup.start >= start)
        for key_id, nano in query.group_by(UsageRollup.key_id).tuples():
            spent[key_id] = from_nano(int(nano or 0))
    return spent
