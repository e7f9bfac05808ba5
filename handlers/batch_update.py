"""batch-update: one update-asset-prices child per ticker, and a summary once every child is done.

A flow: the first run spawns the children and returns; the job then waits (`waiting-children`)
without holding a worker, the children run on any consumer under update-asset-prices' own rate
limit toward the provider, and this handler runs again with `ctx.children` to sum up. One bad
ticker never fails the batch (`children_fail = "continue"`): it lands in `failed` with its reason.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from market.tickers import TICKER_PATTERN
from runtime import JobContext

Ticker = Annotated[str, Field(pattern=TICKER_PATTERN)]


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tickers: list[Ticker] = Field(min_length=1, max_length=500, description="B3 tickers, e.g. PETR4")


def handle(payload: Payload, ctx: JobContext) -> dict[str, Any] | None:
    tickers = list(dict.fromkeys(payload.tickers))
    if ctx.children is None:
        ctx.spawn("update-asset-prices", [{"ticker": t} for t in tickers])
        return None
    updated: list[str] = []
    failed: dict[str, str] = {}
    for child in ctx.children:
        ticker = tickers[int(child.id.rsplit(".", 1)[1])]
        if child.state == "completed":
            updated.append(ticker)
        else:
            failed[ticker] = child.error or "failed"
    ctx.log.info("%d updated, %d failed", len(updated), len(failed))
    return {"updated": [t for t in tickers if t in updated], "failed": failed}
