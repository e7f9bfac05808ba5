"""The interface every quote provider implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from market.errors import InvalidTicker, MarketError
from market.models import Quote
from market.tickers import validate_ticker


@runtime_checkable
class QuoteProvider(Protocol):
    """A source of quotes for B3 tickers.

    `quotes()` answers one entry per requested ticker: its Quote, or the MarketError for that ticker
    alone (UnknownTicker, InvalidTicker, MalformedResponse). It raises only what applies to the whole
    call (RateLimited, ProviderTimeout, ProviderUnavailable, ProviderAuthError), so a caller retries
    the call, not a ticker. `quote()` raises the ticker's error.
    """

    name: str

    async def quotes(self, tickers: Sequence[str]) -> dict[str, Quote | MarketError]: ...

    async def quote(self, ticker: str) -> Quote: ...

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
