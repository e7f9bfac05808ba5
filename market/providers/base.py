"""The interface every quote provider implements."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol, get_args, runtime_checkable

from market.errors import InvalidTicker, MarketError
from market.models import Bar, Quote
from market.tickers import validate_ticker

# How far back daily history goes, in brapi's words (`range`), and the calendar days each spans.
HistoryRange = Literal["5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y"]
HISTORY_RANGES: tuple[HistoryRange, ...] = get_args(HistoryRange)
RANGE_DAYS: dict[HistoryRange, int] = {
    "5d": 7,
    "1mo": 31,
    "3mo": 92,
    "6mo": 183,
    "1y": 366,
    "2y": 731,
    "5y": 1827,
    "10y": 3653,
}


def range_start(range_: HistoryRange, last: dt.date) -> dt.date:
    """The first day a `range_` of daily history ending on `last` covers."""
    return last - dt.timedelta(days=RANGE_DAYS[range_] - 1)


class History(NamedTuple):
    """A ticker's current quote and its daily bars (oldest first) over the range asked."""

    quote: Quote
    bars: list[Bar]


@runtime_checkable
class QuoteProvider(Protocol):
    """A source of quotes for B3 tickers.

    `quotes()` answers one entry per requested ticker: its Quote, or the MarketError for that ticker
    alone (UnknownTicker, InvalidTicker, MalformedResponse). It raises only what applies to the whole
    call (RateLimited, ProviderTimeout, ProviderUnavailable, ProviderAuthError), so a caller retries
    the call, not a ticker. `quote()` raises the ticker's error.

    `history()` is the quote and the daily bars of one ticker, in one request: fewer bars than the
    range spans when the ticker has traded less, none when the provider has no history for it.
    """

    name: str

    async def quotes(self, tickers: Sequence[str]) -> dict[str, Quote | MarketError]: ...

    async def quote(self, ticker: str) -> Quote: ...

    async def history(self, ticker: str, range_: HistoryRange) -> History: ...

    async def aclose(self) -> None: ...


def split_requested(tickers: Sequence[str]) -> tuple[list[str], dict[str, MarketError]]:
    """The distinct valid tickers in canonical form (request order) and an InvalidTicker for each other text.

    Results of `quotes()` are keyed by the canonical ticker ("petr4 " -> "PETR4"); a text that is
    not a ticker keeps its own key.
    """
    valid: list[str] = []
    invalid: dict[str, MarketError] = {}
    for text in tickers:
        try:
            ticker = validate_ticker(text)
        except InvalidTicker as exc:
            invalid[text] = exc
            continue
        if ticker not in valid:
            valid.append(ticker)
    return valid, invalid


async def single_quote(provider: QuoteProvider, ticker: str) -> Quote:
    """`quote()` in terms of `quotes()`: the ticker's quote, or its error raised."""
    ticker = validate_ticker(ticker)
    answer = (await provider.quotes([ticker]))[ticker]
    if isinstance(answer, MarketError):
        raise answer
    return answer
