"""Daily bars: the bar a quote says about its session, and two observations of one session merged."""

from __future__ import annotations

from market import calendar
from market.models import Bar, Quote


def bar_of(quote: Quote) -> Bar:
    """The bar of the quote's session as far as the quote tells: its price is the close so far, and the
    session's open, high and low are the provider's when it gives them."""
    prices = [p for p in (quote.price, quote.day_open, quote.day_high, quote.day_low) if p is not None]
    return Bar(
        ticker=quote.ticker,
        session=calendar.session_of(quote.time),
        open=quote.day_open if quote.day_open is not None else quote.price,
        high=max(prices),
        low=min(prices),
        close=quote.price,
        volume=quote.volume,
        time=quote.time,
        source=quote.source,
    )


def merge(stored: Bar, seen: Bar) -> Bar:
    """One bar from two observations of the same session and source: the close and volume of the newer,
    the open of the older, high and low widened over both."""
    if (stored.ticker, stored.session, stored.source) != (seen.ticker, seen.session, seen.source):
        raise ValueError(
            "merge: bars of different sessions: %s %s %s and %s %s %s"
            % (stored.ticker, stored.session, stored.source, seen.ticker, seen.session, seen.source)
        )
    older, newer = (stored, seen) if seen.time >= stored.time else (seen, stored)
    return Bar(
        ticker=stored.ticker,
        session=stored.session,
        open=older.open,
        high=max(stored.high, seen.high),
        low=min(stored.low, seen.low),
        close=newer.close,
        volume=newer.volume if newer.volume is not None else older.volume,
        time=newer.time,
        source=stored.source,
    )
