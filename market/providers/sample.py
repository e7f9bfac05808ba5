"""Offline sample quotes: deterministic, plausible BRL prices, labelled as sample data everywhere.

The default provider when no brapi key is set, so the quick start runs without internet.
The same ticker in the same minute always gets the same quote; prices drift smoothly from day to
day around a reference price, with a little noise per minute. Like a real provider it trades only
in B3's sessions: out of hours a quote is the last session's last trade, and its daily history has
one bar per trading day.

Unknown tickers: a well-formed ticker with four identical letters (XXXX3, ZZZZ11) and any ticker in
the `unknown` set given to the constructor raise UnknownTicker, like a real provider would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
import time
from collections.abc import Callable, Collection, Iterable, Sequence

from market import calendar
from market.errors import MarketError, UnknownTicker
from market.models import Bar, Quote
from market.providers.base import History, HistoryRange, range_start, single_quote, split_requested
from market.tickers import is_placeholder, ticker_info, validate_ticker

SOURCE = "sample"
MINUTES_PER_DAY = 1440

# Rough reference prices (BRL) so the sample looks like the market; other tickers get one from their name.
REFERENCE_PRICES: dict[str, float] = {
    "PETR4": 38.0,
    "VALE3": 62.0,
    "ITUB4": 34.0,
    "BBDC4": 14.5,
    "BBAS3": 27.0,
    "ABEV3": 12.8,
    "WEGE3": 52.0,
    "GGBR4": 18.5,
    "RENT3": 45.0,
    "SUZB3": 55.0,
    "PRIO3": 42.0,
    "ELET3": 44.0,
    "TAEE11": 35.0,
    "BOVA11": 125.0,
    "HGLG11": 160.0,
}


def _unit(*parts: object) -> float:
    """A stable number in [0, 1) from the parts (the same on every machine and run)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class SampleProvider:
    """Deterministic offline quotes, `source="sample"`, names suffixed "(sample data)"."""

    name = SOURCE

    def __init__(self, *, unknown: Collection[str] = (), clock: Callable[[], float] = time.time) -> None:
        self._unknown = frozenset(validate_ticker(t) for t in unknown)
        self._clock = clock

    def knows(self, ticker: str) -> bool:
        """Whether the sample has prices for this (canonical) ticker."""
        return not is_placeholder(ticker) and ticker not in self._unknown

    def price_at(self, ticker: str, minute: int) -> float:
        """The sample price of `ticker` in the given minute since the epoch, rounded to centavos."""
        base = REFERENCE_PRICES.get(ticker) or 5.0 + 145.0 * _unit(ticker, "base")
        day = minute / MINUTES_PER_DAY
        phase = 2 * math.pi * _unit(ticker, "phase")
        trend = 0.10 * math.sin(2 * math.pi * day / 90 + phase) + 0.04 * math.sin(2 * math.pi * day / 17 + 2 * phase)
        intraday = 0.006 * math.sin(2 * math.pi * minute / 390 + phase)
        noise = random.Random("%s:%d" % (ticker, minute)).gauss(0.0, 0.002)
        return round(base * (1 + trend + intraday + noise), 2)

    def quote_at(self, ticker: str, now: float) -> Quote:
        """The sample quote of a known ticker at epoch second `now`: the session's last trade so far,
        with the session's open, high, low and volume; change is against the session before."""
        bar = self.bar(ticker, calendar.session_of(now), until=now)
        previous = self.bar(ticker, calendar.previous_trading_day(bar.session)).close
        info = ticker_info(ticker)
        return Quote(
            ticker=ticker,
            name="%s (sample data)" % (info.name if info else ticker),
            price=bar.close,
            change=round(bar.close - previous, 2),
            change_percent=round((bar.close - previous) / previous * 100, 4),
            volume=bar.volume,
            time=bar.time,
            currency="BRL",
            source=SOURCE,
            day_open=bar.open,
            day_high=bar.high,
            day_low=bar.low,
        )

    def bar(self, ticker: str, session: dt.date, until: float | None = None) -> Bar:
        """The sample bar of `session`, up to epoch second `until` (default: the whole session).

        Prices are taken at the open, on every full hour and at the last minute; the volume grows
        with the minutes traded.
        """
        open_minute = int(calendar.at(session, calendar.SESSION_OPEN) // 60)
        close_minute = int(calendar.at(session, calendar.SESSION_CLOSE) // 60)
        last = close_minute if until is None else max(open_minute, min(close_minute, int(until // 60)))
        minutes = sorted({*range(open_minute, last, 60), last})
        prices = [self.price_at(ticker, m) for m in minutes]
        full_day = random.Random("%s:%s:volume" % (ticker, session)).random()
        volume = int((1_000_000 + 49_000_000 * full_day) * (last - open_minute + 1) / (close_minute - open_minute + 1))
        return Bar(
            ticker=ticker,
            session=session,
            open=prices[0],
            high=max(prices),
            low=min(prices),
            close=prices[-1],
            volume=volume,
            time=float(last * 60),
            source=SOURCE,
        )

    def bars(self, ticker: str, sessions: Iterable[dt.date], now: float) -> list[Bar]:
        """The sample bars of `sessions` as known at `now`: the current session's so far."""
        current = calendar.session_of(now)
        return [self.bar(ticker, s, until=now if s == current else None) for s in sessions if s <= current]

    async def quotes(self, tickers: Sequence[str]) -> dict[str, Quote | MarketError]:
        valid, out = split_requested(tickers)
        now = self._clock()
        results: dict[str, Quote | MarketError] = dict(out)
        for ticker in valid:
            if self.knows(ticker):
                results[ticker] = self.quote_at(ticker, now)
            else:
                results[ticker] = UnknownTicker(ticker, SOURCE, "not in the sample data")
        return results

    async def quote(self, ticker: str) -> Quote:
        return await single_quote(self, ticker)

    async def history(self, ticker: str, range_: HistoryRange) -> History:
        quote = await self.quote(ticker)
        now = self._clock()
        last = calendar.session_of(now)
        sessions = calendar.trading_days(range_start(range_, last), last)
        return History(quote, self.bars(quote.ticker, sessions, now))

    async def aclose(self) -> None:
        return None
