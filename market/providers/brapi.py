"""B3 quotes from brapi.dev through the official async client, with its errors mapped to domain errors.

Endpoint: GET /api/quote/{tickers}, tickers comma-separated in the path (`AsyncBrapi.quote.retrieve`),
bearer token in the Authorization header. The client's own retries are off (max_retries=0): the
job's retry policy decides, with `retryable` and `RateLimited.retry_after` from the domain errors.

How many tickers a request may carry depends on the brapi plan; a keyless request may carry only
one (brapi answers PETR4, MGLU3, VALE3 and ITUB4 without a token, but not combined with others).
When a multi-ticker request fails as a whole because of a ticker (404, 400, 422 or an error body),
the tickers are asked again one by one, so the bad ones are isolated and the good ones still answer.

Daily history is the same endpoint with `range` and `interval=1d`: the answer carries the quote
and `historicalDataPrice`, one entry per session, each dated (`date`, epoch seconds) at the
session's opening in São Paulo; a session is the São Paulo date of that moment. Which ranges a key
may ask for depends on its plan (every plan serves 3mo).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import brapi
import httpx
from brapi.types.quote_retrieve_response import Result, ResultHistoricalDataPrice
from pydantic import ValidationError

from market import calendar
from market.errors import (
    MalformedResponse,
    MarketError,
    ProviderAuthError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    UnknownTicker,
)
from market.models import Bar, Quote
from market.providers.base import History, HistoryRange, single_quote, split_requested
from market.tickers import validate_ticker

log = logging.getLogger(__name__)

SOURCE = "brapi"
DEFAULT_BASE_URL = "https://brapi.dev"
DEFAULT_MAX_PER_REQUEST = 10
KEYLESS_MAX_PER_REQUEST = 1


class _Rejected(Exception):
    """brapi refused the whole request because of (one of) its tickers."""

    def __init__(self, detail: str, status: int | None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class BrapiProvider:
    """Quotes from brapi.dev; several tickers per request, errors mapped to market errors."""

    name = SOURCE

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        max_per_request: int | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_per_request is None:
            max_per_request = DEFAULT_MAX_PER_REQUEST if api_key else KEYLESS_MAX_PER_REQUEST
        if max_per_request < 1:
            raise ValueError("max_per_request must be >= 1, got %d" % max_per_request)
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0, got %r" % timeout_s)
        self.base_url = base_url or DEFAULT_BASE_URL
        self.timeout_s = timeout_s
        self.max_per_request = max_per_request
        self._clock = clock
        # Pass every setting explicitly: the client would otherwise read BRAPI_* from the environment
        # itself, and settings come from one place here. An empty key means "no token": the
        # Authorization header is then dropped from each request.
        self._client = brapi.AsyncBrapi(api_key=api_key or "", base_url=self.base_url, timeout=timeout_s, max_retries=0)
        self._headers: dict[str, str | brapi.Omit] = {} if api_key else {"Authorization": brapi.Omit()}

    async def quotes(self, tickers: Sequence[str]) -> dict[str, Quote | MarketError]:
        valid, invalid = split_requested(tickers)
        results: dict[str, Quote | MarketError] = dict(invalid)
        for start in range(0, len(valid), self.max_per_request):
            results.update(await self._batch(valid[start : start + self.max_per_request]))
        return results

    async def quote(self, ticker: str) -> Quote:
        return await single_quote(self, ticker)

    async def history(self, ticker: str, range_: HistoryRange) -> History:
        ticker = validate_ticker(ticker)
        try:
            answer = (await self._request([ticker], {"range": range_, "interval": "1d"}, self._to_history))[ticker]
        except _Rejected as exc:
            if exc.status in (None, 200, 404):
                raise UnknownTicker(ticker, SOURCE, _status_detail(exc)) from None
            # 400 or 422 for one known-good ticker: the range or interval, e.g. beyond the key's plan
            detail = "range=%s interval=1d refused: %s" % (range_, _status_detail(exc))
            raise ProviderError(SOURCE, [ticker], detail, status=exc.status, retryable=False) from None
        if isinstance(answer, MarketError):
            raise answer
        assert isinstance(answer, History)
        return answer

    async def aclose(self) -> None:
        await self._client.close()

    async def _batch(self, tickers: list[str]) -> dict[str, Quote | MarketError]:
        try:
            return await self._request(tickers)
        except _Rejected as exc:
            if len(tickers) == 1:
                return {tickers[0]: UnknownTicker(tickers[0], SOURCE, _status_detail(exc))}
            log.info("brapi refused %s as a batch (%s); asking one by one", ",".join(tickers), _status_detail(exc))
        results: dict[str, Quote | MarketError] = {}
        for ticker in tickers:
            try:
                results.update(await self._request([ticker]))
            except _Rejected as exc:
                results[ticker] = UnknownTicker(ticker, SOURCE, _status_detail(exc))
        return results

    async def _request(
        self, tickers: list[str], params: Mapping[str, str] | None = None, convert: _Convert | None = None
    ) -> dict[str, Any]:
        """One GET /api/quote/{tickers}: each ticker's `convert`ed Result (a Quote by default) or its
        MarketError; raises _Rejected or a ProviderError for the whole request."""
        try:
            raw = await self._client.quote.with_raw_response.retrieve(
                ",".join(tickers),
                extra_headers=self._headers,
                **(params or {}),  # type: ignore[arg-type]
            )
            body = await raw.json()
        except brapi.APIError as exc:
            raise self._translate(exc, tickers) from exc
        except ValueError as exc:  # the body is not JSON
            raise MalformedResponse(SOURCE, tickers, "body is not JSON (%s)" % exc, status=200) from exc
        return self._parse(body, tickers, convert or self._to_quote)

    def _translate(self, exc: brapi.APIError, tickers: list[str]) -> Exception:
        if isinstance(exc, brapi.APITimeoutError):
            return ProviderTimeout(SOURCE, tickers, "no answer within %gs" % self.timeout_s)
        if isinstance(exc, brapi.APIConnectionError):
            return ProviderUnavailable(
                SOURCE, tickers, "cannot connect to %s: %s" % (self.base_url, exc.__cause__ or exc)
            )
        if isinstance(exc, brapi.APIResponseValidationError):
            return MalformedResponse(SOURCE, tickers, exc.message, status=exc.status_code)
        if not isinstance(exc, brapi.APIStatusError):
            return ProviderError(SOURCE, tickers, str(exc))
        status, detail = exc.status_code, _error_message(exc.body)
        if isinstance(exc, brapi.RateLimitError):
            retry_after = parse_retry_after(exc.response.headers, self._clock())
            return RateLimited(SOURCE, tickers, detail, retry_after=retry_after, status=status)
        if isinstance(exc, (brapi.AuthenticationError, brapi.PermissionDeniedError)):
            return ProviderAuthError(SOURCE, tickers, detail, status=status)
        if isinstance(exc, (brapi.NotFoundError, brapi.BadRequestError, brapi.UnprocessableEntityError)):
            return _Rejected(detail, status)
        if status >= 500:
            return ProviderUnavailable(SOURCE, tickers, detail, status=status)
        return ProviderError(SOURCE, tickers, "unexpected status: %s" % detail, status=status, retryable=False)

    def _parse(self, body: object, tickers: list[str], convert: _Convert) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise MalformedResponse(SOURCE, tickers, "expected a JSON object, got %s" % type(body).__name__, status=200)
        if body.get("error"):
            raise _Rejected(_error_message(body), 200)
        items = body.get("results")
        if not isinstance(items, list):
            raise MalformedResponse(
                SOURCE, tickers, "expected `results` to be a list, got %s" % _short(items), status=200
            )
        found: dict[str, Any] = {}
        stray: list[str] = []  # entries that answer none of the requested tickers
        for item in items:
            key, answer = self._parse_result(item, convert)
            if key is not None and key in tickers:
                found[key] = answer
            else:
                stray.append("an entry for %s" % key if key else "an entry without a symbol")
        results: dict[str, Any] = {}
        for ticker in tickers:
            if ticker in found:
                results[ticker] = found[ticker]
            elif stray:  # an entry we could not attribute may well have been this ticker's
                results[ticker] = MalformedResponse(SOURCE, [ticker], "missing, and the response has %s" % stray[0])
            else:
                results[ticker] = UnknownTicker(ticker, SOURCE, "not in the response")
        return results

    def _parse_result(self, item: object, convert: _Convert) -> tuple[str | None, Any]:
        """(the requested ticker the entry answers, its converted Result or error) for one entry of `results`."""
        key = _entry_ticker(item)
        try:
            result = Result.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join("%s: %s" % (".".join(map(str, e["loc"])) or "entry", e["msg"]) for e in exc.errors())
            return key, MalformedResponse(SOURCE, [key or "?"], "result does not match brapi's Result: " + problems)
        try:
            return key, convert(key or result.symbol, result)
        except (ValidationError, ValueError) as exc:
            return key, MalformedResponse(SOURCE, [key or result.symbol], str(exc).replace("\n", " "))

    def _to_quote(self, ticker: str, result: Result) -> Quote:
        if result.regular_market_price is None:
            raise ValueError("result has no regularMarketPrice")
        return Quote(
            ticker=ticker,
            name=result.long_name or result.short_name,
            price=result.regular_market_price,
            change=result.regular_market_change,
            change_percent=result.regular_market_change_percent,
            volume=None if result.regular_market_volume is None else int(result.regular_market_volume),
            time=_epoch(result.regular_market_time) if result.regular_market_time else self._clock(),
            currency=result.currency,
            source=SOURCE,
            day_open=_positive(result.regular_market_open),
            day_high=_positive(result.regular_market_day_high),
            day_low=_positive(result.regular_market_day_low),
        )

    def _to_history(self, ticker: str, result: Result) -> History:
        quote = self._to_quote(ticker, result)
        current = calendar.session_of(quote.time)
        bars: dict[dt.date, Bar] = {}
        for entry in result.historical_data_price or []:
            bar = _to_bar(ticker, entry, quote.time if calendar.local_date(entry.date) == current else None)
            if bar is not None:
                bars[bar.session] = bar  # a repeated session: the later entry wins
        return History(quote, [bars[session] for session in sorted(bars)])


_Convert = Callable[[str, Result], Any]


def _to_bar(ticker: str, entry: ResultHistoricalDataPrice, as_of: float | None) -> Bar | None:
    """The bar of one `historicalDataPrice` entry; None for an entry without prices (a day without trades).

    `as_of`: when the quote was taken, for the session in progress; a past session's bar is final
    at its close. High and low are widened to the open and close should the provider's disagree.
    """
    if min(entry.open, entry.high, entry.low, entry.close) <= 0:
        log.info("brapi: %s: skipping the entry of %s without prices", ticker, entry.date)
        return None
    session = calendar.local_date(entry.date)
    return Bar(
        ticker=ticker,
        session=session,
        open=entry.open,
        high=max(entry.high, entry.open, entry.close),
        low=min(entry.low, entry.open, entry.close),
        close=entry.close,
        volume=max(entry.volume, 0),
        time=as_of if as_of is not None else calendar.at(session, calendar.SESSION_CLOSE),
        source=SOURCE,
    )


def _positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None


def _entry_ticker(item: object) -> str | None:
    """The ticker a result entry answers: `requestedSymbol` when brapi swapped it for another, else `symbol`."""
    if not isinstance(item, Mapping):
        return None
    for field in ("requestedSymbol", "symbol"):
        value = item.get(field)
        if isinstance(value, str) and value:
            return value.strip().upper()
    return None


def _epoch(iso: str) -> float:
    try:
        return dt.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        raise ValueError("regularMarketTime %r is not ISO 8601" % iso) from None


def parse_retry_after(headers: Mapping[str, str] | httpx.Headers, now: float) -> float | None:
    """Seconds to wait from Retry-After (seconds or an HTTP date) or retry-after-ms; None when absent or bad."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return _non_negative(float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return _non_negative(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return _non_negative(when.timestamp() - now)


def _non_negative(seconds: float) -> float | None:
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _error_message(body: object) -> str:
    if isinstance(body, Mapping):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
    return _short(body)


def _status_detail(exc: _Rejected) -> str:
    return exc.detail if exc.status in (None, 200) else "HTTP %d: %s" % (exc.status, exc.detail)


def _short(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
