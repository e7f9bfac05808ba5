"""daily-update: the previous B3 session's bar of every active asset (cron 02:00 America/Sao_Paulo).

The session due is the day before today in São Paulo (by `ctx.services.clock`). When that day had
no session (a weekend, Carnival, a holiday of B3's calendar, market/calendar.py) nothing is due:
the job completes at once with `"due": false` and the reason, and asks the provider nothing.

Otherwise it is a flow, like batch-update: the first run spawns one update-asset-prices child per
active asset (in ticker order) and returns; the job then waits (`waiting-children`) without
holding a worker while the children run on any consumer under update-asset-prices' rate limit
toward the provider and its retries; then this handler runs again with `ctx.children` and
completes with `{"session", "due": true, "updated": [...], "failed": {ticker: reason}}`. One bad
ticker never fails the job (`children_fail = "continue"`). At 02:00 a quote is the due session's
last trade, so it updates that session's bar; a run that starts after the next session opened (a
catch-up) finds the due session missing and fetches it with the history (market/backfill.py).

When not one asset could be updated (the provider down all along, a refused key), the job fails at
once with the reasons, so the night without prices shows in the failed list. It is not retried: the
children have spent their own retries, and another run of this job would read the same outcomes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

from market import calendar
from runtime import JobContext, UnrecoverableError


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


def handle(payload: Payload, ctx: JobContext) -> dict[str, Any] | None:
    session = calendar.local_date(ctx.services.clock()) - dt.timedelta(days=1)
    closed = calendar.closed_because(session)
    if closed is not None:
        reason = "%s was not a B3 trading day (%s): no session to update" % (session, closed)
        ctx.log.info("nothing was due: %s", reason)
        return {"session": session.isoformat(), "due": False, "reason": reason, "updated": [], "failed": {}}
    active = [asset.ticker for asset in ctx.services.store.assets(active_only=True)]
    if ctx.children is None:
        if not active:
            ctx.log.info("no active assets; nothing to update (seed with `python -m runtime seed`)")
            return {"session": session.isoformat(), "due": True, "updated": [], "failed": {}}
        ctx.spawn("update-asset-prices", [{"ticker": t} for t in active])
        return None
    updated, failed = summarize(ctx, active)
    if failed and not updated:
        reasons = "; ".join("%s: %s" % item for item in list(failed.items())[:3])
        raise UnrecoverableError("no active asset could be updated (%d failed): %s" % (len(failed), reasons))
    ctx.log.info("session %s: %d updated, %d failed", session, len(updated), len(failed))
    return {"session": session.isoformat(), "due": True, "updated": updated, "failed": failed}


def summarize(ctx: JobContext, active: list[str]) -> tuple[list[str], dict[str, str]]:
    """The tickers the children updated, and the failed ones with their reasons, in spawn order.

    Child n was spawned for the n-th active asset of the first run. A completed child names its
    ticker in its result (the quote), which checks that the active assets read again now are the
    same list; when they are not (an asset tracked or untracked meanwhile), a failed child can no
    longer be told apart and is named by its job id, whose record holds its ticker.
    """
    children = ctx.children or []
    same = len(active) == len(children) and all(
        child.state != "completed" or child.result["ticker"] == active[_spawn_index(child.id)] for child in children
    )
    updated: list[str] = []
    failed: dict[str, str] = {}
    for child in children:
        if child.state == "completed":
            updated.append(child.result["ticker"])
        else:
            failed[active[_spawn_index(child.id)] if same else child.id] = child.error or "failed"
    if failed and not same:
        ctx.log.warning("the active assets changed while the updates ran; failed updates are named by job id")
    return updated, failed


def _spawn_index(child_id: str) -> int:
    # Child ids are the parent's id, a dot and the spawn position (see JobContext.spawn).
    return int(child_id.rsplit(".", 1)[1])
