"""Cron expressions: Vixie semantics, timezones, and clear errors."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from runtime.core.cron import Cron, CronError

UTC = dt.timezone.utc
SAO_PAULO = ZoneInfo("America/Sao_Paulo")


def test_nightly_update_runs_at_two_in_sao_paulo() -> None:
    cron = Cron.parse("0 2 * * *")
    after = dt.datetime(2026, 11, 28, 3, 0, tzinfo=UTC)  # 00:00 in São Paulo (UTC-3)
    assert cron.next_after(after, SAO_PAULO) == dt.datetime(2026, 11, 28, 5, 0, tzinfo=UTC)


def test_steps_ranges_names_and_lists() -> None:
    cron = Cron.parse("*/15 9-17 * * mon-fri")
    saturday = dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert cron.next_after(saturday, ZoneInfo("UTC")) == dt.datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert Cron.parse("0 0 1,15 jan,jul *").months == frozenset({1, 7})
    assert Cron.parse("@hourly").minutes == frozenset({0})


def test_day_of_month_or_day_of_week_when_both_restricted() -> None:
    cron = Cron.parse("0 0 13 * 5")  # the 13th, or any Friday (Vixie cron), not only Friday the 13th
    assert cron.matches(dt.datetime(2026, 11, 13, 0, 0))  # a Friday the 13th
    assert cron.matches(dt.datetime(2026, 11, 20, 0, 0))  # a Friday
    assert cron.matches(dt.datetime(2026, 10, 13, 0, 0))  # a Tuesday the 13th
    assert not cron.matches(dt.datetime(2026, 11, 19, 0, 0))


def test_sunday_is_0_or_7() -> None:
    assert Cron.parse("0 0 * * 7").weekdays == Cron.parse("0 0 * * 0").weekdays == frozenset({0})


@pytest.mark.parametrize(
    "expression, message",
    [
        ("0 2 * *", "expected 5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* * * foo *", "month: 'foo' is not a number or name"),
        ("*/0 * * * *", "step '0' must be a positive number"),
        ("5-1 * * * *", "range 5-1 runs backwards"),
    ],
)
def test_bad_expressions_say_which_field(expression: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        Cron.parse(expression)


def test_an_expression_that_never_fires_is_an_error() -> None:
    with pytest.raises(CronError, match="never fires"):
        Cron.parse("0 0 30 2 *").next_after(dt.datetime(2026, 1, 1, tzinfo=UTC), ZoneInfo("UTC"))
