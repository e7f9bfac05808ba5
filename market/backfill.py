"""Price updates with history: when a quote must bring the ticker's daily history along, and storing both.

A ticker is backfilled when the sessions an analysis reads (the MIN_CLOSES sessions before the
current one) are not all stored from the active source: a ticker seen for the first time, one that
was not updated for weeks, a session whose nightly update ran only after the next session had
opened. The history comes in the same request as the quote (brapi's `range` with `interval=1d`),
so an update costs one request either way, and it is asked at most once per session per ticker: a
ticker that has traded fewer days than asked is not asked again until the next session.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from market import calendar
from market.analysis import MIN_CLOSES
from market.models import Bar, Quote
from market.providers.base import History, HistoryRange
from market.store import MarketStore


class Quotes(Protocol):
    """What an update asks the provider: a quote, or a quote with daily history (see PacedQuotes)."""

    name: str

    def get(self, ticker: str) -> Quote: ...

    def history(self, ticker: str, range_: HistoryRange) -> History: ...


class Update(NamedTuple):
    """What an update stored: the quote, the bar it updated, and the history fetched with it (range, bars)."""

    quote: Quote
    bar: Bar
    fetched: HistoryRange | None
    bars: int


def history_wanted(
    store: MarketStore,
    ticker: str,
    source: str,
    *,
    now: float,
    backfill_range: HistoryRange,
) -> HistoryRange | None:
    """`backfill_range` when an update of `ticker` at `now` should fetch daily history with the quote:
    the analysis window is not all stored, and the ticker was not backfilled in the current session."""
    current = calendar.session_of(now)
    window = calendar.last_trading_days(MIN_CLOSES, calendar.previous_trading_day(current))
    if store.count_bars(ticker, source, window[0], window[-1]) == len(window):
        return None
    last = store.last_backfill(ticker, source)
    return backfill_range if last is None or last.session < current else None


def update(
    quotes: Quotes,
    store: MarketStore,
    ticker: str,
    *,
    now: float,
    backfill_range: HistoryRange,
) -> Update:
    """Fetch the ticker's quote, with daily history when `history_wanted` says so, and store them.

    One provider request; its MarketError is raised and nothing is stored. The ticker is tracked.
    """
    wanted = history_wanted(store, ticker, quotes.name, now=now, backfill_range=backfill_range)
    if wanted is None:
        quote = quotes.get(ticker)
        return Update(quote, store.add_quote(quote), None, 0)
    history = quotes.history(ticker, wanted)
    return Update(history.quote, store.add_history(history, backfill_range=wanted), wanted, len(history.bars))


def ensure_history(
    quotes: Quotes, store: MarketStore, ticker: str, *, now: float, backfill_range: HistoryRange
) -> Update | None:
    """Backfill the ticker when its analysis window is not all stored (see `history_wanted`); None when
    nothing was fetched. Raises the provider's MarketError."""
    if history_wanted(store, ticker, quotes.name, now=now, backfill_range=backfill_range) is None:
        return None
    return update(quotes, store, ticker, now=now, backfill_range=backfill_range)
