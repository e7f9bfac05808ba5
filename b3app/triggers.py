"""The request models of the B3 jobs' HTTP triggers (`http.request` in schedules.toml).

They take tickers as the original platform did, in any case, and give the canonical form the jobs'
payloads require; the runtime echoes the validated request in its 202 answer.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, computed_field, field_validator
from pydantic_core import PydanticCustomError

from market.errors import InvalidTicker
from market.tickers import validate_ticker


def _canonical(text: object) -> str:
    try:
        return validate_ticker(text)  # type: ignore[arg-type]
    except InvalidTicker as exc:
        raise PydanticCustomError("ticker", "{reason}", {"reason": exc.message}) from None


Ticker = Annotated[str, BeforeValidator(_canonical), Field(description="a B3 ticker, e.g. PETR4; case is ignored")]


class UpdateAsset(BaseModel):
    """POST /api/v1/assets/update/{ticker}: update one ticker's price."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ticker: Ticker


class BatchUpdate(BaseModel):
    """POST /api/v1/assets/batch-update: update many tickers' prices, each once, in the order given."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tickers: list[Ticker] = Field(min_length=1, max_length=500, description="B3 tickers, e.g. PETR4; case is ignored")

    @field_validator("tickers")
    @classmethod
    def _once_each(cls, tickers: list[str]) -> list[str]:
        return list(dict.fromkeys(tickers))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def count(self) -> int:
        """How many distinct tickers were queued."""
        return len(self.tickers)
