"""Credit-limit periods: calendar periods in UTC."""

import datetime

import pytest

from kylon.periods import next_reset, period_start

T = datetime.datetime


@pytest.mark.parametrize("reset, now, start, end", [
    ("daily", T(2026, 12, 2, 13, 5), T(2026, 12, 2), T(2026, 12, 3)),
    ("daily", T(2026, 12, 31, 23, 59, 59), T(2026, 12, 31), T(2027, 1, 1)),
    ("weekly", T(2026, 12, 2, 13, 5), T(2026, 11, 30), T(2026, 12, 7)),  # a Wednesday; weeks from Monday
    ("weekly", T(2026, 11, 30, 0, 0), T(2026, 11, 30), T(2026, 12, 7)),
    ("weekly", T(2026, 12, 6, 23, 59), T(2026, 11, 30), T(2026, 12, 7)),
    ("monthly", T(2026, 12, 2, 13, 5), T(2026, 12, 1), T(2027, 1, 1)),
    ("monthly", T(2028, 2, 29, 12), T(2028, 2, 1), T(2028, 3, 1)),
    ("monthly", T(2026, 1, 31, 12), T(2026, 1, 1), T(2026, 2, 1)),
    ("none", T(2026, 12, 2), None, None),
])
def test_periods(reset, now, start, end):
    assert period_start(reset, now) == start
    assert next_reset(reset, now) == end
