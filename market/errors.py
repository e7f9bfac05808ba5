"""Every error the market domain raises on purpose, under one base class.

`retryable` tells the job's retry policy what to do: provider hiccups (rate limits, timeouts,
outages) are worth another attempt, a ticker the provider does not know never is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _names(tickers: Sequence[str]) -> str:
    return ", ".join(tickers) if tickers else "no ticker"


class MarketError(Exception):
    """Base of every market domain error; `retryable` says whether another attempt may succeed."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the attributes, not from the formatted message, so the data survives
        # a trip through a process pool or a result backend.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[MarketError], state: dict[str, Any]) -> MarketError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class InvalidTicker(MarketError):
    """A ticker that is not in B3 form (four letters and one or two digits)."""

    def __init__(self, ticker: str, reason: str = "not a B3 ticker") -> None:
        super().__init__(
            "ticker %r: %s; expected four letters and one or two digits, e.g. PETR4, VALE3, BOVA11" % (ticker, reason)
        )
        self.ticker = ticker
        self.reason = reason


class UnknownTicker(MarketError):
    """A well-formed ticker that the provider does not know; never retried."""

    def __init__(self, ticker: str, source: str, detail: str | None = None) -> None:
        text = "%s does not know ticker %s" % (source, ticker)
        super().__init__(text + (": %s" % detail if detail else ""))
        self.ticker = ticker
        self.source = source
        self.detail = detail


class InsufficientHistory(MarketError):
    """Too few closing prices for an analysis or an indicator."""

    def __init__(self, needed: int, found: int, ticker: str | None = None, what: str = "the analysis") -> None:
        subject = "%s of %s" % (what, ticker) if ticker else what
        super().__init__("%s needs at least %d closing prices, found %d" % (subject, needed, found))
        self.needed = needed
        self.found = found
        self.ticker = ticker
        self.what = what


class AnalysisNotFound(MarketError):
    """No analysis request with that id."""

    def __init__(self, request_id: str) -> None:
        super().__init__("no analysis request with id %r" % request_id)
        self.request_id = request_id


class StoreVersionError(MarketError):
    """A market store written by a newer b3-jobs than this one."""

    def __init__(self, where: str, found: int, known: int) -> None:
        super().__init__(
            "market store %s has schema version %d; this b3-jobs reads versions up to %d:"
            " upgrade b3-jobs, or point B3JOBS_DATA_DIR elsewhere" % (where, found, known)
        )
        self.where = where
        self.found = found
        self.known = known


class ProviderError(MarketError):
    """A quote provider failed for `tickers`; subclasses say how and whether to retry."""

    what = "request failed"

    def __init__(
        self,
        source: str,
        tickers: Sequence[str],
        detail: str,
        *,
        status: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        status_text = " (HTTP %d)" % status if status is not None else ""
        super().__init__("%s: %s%s for %s: %s" % (source, self.what, status_text, _names(tickers), detail))
        self.source = source
        self.tickers = tuple(tickers)
        self.detail = detail
        self.status = status
        if retryable is not None:
            self.retryable = retryable


class RateLimited(ProviderError):
    """The provider answered 429; `retry_after` is its Retry-After in seconds, when it sent one."""

    retryable = True
    what = "rate limited"

    def __init__(
        self,
        source: str,
        tickers: Sequence[str],
        detail: str,
        *,
        retry_after: float | None = None,
        status: int | None = 429,
    ) -> None:
        if retry_after is not None:
            detail = "%s; retry after %.3gs" % (detail, retry_after)
        super().__init__(source, tickers, detail, status=status)
        self.retry_after = retry_after


class ProviderTimeout(ProviderError):
    """The provider did not answer in time."""

    retryable = True
    what = "timed out"


class ProviderUnavailable(ProviderError):
    """The provider is down or unreachable (5xx, connection refused or reset)."""

    retryable = True
    what = "unavailable"


class ProviderAuthError(ProviderError):
    """The provider refused the credentials (401/403); retrying will not help until the key changes."""

    what = "refused the credentials"


class MalformedResponse(ProviderError):
    """The provider answered something that does not match its documented response types."""

    what = "malformed response"
