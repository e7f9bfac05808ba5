"""The B3 app's own routes (`[app] routes` in schedules.toml): read assets, request analyses and read them.

The price updates are the jobs' own HTTP triggers (`http` in their manifest tables, b3app/triggers.py).
The market store is the runtime's services' (`runtime.services.store`); prices shown are the active
provider's (`runtime.services.source`): daily bars and the latest intraday quote, each labelled.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from b3app.triggers import Ticker
from market.errors import InvalidTicker
from market.models import AnalysisResult, Asset, Bar, Quote
from market.tickers import validate_ticker
from runtime.core.errors import PayloadError
from runtime.web import models as m
from runtime.web.api import RUNTIME, Route, blocking, parse_body, parse_query, respond

ANALYSIS_JOB = "process-pending-analysis"


# -- models ---------------------------------------------------------------------------------------


class AnalysisBody(m.Strict):
    ticker: Ticker


class AnalysisQueued(BaseModel):
    """The analysis request, pending, and the job that will process it."""

    model_config = ConfigDict(populate_by_name=True)
    id: str
    status: Literal["pending"] = "pending"
    ticker: str
    job_id: str = Field(alias="jobId")


class AssetsQuery(m.Strict):
    all: bool = Field(default=False, description="include inactive assets")


class AssetSummary(BaseModel):
    """A tracked asset, its latest intraday quote and its newest daily bar, from the active provider."""

    asset: Asset
    latest: Quote | None
    last_bar: Bar | None


class AssetList(BaseModel):
    """Tracked assets in ticker order."""

    assets: list[AssetSummary]


class BarsQuery(m.Strict):
    days: int = Field(default=100, ge=1, le=1000, description="how many of the newest daily bars (B3 sessions)")


class AssetDetail(BaseModel):
    """An asset, its daily bars (oldest first, one per B3 session) and its latest intraday quote, apart,
    from the active provider (`source`)."""

    asset: Asset
    source: str
    latest: Quote | None
    bars: list[Bar]


class Analysis(BaseModel):
    """An analysis request, where it stands, and its result once completed."""

    id: str
    ticker: str
    status: Literal["pending", "running", "completed", "failed"]
    requested_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: AnalysisResult | None = None


# -- helpers --------------------------------------------------------------------------------------


def _ticker(text: str, where: str, loc: str = "ticker") -> str:
    """The canonical ticker, or a 422 naming the field."""
    try:
        return validate_ticker(text)
    except InvalidTicker as exc:
        raise PayloadError(where, [{"loc": loc, "msg": exc.message, "type": "ticker"}]) from None


def _store(request: web.Request) -> Any:
    store = getattr(request.app[RUNTIME].services, "store", None)
    if store is None:
        raise web.HTTPServiceUnavailable(
            reason="no market store in ctx.services (B3JOBS_SERVICES or the manifest's [app] services)"
        )
    return store


def _source(request: web.Request) -> str:
    """The active provider's name: whose bars and quotes the routes show."""
    return str(request.app[RUNTIME].services.source)


def _not_found(message: str) -> web.Response:
    return respond(m.Error(error=m.ErrorDetail(code="not_found", message=message)), 404)


# -- handlers -------------------------------------------------------------------------------------


async def request_analysis(request: web.Request) -> web.Response:
    body = await parse_body(request, AnalysisBody)
    ticker = body.ticker
    runtime = request.app[RUNTIME]
    analysis = await blocking(_store(request).request_analysis, ticker)
    # Should this enqueue fail, the per-minute cron run still picks the request up.
    record, _ = await blocking(runtime.enqueue, ANALYSIS_JOB, {})
    return respond(AnalysisQueued(id=analysis.id, ticker=ticker, jobId=record.id), 202)


async def list_assets(request: web.Request) -> web.Response:
    query = parse_query(request, AssetsQuery)
    store, source = _store(request), _source(request)

    def summary(asset: Asset) -> AssetSummary:
        bars = store.bars(asset.ticker, source, limit=1)
        latest = store.latest_quote(asset.ticker, source)
        return AssetSummary(asset=asset, latest=latest, last_bar=bars[0] if bars else None)

    def read() -> list[AssetSummary]:
        return [summary(a) for a in store.assets(active_only=not query.all)]

    return respond(AssetList(assets=await blocking(read)))


async def get_asset(request: web.Request) -> web.Response:
    ticker = _ticker(request.match_info["ticker"], "path")
    query = parse_query(request, BarsQuery)
    store, source = _store(request), _source(request)

    def read() -> AssetDetail | None:
        asset = store.asset(ticker)
        if asset is None:
            return None
        return AssetDetail(
            asset=asset,
            source=source,
            latest=store.latest_quote(ticker, source),
            bars=store.bars(ticker, source, limit=query.days),
        )

    detail = await blocking(read)
    if detail is None:
        return _not_found("ticker %s is not tracked; POST /api/v1/assets/update/%s tracks it" % (ticker, ticker))
    return respond(detail)


async def get_analysis(request: web.Request) -> web.Response:
    request_id = request.match_info["id"]
    found = await blocking(_store(request).analysis, request_id)
    if found is None:
        return _not_found("no analysis request with id %r" % request_id)
    analysis, result = found
    return respond(Analysis(**analysis.model_dump(), result=result))


E = m.Error
ROUTES = [
    Route(
        "GET",
        "/api/v1/assets",
        list_assets,
        "Tracked assets with their latest quote and daily bar",
        query=AssetsQuery,
        responses={200: AssetList, 422: E},
    ),
    Route(
        "GET",
        "/api/v1/assets/{ticker}",
        get_asset,
        "An asset's daily bars and its latest intraday quote",
        query=BarsQuery,
        responses={200: AssetDetail, 404: E, 422: E},
    ),
    Route(
        "POST",
        "/api/v1/analysis",
        request_analysis,
        "Request an analysis of one ticker",
        body=AnalysisBody,
        responses={202: AnalysisQueued, 400: E, 404: E, 413: E, 422: E},
    ),
    Route(
        "GET",
        "/api/v1/analysis/{id}",
        get_analysis,
        "An analysis request and its result",
        responses={200: Analysis, 404: E},
    ),
]
