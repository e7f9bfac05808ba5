"""The B3 domain: tickers, the B3 calendar, the store of assets and daily bars, quote providers, analysis.

No queue imports.
"""

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
    StoreVersionError,
    UnknownTicker,
)
from market.models import AnalysisRequest, AnalysisResult, Asset, Bar, Quote

__all__ = [
    "AnalysisRequest",
    "AnalysisResult",
    "Asset",
    "Bar",
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
    "StoreVersionError",
    "UnknownTicker",
]
