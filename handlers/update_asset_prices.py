"""update-asset-prices: fetch one ticker's quote, update its session's daily bar, emit `asset:updated`.

The quote brings the ticker's daily history along when its stored bars fall short of what an
analysis reads: a ticker seen for the first time, or a session missed (market/backfill.py); either
way it is one request to the provider, paced like every other.
An untracked ticker is tracked from then on. Provider errors become the job's retry decisions:
a 429 retries after the provider's Retry-After, timeouts and outages follow the job's backoff,
an unknown ticker (or refused credentials) fails at once with the provider's reason.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from market.errors import MarketError, RateLimited
from market.events import asset_updated
from market.tickers import TICKER_PATTERN
from runtime import JobContext, Retry, UnrecoverableError


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ticker: str = Field(pattern=TICKER_PATTERN, description="a B3 ticker, e.g. PETR4")


def handle(payload: Payload, ctx: JobContext) -> dict[str, Any]:
    try:
        done = ctx.services.update(payload.ticker)
    except RateLimited as exc:
        raise Retry(exc.message, delay=exc.retry_after) from exc
    except MarketError as exc:
        if not exc.retryable:  # unknown ticker, refused key, malformed answer: another try gives the same
            raise UnrecoverableError(exc.message) from exc
        raise  # timeouts and outages: the job's retries and backoff
    quote, bar = done.quote, done.bar
    ctx.emit("asset:updated", asset_updated(quote, bar))
    if done.fetched is not None:
        ctx.log.info("%s: %d daily bars (range %s) came with the quote", quote.ticker, done.bars, done.fetched)
    ctx.log.info("%s %.2f %s (%s), session %s", quote.ticker, quote.price, quote.currency, quote.source, bar.session)
    return {
        **quote.model_dump(mode="json"),
        "session": bar.session.isoformat(),
        "bar": bar.model_dump(mode="json"),
        "history": {"range": done.fetched, "bars": done.bars} if done.fetched is not None else None,
    }
