"""The data of the domain events the B3 jobs emit, so every emitter and reader agrees on their fields."""

from __future__ import annotations

from typing import Any

from market.models import Bar, Quote


def asset_updated(quote: Quote, bar: Bar) -> dict[str, Any]:
    """The data of an `asset:updated` event: the ticker's new price, its change, where it came from,
    and the session whose daily bar it updated."""
    return {
        "ticker": quote.ticker,
        "price": quote.price,
        "change": quote.change,
        "change_percent": quote.change_percent,
        "time": quote.time,
        "source": quote.source,
        "session": bar.session.isoformat(),
    }
