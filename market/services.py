"""The domain services handlers reach as `ctx.services`: quotes (paced toward the provider), the store, the clock.

The B3 app builds one `Services` per process (b3app/services.py, from BRAPI_* and the data dir).
Nothing expensive happens there: the quote client and the store are made on first use, and made
again in a forked worker process, which must not share its parent's threads, sockets or SQLite handles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from market import backfill
from market.models import Quote
from market.providers import make_provider
from market.providers.base import HISTORY_RANGES, RANGE_DAYS, History, HistoryRange
from market.providers.blocking import BlockingQuotes
from market.providers.brapi import SOURCE as BRAPI_SOURCE
from market.providers.sample import SOURCE as SAMPLE_SOURCE
from market.seed import SeedReport, seed_defaults
from market.store import MarketStore

log = logging.getLogger(__name__)

DEFAULT_RATE_LIMIT = "5/1"
DEFAULT_HISTORY_RANGE: HistoryRange = "3mo"  # every brapi plan serves it: ~62 sessions, more than an analysis needs
STORE_FILE = "market.sqlite3"


class RateLimit(NamedTuple):
    """At most `limit` provider requests in any `per_s` seconds."""

    limit: int
    per_s: float

    def __str__(self) -> str:
        return "%d/%g" % (self.limit, self.per_s)


def parse_rate_limit(text: str) -> RateLimit | None:
    """`"5/1"` → RateLimit(5, 1.0); `"off"` → None. ValueError saying what was expected otherwise."""
    value = text.strip().lower()
    if value in ("off", "none", "0"):
        return None
    expected = "expected LIMIT/SECONDS such as 5/1 (5 requests per second) or 100/60, or off; got %r" % text
    limit_text, slash, per_text = value.partition("/")
    try:
        limit, per_s = int(limit_text), float(per_text.removesuffix("s"))
    except ValueError:
        raise ValueError(expected) from None
    if not slash or limit < 1 or not 0 < per_s < float("inf"):
        raise ValueError(expected)
    return RateLimit(limit, per_s)


_DEFAULT_RATE = parse_rate_limit(DEFAULT_RATE_LIMIT)


def parse_history_range(text: str) -> HistoryRange:
    """`"3mo"` → "3mo": a range of daily history long enough for an analysis. ValueError saying what was expected."""
    value = text.strip().lower()
    allowed = [r for r in HISTORY_RANGES if RANGE_DAYS[r] >= RANGE_DAYS[DEFAULT_HISTORY_RANGE]]
    for candidate in allowed:
        if value == candidate:
            return candidate
    raise ValueError(
        "expected one of %s (brapi's `range`; the plan decides which it serves); got %r" % (", ".join(allowed), text)
    )


class RequestPacer:
    """Holds requests back so the provider never sees more than `limit` of them in any `per_s` seconds.

    A request takes a slot until `per_s` seconds after it *finished*: the provider counts a request
    somewhere between our send and its answer, so spacing sends only would let network jitter squeeze
    `limit + 1` requests into one of its windows. Shared by every thread of the process.
    """

    def __init__(self, rate: RateLimit, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._cond = threading.Condition()
        self._active = 0
        self._finished: list[float] = []  # when recent requests finished, oldest first

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Wait for a free slot, hold it for one request."""
        with self._cond:
            while True:
                now = self._clock()
                self._finished = [t for t in self._finished if now - t < self.rate.per_s]
                if self._active + len(self._finished) < self.rate.limit:
                    break
                wait = self._finished[0] + self.rate.per_s - now if self._finished else None
                self._cond.wait(wait)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._finished.append(self._clock())
                self._cond.notify_all()


class PacedQuotes:
    """`get(ticker)` and `history(ticker, range_)`, one provider request each, through a RequestPacer."""

    def __init__(self, quotes: BlockingQuotes, pacer: RequestPacer) -> None:
        self._quotes = quotes
        self.pacer = pacer
        self.name = quotes.name

    def get(self, ticker: str) -> Quote:
        """The ticker's quote; raises its MarketError (see QuoteProvider.quote)."""
        with self.pacer.slot():
            return self._quotes.get(ticker)

    def history(self, ticker: str, range_: HistoryRange) -> History:
        """The ticker's quote and daily bars over `range_`; raises its MarketError."""
        with self.pacer.slot():
            return self._quotes.history(ticker, range_)

    def close(self) -> None:
        self._quotes.close()


class Services:
    """What handlers get as `ctx.services`: `.quotes` (blocking, paced) and `.store`, both made on first use;
    `.source`, the active provider's name; `.clock`, the time of day everything here goes by."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        brapi_api_key: str | None = None,
        brapi_base_url: str | None = None,
        rate_limit: RateLimit | None = _DEFAULT_RATE,
        history_range: HistoryRange = DEFAULT_HISTORY_RANGE,
        provider_timeout_s: float = 10.0,
        store_path: Path | str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.store_path = Path(store_path) if store_path is not None else self.data_dir / STORE_FILE
        self.brapi_api_key = brapi_api_key
        self.brapi_base_url = brapi_base_url
        self.source = BRAPI_SOURCE if (brapi_api_key or brapi_base_url) else SAMPLE_SOURCE
        # Only a remote provider has a limit to respect; the offline sample answers as fast as asked.
        self.rate_limit = rate_limit if self.source != SAMPLE_SOURCE else None
        self.history_range = history_range
        self.provider_timeout_s = provider_timeout_s
        self.clock = clock  # tests set it to run a night or a session at a time of their choosing
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._quotes: PacedQuotes | BlockingQuotes | None = None
        self._store: MarketStore | None = None
        self._pacer = RequestPacer(self.rate_limit) if self.rate_limit else None

    def _check_fork(self) -> None:
        # A forked child inherits the parent's objects but not its threads: start over.
        if self._pid != os.getpid():
            self._reset()

    @property
    def quotes(self) -> PacedQuotes | BlockingQuotes:
        self._check_fork()
        with self._lock:
            if self._quotes is None:
                blocking = BlockingQuotes(
                    lambda: make_provider(self.brapi_api_key, self.brapi_base_url, timeout_s=self.provider_timeout_s),
                    timeout_s=self.provider_timeout_s * 3,
                )
                self._quotes = PacedQuotes(blocking, self._pacer) if self._pacer else blocking
            return self._quotes

    @property
    def store(self) -> MarketStore:
        self._check_fork()
        with self._lock:
            if self._store is None:
                self._store = MarketStore(self.store_path, clock=lambda: self.clock())
                self._say_what_is_kept_apart(self._store)
            return self._store

    def _say_what_is_kept_apart(self, store: MarketStore) -> None:
        others = {source: n for source, n in store.sources().items() if source != self.source}
        if others:
            log.warning(
                "market store %s holds daily bars from %s; the active provider is %s: analyses and the API read"
                " %s bars only, the others are kept apart and never analysed with them",
                self.store_path,
                ", ".join("%s (%d tickers)" % item for item in others.items()),
                self.source,
                self.source,
            )

    def open_existing_store(self) -> None:
        """Open the store now when its file exists, so a start says at once what it holds (and migrates it)."""
        if self.store_path.exists():
            self.store  # noqa: B018 (opening is the point)

    def update(self, ticker: str) -> backfill.Update:
        """Fetch and store the ticker's quote, with daily history when its bars fall short (market/backfill.py)."""
        return backfill.update(self.quotes, self.store, ticker, now=self.clock(), backfill_range=self.history_range)

    def history_wanted(self, ticker: str) -> HistoryRange | None:
        """The range of daily history the ticker's next update would fetch, or None (market/backfill.py)."""
        return backfill.history_wanted(
            self.store, ticker, self.source, now=self.clock(), backfill_range=self.history_range
        )

    def ensure_history(self, ticker: str) -> backfill.Update | None:
        """Backfill the ticker's daily bars when the analysis window is not all stored; None when not needed."""
        return backfill.ensure_history(
            self.quotes, self.store, ticker, now=self.clock(), backfill_range=self.history_range
        )

    def seed(self, history_days: int = 120) -> SeedReport:
        """Track the usual B3 tickers; with the sample provider active, give those without bars
        `history_days` sessions of sample bars. A real provider's history comes with each ticker's
        first update or analysis (market/backfill.py): sample data is never written next to it."""
        days = history_days if self.source == SAMPLE_SOURCE else 0
        return seed_defaults(self.store, history_days=days, now=self.clock())

    def seed_if_empty(self, history_days: int = 120) -> SeedReport | None:
        """`seed()` when no asset was ever tracked (a first start); None otherwise."""
        if self.store.assets(active_only=False):
            return None
        return self.seed(history_days)

    def close(self) -> None:
        """Close what was made; the services make them again if used afterwards."""
        self._check_fork()
        with self._lock:
            quotes, store, self._quotes, self._store = self._quotes, self._store, None, None
        if quotes is not None:
            quotes.close()
        if store is not None:
            store.close()

    def __repr__(self) -> str:
        return "Services(%s, store=%s, rate_limit=%s)" % (self.source, self.store_path, self.rate_limit or "none")
