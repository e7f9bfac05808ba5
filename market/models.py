"""The market domain's values: quotes, assets, analysis requests and results (frozen, validated)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from market.tickers import TICKER_PATTERN, AssetType

AnalysisStatus = Literal["pending", "running", "completed", "failed"]
Signal = Literal["buy", "hold", "sell"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Quote(_Frozen):
    """One price observation of a ticker; `time` is its last trade's epoch seconds, `source` who gave it.

    `volume` and the `day_*` prices are the session's so far, as the provider reports them.
    """

    ticker: str = Field(pattern=TICKER_PATTERN)
    name: str | None = None
    price: float = Field(gt=0)
    change: float | None = None
    change_percent: float | None = None
    volume: int | None = Field(default=None, ge=0)
    time: float
    currency: str = "BRL"
    source: str
    day_open: float | None = Field(default=None, gt=0)
    day_high: float | None = Field(default=None, gt=0)
    day_low: float | None = Field(default=None, gt=0)


class Bar(_Frozen):
    """One B3 session of a ticker: open, high, low, close and volume, and who said so.

    `session` is the trading day in America/Sao_Paulo; `time` the epoch second of the newest
    observation merged into the bar (the one its close comes from).
    """

    ticker: str = Field(pattern=TICKER_PATTERN)
    session: dt.date
    open: float = Field(gt=0)
    high: float = Field(gt=0)
    low: float = Field(gt=0)
    close: float = Field(gt=0)
    volume: int | None = Field(default=None, ge=0)
    time: float
    source: str

    @model_validator(mode="after")
    def _high_and_low_bound_the_others(self) -> Bar:
        if not self.low <= min(self.open, self.close) <= max(self.open, self.close) <= self.high:
            raise ValueError(
                "bar %s %s: expected low <= open, close <= high, got open=%g high=%g low=%g close=%g"
                % (self.ticker, self.session, self.open, self.high, self.low, self.close)
            )
        return self


class Asset(_Frozen):
    """A tracked ticker: what it is and whether the nightly update includes it."""

    ticker: str = Field(pattern=TICKER_PATTERN)
    name: str | None = None
    type: AssetType | None = None
    active: bool = True
    created_at: float
    updated_at: float


class AnalysisRequest(_Frozen):
    """A request to analyse one ticker, and where it stands."""

    id: str
    ticker: str = Field(pattern=TICKER_PATTERN)
    status: AnalysisStatus
    requested_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None


class Macd(_Frozen):
    """The latest MACD values: the line (fast EMA - slow EMA), its signal EMA, and their difference."""

    line: float
    signal: float
    histogram: float


class AnalysisResult(_Frozen):
    """The indicators computed from a ticker's daily closes (oldest first) and the signal they add up to."""

    ticker: str = Field(pattern=TICKER_PATTERN)
    source: str = Field(description="whose daily bars were analysed: brapi, sample, ...")
    last_session: dt.date | None = Field(default=None, description="the session of the newest close")
    closes_used: int
    last_close: float
    sma20: float
    sma50: float
    ema20: float
    rsi14: float
    macd: Macd
    volatility: float = Field(description="annualised standard deviation of daily log returns (252 days)")
    signal: Signal
    score: int = Field(description="sum of the votes: +1 per bullish reason, -1 per bearish one")
    reasons: tuple[str, ...]
    computed_at: float
