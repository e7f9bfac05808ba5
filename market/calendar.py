"""B3's trading calendar: which days have a session, and which session a moment belongs to.

Holidays are the `holidays` package's B3 financial calendar (`financial_holidays("BVMF")`): national
holidays, Carnival Monday and Tuesday, Good Friday, Corpus Christi, Christmas Eve and the last
business day of the year. Sessions are dated in America/Sao_Paulo.
"""

from __future__ import annotations

import datetime as dt
import functools
from zoneinfo import ZoneInfo

import holidays

SAO_PAULO = ZoneInfo("America/Sao_Paulo")
# The regular session's hours. The close is the latest B3 uses in the year (it moves its hours with
# US daylight saving time); it only dates the last trade of sample and fake quotes.
SESSION_OPEN = dt.time(10, 0)
SESSION_CLOSE = dt.time(18, 0)
_WEEKEND = {5: "Saturday", 6: "Sunday"}


@functools.lru_cache(maxsize=64)
def _holidays(year: int) -> dict[dt.date, str]:
    # One plain dict per year: the package's holiday objects fill themselves in lazily, which is
    # not safe to share between threads.
    return dict(holidays.financial_holidays("BVMF", years=year, language="en_US").items())


def closed_because(day: dt.date) -> str | None:
    """Why B3 has no session on `day` ("Saturday", "Carnival", ...), or None for a trading day."""
    return _WEEKEND.get(day.weekday()) or _holidays(day.year).get(day)


def is_trading_day(day: dt.date) -> bool:
    """Whether B3 holds a session on `day`."""
    return closed_because(day) is None


def previous_trading_day(day: dt.date) -> dt.date:
    """The last trading day strictly before `day`."""
    day -= dt.timedelta(days=1)
    while not is_trading_day(day):
        day -= dt.timedelta(days=1)
    return day


def trading_days(first: dt.date, last: dt.date) -> list[dt.date]:
    """The trading days from `first` to `last`, both included, oldest first."""
    days = (first + dt.timedelta(days=i) for i in range((last - first).days + 1))
    return [day for day in days if is_trading_day(day)]


def last_trading_days(count: int, last: dt.date) -> list[dt.date]:
    """The `count` trading days up to `last` (included when it is one), oldest first."""
    found: list[dt.date] = []
    day = last if is_trading_day(last) else previous_trading_day(last)
    while len(found) < count:
        found.append(day)
        day = previous_trading_day(day)
    return found[::-1]


def local_date(ts: float) -> dt.date:
    """The date in São Paulo at epoch second `ts`."""
    return dt.datetime.fromtimestamp(ts, SAO_PAULO).date()


def at(day: dt.date, time: dt.time) -> float:
    """The epoch second of `time` on `day` in São Paulo."""
    return dt.datetime.combine(day, time, SAO_PAULO).timestamp()


def session_of(ts: float) -> dt.date:
    """The session a moment belongs to: the last trading day whose session had opened by `ts`.

    A quote taken at 02:00, on a weekend or on a holiday carries the last trade of the session
    before, so it belongs to that session, never to one that has not opened yet.
    """
    now = dt.datetime.fromtimestamp(ts, SAO_PAULO)
    day = now.date()
    if is_trading_day(day) and now.time() >= SESSION_OPEN:
        return day
    return previous_trading_day(day)


def last_trade_time(ts: float) -> float:
    """`ts` during a session's hours, else the close of the session `ts` belongs to: when the last trade was."""
    session = session_of(ts)
    return min(ts, at(session, SESSION_CLOSE))
