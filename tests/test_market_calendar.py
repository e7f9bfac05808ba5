"""B3's trading calendar: holidays from the `holidays` package's BVMF calendar, sessions dated in São Paulo."""

from __future__ import annotations

import datetime as dt

import pytest

from market import calendar

D = dt.date


def sp(year: int, month: int, day: int, hour: int, minute: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=calendar.SAO_PAULO).timestamp()


@pytest.mark.parametrize(
    "day, why",
    [
        (D(2026, 2, 16), "Carnival"),  # Monday
        (D(2026, 2, 17), "Carnival"),  # Tuesday
        (D(2026, 4, 3), "Good Friday"),
        (D(2026, 4, 21), "Tiradentes' Day"),
        (D(2026, 6, 4), "Corpus Christi"),
        (D(2026, 11, 20), "National Day of Zumbi and Black Awareness"),
        (D(2026, 12, 24), "Christmas Eve"),
        (D(2026, 12, 31), "Last Business Day of the Year"),
        (D(2026, 3, 14), "Saturday"),
        (D(2026, 3, 15), "Sunday"),
    ],
)
def test_days_without_a_session_say_why(day: dt.date, why: str) -> None:
    assert calendar.closed_because(day) == why
    assert not calendar.is_trading_day(day)


@pytest.mark.parametrize("day", [D(2026, 2, 13), D(2026, 2, 18), D(2026, 3, 10), D(2026, 12, 30)])
def test_ordinary_weekdays_and_ash_wednesday_trade(day: dt.date) -> None:
    assert calendar.closed_because(day) is None and calendar.is_trading_day(day)


def test_previous_trading_days_skip_weekends_and_holidays() -> None:
    assert calendar.previous_trading_day(D(2026, 2, 18)) == D(2026, 2, 13)  # over Carnival and the weekend
    assert calendar.previous_trading_day(D(2026, 3, 11)) == D(2026, 3, 10)
    assert calendar.trading_days(D(2026, 2, 12), D(2026, 2, 19)) == [
        D(2026, 2, 12),
        D(2026, 2, 13),
        D(2026, 2, 18),
        D(2026, 2, 19),
    ]
    assert calendar.last_trading_days(3, D(2026, 2, 17)) == [D(2026, 2, 11), D(2026, 2, 12), D(2026, 2, 13)]
    assert calendar.last_trading_days(2, D(2026, 2, 18)) == [D(2026, 2, 13), D(2026, 2, 18)]


@pytest.mark.parametrize(
    "when, session",
    [
        (sp(2026, 3, 10, 10, 0), D(2026, 3, 10)),  # the open
        (sp(2026, 3, 10, 17, 30), D(2026, 3, 10)),
        (sp(2026, 3, 10, 23, 59), D(2026, 3, 10)),
        (sp(2026, 3, 11, 2, 0), D(2026, 3, 10)),  # the night after belongs to the session before
        (sp(2026, 3, 11, 9, 59), D(2026, 3, 10)),
        (sp(2026, 3, 14, 12, 0), D(2026, 3, 13)),  # Saturday: Friday's
        (sp(2026, 2, 17, 12, 0), D(2026, 2, 13)),  # Carnival Tuesday: the Friday before
        (sp(2026, 2, 18, 2, 0), D(2026, 2, 13)),  # the morning after Carnival
    ],
)
def test_a_moment_belongs_to_the_last_session_that_had_opened(when: float, session: dt.date) -> None:
    assert calendar.session_of(when) == session


def test_the_last_trade_is_now_in_session_else_the_close_of_the_session_before() -> None:
    assert calendar.last_trade_time(sp(2026, 3, 10, 14)) == sp(2026, 3, 10, 14)
    assert calendar.last_trade_time(sp(2026, 3, 11, 2)) == sp(2026, 3, 10, 18)
    assert calendar.last_trade_time(sp(2026, 2, 16, 12)) == sp(2026, 2, 13, 18)
    assert calendar.local_date(sp(2026, 3, 10, 23, 30)) == D(2026, 3, 10)  # 02:30 UTC the next day
