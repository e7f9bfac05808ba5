"""daily-update: every active asset of the store, updated as one batch (cron 02:00 America/Sao_Paulo)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from runtime import JobContext

from handlers.batch_update import run_batch


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


def handle(payload: Payload, ctx: JobContext) -> dict[str, Any]:
    tickers = [asset.ticker for asset in ctx.services.store.assets(active_only=True)]
    if not tickers:
        ctx.log.info("no active assets; nothing to update (seed with `python -m runtime seed`)")
        return {"updated": [], "failed": {}}
    return run_batch(tickers, ctx)
