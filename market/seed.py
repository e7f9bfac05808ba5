"""Seed data for the quick start: the usual B3 tickers, with sample daily bars to analyse."""

from __future__ import annotations

import time
from typing import NamedTuple

from market import calendar
from market.providers.base import History
from market.providers.sample import SOURCE as SAMPLE_SOURCE
from market.providers.sample import SampleProvider
from market.store import MarketStore
from market.tickers import DEFAULT_TICKERS


class SeedReport(NamedTuple):
    """What a seed did: tickers newly tracked, tickers given sample history, bars written."""

    tracked: int
    with_history: int
    bars: int


def seed_defaults(store: MarketStore, *, history_days: int = 120, now: float | None = None) -> SeedReport:
    """Track DEFAULT_TICKERS and give each one without sample bars `history_days` sessions of them,
    up to the session of `now`, and the sample quote at `now`.

    Idempotent: tickers that have sample bars keep them. Everything written is labelled source="sample";
    `history_days=0` only tracks.
    """
    end = time.time() if now is None else now
    tracked = store.seed(DEFAULT_TICKERS)
    if history_days <= 0:
        return SeedReport(tracked, 0, 0)
    sample = SampleProvider(clock=lambda: end)
    sessions = calendar.last_trading_days(history_days, calendar.session_of(end))
    with_history = bars = 0
    for info in DEFAULT_TICKERS:
        if store.bars(info.ticker, SAMPLE_SOURCE, limit=1):
            continue
        history = History(sample.quote_at(info.ticker, end), sample.bars(info.ticker, sessions, end))
        store.add_history(history)
        with_history += 1
        bars += len(history.bars)
    return SeedReport(tracked, with_history, bars)
