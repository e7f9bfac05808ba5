"""daily-update: every active asset of the store, updated as one batch (cron 02:00 America/Sao_Paulo).

The updates run inside this job, one provider request each through `ctx.services.quotes` (which
holds requests to BRAPI_RATE_LIMIT in this process), with progress after each. One bad ticker
never fails the batch: it lands in `failed` with its reason. Only when nothing could be updated and
every failure was the provider's (down, timing out, rate-limiting) does the batch raise, so the
job's retries run it again later; a refused key fails it at once.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from market.errors import MarketError, ProviderAuthError, ProviderUnavailable, RateLimited
from runtime import JobContext, UnrecoverableError

from handlers.update_asset_prices import update_ticker

ATTEMPTS_PER_TICKER = 3  # a rate-limited or timed-out ticker is asked again this many times in all
RETRY_WAIT_S = 1.0  # after a timeout or an outage, wait this times the attempt number (429: its Retry-After)
WAIT_CAP_S = 30.0  # never sleep longer than this for one ticker's retry


def run_batch(tickers: list[str], ctx: JobContext) -> dict[str, Any]:
    """Update each ticker (duplicates once), with progress after each; `{"updated": [...], "failed": {t: reason}}`."""
    tickers = list(dict.fromkeys(tickers))
    updated: list[str] = []
    errors: dict[str, MarketError] = {}
    for done, ticker in enumerate(tickers, 1):
        try:
            error = _update_with_retries(ticker, ctx)
        except ProviderAuthError as exc:
            raise UnrecoverableError(exc.message) from exc
        if error is None:
            updated.append(ticker)
        else:
            errors[ticker] = error
            ctx.log.warning("%s not updated: %s", ticker, error.message)
        ctx.progress(round(100 * done / len(tickers)))
    if errors and not updated and all(e.retryable for e in errors.values()):
        first = next(iter(errors.values()))
        source = getattr(first, "source", "the quote provider")
        raise ProviderUnavailable(source, tickers, "no ticker could be updated; first error: %s" % first.message)
    ctx.log.info("%d updated, %d failed", len(updated), len(errors))
    return {"updated": updated, "failed": {ticker: error.message for ticker, error in errors.items()}}


def _update_with_retries(ticker: str, ctx: JobContext) -> MarketError | None:
    """None when the ticker was updated, else its last error. Provider hiccups are tried again."""
    for attempt in range(1, ATTEMPTS_PER_TICKER + 1):
        try:
            update_ticker(ticker, ctx)
            return None
        except ProviderAuthError:
            raise
        except MarketError as exc:
            if not exc.retryable or attempt == ATTEMPTS_PER_TICKER:
                return exc
            wait = exc.retry_after if isinstance(exc, RateLimited) and exc.retry_after is not None else RETRY_WAIT_S * attempt
            _sleep(min(wait, WAIT_CAP_S), ctx)
    raise AssertionError("unreachable")


def _sleep(seconds: float, ctx: JobContext) -> None:
    # In short steps, so a timed-out attempt stops here instead of carrying on in the background.
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ctx.check_timeout()
        time.sleep(min(left, 0.2))


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


def handle(payload: Payload, ctx: JobContext) -> dict[str, Any]:
    tickers = [asset.ticker for asset in ctx.services.store.assets(active_only=True)]
    if not tickers:
        ctx.log.info("no active assets; nothing to update (seed with `python -m runtime seed`)")
        return {"updated": [], "failed": {}}
    return run_batch(tickers, ctx)
