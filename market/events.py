"""The data of the domain events the B3 jobs emit, so every emitter and reader agrees on their fields."""

from __future__ import annotations

from typing import Any

from market.models import Quote


def asset_updated(quote: Quote) -> dict[str, Any]:
    """The data of an `asset:updated` event: the ticker's new price, its change and where it came from."""
    return {
        "ticker": quote.ticker,
        "price": quote.price,
        "change": quote.change,
        "change_percent": quote.change_percent,
        "time": quote.time,
        "source": quote.source,
    }
