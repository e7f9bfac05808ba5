"""A synchronous face on an async quote provider, for job handlers that run in worker threads.

The provider lives on one private event loop in a daemon thread: its HTTP connections belong to
that loop, so any number of threads can share it, and no thread has to run a loop of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from market.errors import MarketError
from market.models import Quote
from market.providers.base import History, HistoryRange, QuoteProvider

T = TypeVar("T")


class BlockingQuotes:
    """`get(ticker)`, `get_many(tickers)` and `history(ticker, range_)` over a QuoteProvider made by
    `factory` on a private loop."""

    def __init__(self, factory: Callable[[], QuoteProvider], *, timeout_s: float | None = 60.0) -> None:
        self._timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="market-quotes", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> QuoteProvider:
            return factory()

        try:
            self.provider: QuoteProvider = self._call(make())
        except BaseException:
            self._stop_loop()
            raise
        self.name = self.provider.name

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def get(self, ticker: str) -> Quote:
        """The ticker's quote; raises its MarketError."""
        return self._call(self.provider.quote(ticker))

    def get_many(self, tickers: Sequence[str]) -> dict[str, Quote | MarketError]:
        """One entry per ticker: its quote or its error (see QuoteProvider.quotes)."""
        return self._call(self.provider.quotes(tickers))

    def history(self, ticker: str, range_: HistoryRange) -> History:
        """The ticker's quote and daily bars over `range_`; raises its MarketError."""
        return self._call(self.provider.history(ticker, range_))

    def close(self) -> None:
        """Close the provider and stop the loop thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self.provider.aclose())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> BlockingQuotes:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
