"""Quote providers behind one interface, and the choice between them."""

from __future__ import annotations

from market.providers.base import QuoteProvider
from market.providers.brapi import BrapiProvider
from market.providers.sample import SampleProvider

__all__ = ["BrapiProvider", "QuoteProvider", "SampleProvider", "make_provider"]


def make_provider(
    api_key: str | None, base_url: str | None, *, timeout_s: float = 10.0, max_per_request: int | None = None
) -> QuoteProvider:
    """brapi when a key or a base URL is set (BRAPI_API_KEY, BRAPI_BASE_URL), else the offline sample."""
    if api_key or base_url:
        return BrapiProvider(api_key, base_url, timeout_s=timeout_s, max_per_request=max_per_request)
    return SampleProvider()
