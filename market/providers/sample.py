"""Offline sample quotes: deterministic, plausible BRL prices, labelled as sample data everywhere.

The default provider when no brapi key is set, so the quick start runs without internet.
The same ticker in the same minute always gets the same quote; prices drift smoothly from day to
day around a reference price, with a little noise per minute.

Unknown tickers: a well-formed ticker with four identical letters (XXXX3, ZZZZ11) and any ticker in
the `unknown` set given to the constructor raise UnknownTicker, like a real provider would.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Collection, Sequence

from market.errors import MarketError, UnknownTicker
from market.models import Quote
from market.providers.base import single_quote, split_requested
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
        """The sample quote of a known ticker at epoch second `now`; change is against 24 hours earlier."""
        minute = int(now // 60)
        price = self.price_at(ticker, minute)
        previous = self.price_at(ticker, minute - MINUTES_PER_DAY)
        info = ticker_info(ticker)
        return Quote(
            ticker=ticker,
            name="%s (sample data)" % (info.name if info else ticker),
            price=price,
            change=round(price - previous, 2),
            change_percent=round((price - previous) / previous * 100, 4),
            volume=int(1_000_000 + 49_000_000 * random.Random("%s:%d:volume" % (ticker, minute)).random()),
            time=float(minute * 60),
            currency="BRL",
            source=SOURCE,
        )

    def daily_closes(self, ticker: str, days: int, end: float | None = None) -> list[float]:
        """`days` daily closing prices (oldest first) ending the day of `end`: history for demos."""
        end_minute = int((self._clock() if end is None else end) // 60)
        return [self.price_at(ticker, end_minute - d * MINUTES_PER_DAY) for d in range(days - 1, -1, -1)]

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

    async def aclose(self) -> None:
        return None
