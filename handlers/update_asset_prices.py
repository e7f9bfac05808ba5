"""update-asset-prices: fetch one ticker's quote, store it in its history, emit `asset:updated`.

An untracked ticker is tracked from then on. Provider errors become the job's retry decisions:
a 429 retries after the provider's Retry-After, timeouts and outages follow the job's backoff,
an unknown ticker (or refused credentials) fails at once with the provider's reason.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from market.errors import MarketError, RateLimited
from market.events import asset_updated
from market.models import Quote
from market.tickers import TICKER_PATTERN
from runtime import JobContext, Retry, UnrecoverableError


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ticker: str = Field(pattern=TICKER_PATTERN, description="a B3 ticker, e.g. PETR4")


def handle(payload: Payload, ctx: JobContext) -> dict[str, Any]:
    try:
        quote: Quote = ctx.services.quotes.get(payload.ticker)
    except RateLimited as exc:
        raise Retry(exc.message, delay=exc.retry_after) from exc
    except MarketError as exc:
        if not exc.retryable:  # unknown ticker, refused key, malformed answer: another try gives the same
            raise UnrecoverableError(exc.message) from exc
        raise  # timeouts and outages: the job's retries and backoff
    ctx.services.store.add_quote(quote, track=True)
    ctx.emit("asset:updated", asset_updated(quote))
    ctx.log.info("%s %.2f %s (%s)", quote.ticker, quote.price, quote.currency, quote.source)
    return quote.model_dump(mode="json")
