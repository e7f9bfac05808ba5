"""The B3 domain: tickers, the asset and price store, quote providers and analysis. No queue imports."""

from market.errors import (
    InsufficientHistory,
    InvalidTicker,
    MalformedResponse,
    MarketError,
    ProviderAuthError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    UnknownTicker,
)
from market.models import AnalysisRequest, AnalysisResult, Asset, Quote

__all__ = [
    "AnalysisRequest",
    "AnalysisResult",
    "Asset",
    "InsufficientHistory",
    "InvalidTicker",
    "MalformedResponse",
    "MarketError",
    "ProviderAuthError",
    "ProviderError",
    "ProviderTimeout",
    "ProviderUnavailable",
    "Quote",
    "RateLimited",
    "UnknownTicker",
]
