"""process-pending-analysis: take pending analysis requests, analyse each from stored prices, store the result.

Per request: `analysis:started`, `analysis:progress`, then `analysis:completed` with the result, or
`analysis:failed` with the reason (too little history is such a reason, not a crash). Requests are
claimed atomically, so any number of runs (the per-minute cron, on-demand runs) may overlap.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from market.analysis import analyze
from market.errors import MarketError
from market.models import AnalysisRequest
from runtime import JobContext

HISTORY_CLOSES = 200  # the newest closes an analysis looks at (SMA50 needs 50)
CLAIM_BATCH = 10
STALE_AFTER_S = 900.0  # a request 'running' this long lost its runner: pending again


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=100, ge=1, le=1000, description="at most this many requests per run")


def analyse_one(request: AnalysisRequest, ctx: JobContext) -> str | None:
    """Analyse one claimed request and finish it; None on success, else the failure reason."""
    store = ctx.services.store
    ref = {"id": request.id, "ticker": request.ticker}
    ctx.emit("analysis:started", ref)
    try:
        closes = store.closes(request.ticker, limit=HISTORY_CLOSES)
        ctx.emit("analysis:progress", {**ref, "progress": 50, "closes": len(closes)})
        result = analyze(request.ticker, closes)
    except (MarketError, ValueError) as exc:
        reason = exc.message if isinstance(exc, MarketError) else str(exc)
        store.finish_analysis(request.id, None, error=reason)
        ctx.emit("analysis:failed", {**ref, "error": reason})
        return reason
    store.finish_analysis(request.id, result)
    ctx.emit("analysis:completed", {**ref, "signal": result.signal, "result": result.model_dump(mode="json")})
    return None


def handle(payload: Payload, ctx: JobContext) -> dict[str, Any]:
    store = ctx.services.store
    store.requeue_stale(STALE_AFTER_S)
    completed: list[str] = []
    failed: dict[str, str] = {}
    while (left := payload.limit - len(completed) - len(failed)) > 0:
        claimed = store.claim_pending(min(CLAIM_BATCH, left))
        if not claimed:
            break
        for request in claimed:
            reason = analyse_one(request, ctx)
            if reason is None:
                completed.append(request.id)
            else:
                failed[request.id] = reason
                ctx.log.warning("analysis %s of %s failed: %s", request.id, request.ticker, reason)
        ctx.progress({"processed": len(completed) + len(failed)})
    if completed or failed:
        ctx.log.info("%d analysis request(s) completed, %d failed", len(completed), len(failed))
    return {"completed": completed, "failed": failed}
