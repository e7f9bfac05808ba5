"""Seed data for the quick start: the usual B3 tickers, with sample price history to analyse."""

from __future__ import annotations

import time
from typing import NamedTuple

from market.providers.sample import SOURCE as SAMPLE_SOURCE
from market.providers.sample import SampleProvider
from market.store import DAY_S, MarketStore
from market.tickers import DEFAULT_TICKERS


class SeedReport(NamedTuple):
    """What a seed did: tickers newly tracked, tickers given history, quotes written."""

    tracked: int
    with_history: int
    quotes: int


def seed_defaults(store: MarketStore, *, history_days: int = 120, now: float | None = None) -> SeedReport:
    """Track DEFAULT_TICKERS and give each one without history `history_days` daily sample closes.

    Idempotent: tickers that already have quotes keep them. The history is labelled source="sample".
    """
    end = time.time() if now is None else now
    tracked = store.seed(DEFAULT_TICKERS)
    sample = SampleProvider(clock=lambda: end)
    with_history = quotes = 0
    for info in DEFAULT_TICKERS:
        if history_days <= 0 or store.latest_quote(info.ticker) is not None:
            continue
        closes = sample.daily_closes(info.ticker, history_days, end=end)
        start = end - (history_days - 1) * DAY_S
        quotes += store.seed_history(info.ticker, closes, start, source=SAMPLE_SOURCE)
        with_history += 1
    return SeedReport(tracked, with_history, quotes)
