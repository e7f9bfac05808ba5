"""The B3 platform's own routes: update prices, request analyses, read assets and results.

The update routes answer as the original Node platform did, `{"jobId", "status": "queued", ...}`.
The market store is the runtime's services' (`runtime.services.store`).
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from market.errors import InvalidTicker
from market.models import AnalysisResult, Asset, Quote
from market.tickers import validate_ticker
from runtime.web import models as m
from runtime.web.api import RUNTIME, Route, blocking, parse_body, parse_query, respond
from runtime.core.errors import PayloadError

UPDATE_JOB = "update-asset-prices"
BATCH_JOB = "batch-update"
ANALYSIS_JOB = "process-pending-analysis"


# -- models ---------------------------------------------------------------------------------------


class Queued(BaseModel):
    """The job that will update the ticker."""

    model_config = ConfigDict(populate_by_name=True)
    job_id: str = Field(alias="jobId")
    status: Literal["queued"] = "queued"
    ticker: str


class BatchBody(m.Strict):
    tickers: list[str] = Field(min_length=1, max_length=500, description="B3 tickers, e.g. PETR4; case is ignored")


class BatchQueued(BaseModel):
    """The job that will update the tickers."""

    model_config = ConfigDict(populate_by_name=True)
    job_id: str = Field(alias="jobId")
    status: Literal["queued"] = "queued"
    tickers: list[str]
    count: int


class AnalysisBody(m.Strict):
    ticker: str = Field(description="a B3 ticker, e.g. PETR4")


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
    """A tracked asset and its latest stored quote."""

    asset: Asset
    latest: Quote | None


class AssetList(BaseModel):
    """Tracked assets in ticker order."""

    assets: list[AssetSummary]


class HistoryQuery(m.Strict):
    limit: int = Field(default=100, ge=1, le=1000, description="how many quotes of history, newest first")


class AssetDetail(BaseModel):
    """An asset, its latest quote and its quote history (newest first)."""

    asset: Asset
    latest: Quote | None
    history: list[Quote]


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
        raise web.HTTPServiceUnavailable(reason="no market store: the services factory (B3JOBS_SERVICES) has none")
    return store


def _not_found(message: str) -> web.Response:
    return respond(m.Error(error=m.ErrorDetail(code="not_found", message=message)), 404)


# -- handlers -------------------------------------------------------------------------------------


async def update_asset(request: web.Request) -> web.Response:
    ticker = _ticker(request.match_info["ticker"], UPDATE_JOB)
    record, _ = await blocking(request.app[RUNTIME].enqueue, UPDATE_JOB, {"ticker": ticker})
    return respond(Queued(jobId=record.id, ticker=ticker), 202)


async def batch_update(request: web.Request) -> web.Response:
    body = await parse_body(request, BatchBody)
    tickers: list[str] = []
    problems: list[dict[str, Any]] = []
    for i, text in enumerate(body.tickers):
        try:
            tickers.append(validate_ticker(text))
        except InvalidTicker as exc:
            problems.append({"loc": "tickers.%d" % i, "msg": exc.message, "type": "ticker"})
    if problems:
        raise PayloadError(BATCH_JOB, problems)
    tickers = list(dict.fromkeys(tickers))
    record, _ = await blocking(request.app[RUNTIME].enqueue, BATCH_JOB, {"tickers": tickers})
    return respond(BatchQueued(jobId=record.id, tickers=tickers, count=len(tickers)), 202)


async def request_analysis(request: web.Request) -> web.Response:
    body = await parse_body(request, AnalysisBody)
    ticker = _ticker(body.ticker, "request body")
    runtime = request.app[RUNTIME]
    analysis = await blocking(_store(request).request_analysis, ticker)
    # Should this enqueue fail, the per-minute cron run still picks the request up.
    record, _ = await blocking(runtime.enqueue, ANALYSIS_JOB, {})
    return respond(AnalysisQueued(id=analysis.id, ticker=ticker, jobId=record.id), 202)


async def list_assets(request: web.Request) -> web.Response:
    query = parse_query(request, AssetsQuery)
    store = _store(request)

    def read() -> list[AssetSummary]:
        return [AssetSummary(asset=a, latest=store.latest_quote(a.ticker)) for a in store.assets(active_only=not query.all)]

    return respond(AssetList(assets=await blocking(read)))


async def get_asset(request: web.Request) -> web.Response:
    ticker = _ticker(request.match_info["ticker"], "path")
    query = parse_query(request, HistoryQuery)
    store = _store(request)

    def read() -> AssetDetail | None:
        asset = store.asset(ticker)
        if asset is None:
            return None
        history = store.history(ticker, limit=query.limit)
        return AssetDetail(asset=asset, latest=history[0] if history else None, history=history)

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
MARKET_ROUTES = [
    Route("POST", "/api/v1/assets/update/{ticker}", update_asset, "Queue a price update of one ticker",
          responses={202: Queued, 404: E, 422: E}),
    Route("POST", "/api/v1/assets/batch-update", batch_update, "Queue a price update of many tickers",
          body=BatchBody, responses={202: BatchQueued, 400: E, 404: E, 413: E, 422: E}),
    Route("GET", "/api/v1/assets", list_assets, "Tracked assets with their latest quote", query=AssetsQuery,
          responses={200: AssetList, 422: E}),
    Route("GET", "/api/v1/assets/{ticker}", get_asset, "An asset's latest quote and history", query=HistoryQuery,
          responses={200: AssetDetail, 404: E, 422: E}),
    Route("POST", "/api/v1/analysis", request_analysis, "Request an analysis of one ticker", body=AnalysisBody,
          responses={202: AnalysisQueued, 400: E, 404: E, 413: E, 422: E}),
    Route("GET", "/api/v1/analysis/{id}", get_analysis, "An analysis request and its result",
          responses={200: Analysis, 404: E}),
]
