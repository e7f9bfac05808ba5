"""process-pending-analysis: take pending analysis requests, analyse each on daily closes, store the result.

Each analysis reads the newest daily bars of the active provider (`ctx.services.source`) and no
other: sample bars are never analysed with brapi's. A ticker whose bars fall short is backfilled
from the provider first (market/backfill.py), so a ticker never seen before is analysed on its
first run (and is tracked from then on, as an update would track it).

Per request: `analysis:started`, `analysis:progress`, then `analysis:completed` with the result, or
`analysis:failed` with the reason (too little history is such a reason, not a crash). When the
provider cannot be asked now (a 429, a timeout, an outage) the request goes back to pending with
`analysis:deferred` and the reason; after a 429 this run asks the provider nothing more, and the
next run (the per-minute cron) picks the request up again. Requests are claimed atomically, so any
number of runs may overlap.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from market.analysis import analyze
from market.errors import MarketError, RateLimited
from market.models import AnalysisRequest
from runtime import JobContext

HISTORY_CLOSES = 200  # the newest daily closes an analysis looks at (SMA50 needs 50)
CLAIM_BATCH = 10
STALE_AFTER_S = 900.0  # a request 'running' this long lost its runner: pending again


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=100, ge=1, le=1000, description="at most this many requests per run")


class Deferred(Exception):
    """The request's history could not be fetched now; it goes back to pending."""

    def __init__(self, reason: str, rate_limited: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rate_limited = rate_limited


def analyse_one(request: AnalysisRequest, ctx: JobContext, *, provider_busy: str | None = None) -> str | None:
    """Analyse one claimed request and finish it; None on success, else the failure reason.

    Raises Deferred (the request released to pending) when its history must be fetched and the
    provider cannot be asked: it failed retryably, or `provider_busy` says why not to ask it.
    """
    services = ctx.services
    store, source = services.store, services.source
    ref = {"id": request.id, "ticker": request.ticker}
    ctx.emit("analysis:started", ref)
    try:
        if provider_busy is not None and services.history_wanted(request.ticker) is not None:
            raise Deferred(provider_busy, rate_limited=True)
        fetched = services.ensure_history(request.ticker)
        bars = store.bars(request.ticker, source, limit=HISTORY_CLOSES)
        ctx.emit(
            "analysis:progress",
            {
                **ref,
                "progress": 50,
                "closes": len(bars),
                "source": source,
                "backfilled": fetched.bars if fetched else 0,
            },
        )
        result = analyze(
            request.ticker, [bar.close for bar in bars], source=source, last_session=bars[-1].session if bars else None
        )
    except Deferred as deferred:
        store.release(request.id)
        ctx.emit("analysis:deferred", {**ref, "reason": deferred.reason})
        raise
    except MarketError as exc:
        if exc.retryable:
            store.release(request.id)
            ctx.emit("analysis:deferred", {**ref, "reason": exc.message})
            raise Deferred(exc.message, rate_limited=isinstance(exc, RateLimited)) from exc
        return _fail(request, exc.message, ctx)
    except ValueError as exc:
        return _fail(request, str(exc), ctx)
    store.finish_analysis(request.id, result)
    ctx.emit("analysis:completed", {**ref, "signal": result.signal, "result": result.model_dump(mode="json")})
    return None


def _fail(request: AnalysisRequest, reason: str, ctx: JobContext) -> str:
    ctx.services.store.finish_analysis(request.id, None, error=reason)
    ctx.emit("analysis:failed", {"id": request.id, "ticker": request.ticker, "error": reason})
    return reason


def handle(payload: Payload, ctx: JobContext) -> dict[str, Any]:
    store = ctx.services.store
    store.requeue_stale(STALE_AFTER_S)
    completed: list[str] = []
    failed: dict[str, str] = {}
    deferred: dict[str, str] = {}
    busy: str | None = None  # after a 429, why this run asks the provider nothing more
    while not deferred and (left := payload.limit - len(completed) - len(failed)) > 0:
        claimed = store.claim_pending(min(CLAIM_BATCH, left))
        if not claimed:
            break
        for request in claimed:
            try:
                reason = analyse_one(request, ctx, provider_busy=busy)
            except Deferred as exc:
                deferred[request.id] = exc.reason
                busy = busy or (exc.reason if exc.rate_limited else None)
                ctx.log.warning("analysis %s of %s deferred: %s", request.id, request.ticker, exc.reason)
                continue
            if reason is None:
                completed.append(request.id)
            else:
                failed[request.id] = reason
                ctx.log.warning("analysis %s of %s failed: %s", request.id, request.ticker, reason)
        ctx.progress({"processed": len(completed) + len(failed), "deferred": len(deferred)})
    if completed or failed or deferred:
        ctx.log.info(
            "%d analysis request(s) completed, %d failed, %d deferred", len(completed), len(failed), len(deferred)
        )
    return {"completed": completed, "failed": failed, "deferred": deferred}
