"""A local aiohttp server that answers like brapi.dev's quote endpoint, with faults on demand.

Shapes follow the `brapi` package's own types (`brapi.types.QuoteRetrieveResponse`): a 200 body is
`{"results": [Result, ...], "requestedAt": ISO 8601, "took": ms}` with camelCase fields, and every
such body the fake sends is validated against that type first; errors are `{"error": true,
"message": "..."}` with the status brapi uses (404 unknown ticker, 401 bad token, 429 with
Retry-After, 400 for a `range` or `interval` brapi does not have).

With `range` and `interval=1d` each result carries `historicalDataPrice`: one entry per B3 session
in the range (market/calendar.py), dated at the session's opening in São Paulo, the current
session's so far; the prices are the sample provider's, so they are the same on every run.
`fake.history_days[ticker] = n` serves only the newest n sessions (a ticker listed recently, fewer
days than asked); a ticker in `fake.no_history` has an empty `historicalDataPrice`.
`fake.clock` is the fake's time of day (default `time.time`): tests set it to a session of their choice.

    async with FakeBrapi() as fake:           # or the `fake_brapi` fixture below
        provider = BrapiProvider("test-token", fake.url)
        fake.unknown.add("FAKE3")              # a ticker brapi does not know
        fake.rate_limit(retry_after="2", count=1)
        fake.rate_limit(after=2)               # the third request from now gets the 429
        fake.slow(delay_s=1.0)
        fake.malformed("not-json")
        ...
        assert fake.request_count == 1

Handler tests that run jobs in worker threads can use `with FakeBrapi().in_thread() as fake:`.
Unknown tickers: those in `fake.unknown`, and placeholders with four identical letters (XXXX3),
like the sample provider. `unknown_mode="batch"` (default) fails the whole request with a 404 when
any ticker is unknown; `"omit"` leaves unknown tickers out of `results` (404 only when none is left).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args, get_type_hints

import pytest
from aiohttp import web
from brapi.types import QuoteRetrieveResponse
from brapi.types.quote_retrieve_params import QuoteRetrieveParams
from pydantic import ValidationError

from market import calendar
from market.models import Bar
from market.providers.base import RANGE_DAYS, range_start
from market.providers.sample import SampleProvider
from market.tickers import is_placeholder, is_valid_ticker

FREE_TICKERS = frozenset({"PETR4", "MGLU3", "VALE3", "ITUB4"})  # brapi answers these without a token, one at a time
MalformedKind = Literal[
    "not-json", "html", "not-object", "no-results", "bad-price", "no-price", "bad-time", "stray-symbol", "bad-bar"
]
_PARAMS = get_type_hints(QuoteRetrieveParams, include_extras=True)
RANGES: tuple[str, ...] = get_args(_PARAMS["range"])  # what brapi's own client may send
INTERVALS: tuple[str, ...] = get_args(_PARAMS["interval"])


@dataclass
class FakeRequest:
    """One request the fake received."""

    time: float
    path: str
    tickers: list[str]
    status: int
    token: str | None
    params: dict[str, str] = field(default_factory=dict)  # the query: range, interval, ...
    at: float = 0.0  # the fake's clock when it answered


@dataclass
class _Fault:
    kind: str
    count: int
    params: dict[str, Any] = field(default_factory=dict)
    after: int = 0  # requests answered normally before this fault applies


class FakeBrapi:
    """brapi's GET /api/quote/{tickers} on 127.0.0.1, counting requests; faults are queued per request."""

    def __init__(
        self,
        *,
        token: str | None = "test-token",
        unknown: set[str] | None = None,
        unknown_mode: Literal["batch", "omit"] = "batch",
        max_per_request: int | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.token = token  # None: any token, or none, is accepted
        self.unknown: set[str] = set(unknown or ())
        self.unknown_mode = unknown_mode
        self.max_per_request = max_per_request
        self.delay_s = delay_s
        self.prices: dict[str, float] = {}  # fixed prices per ticker; others come from the sample provider
        self.history_days: dict[str, int] = {}  # tickers with fewer sessions of history than any range asks
        self.no_history: set[str] = set()  # tickers brapi has a quote but no daily history for
        self.clock: Callable[[], float] = time.time
        # Old ticker -> current one: brapi answers with the current `symbol` and the sent `requestedSymbol`
        self.renames: dict[str, str] = {}
        self.requests: list[FakeRequest] = []
        self._faults: collections.deque[_Fault] = collections.deque()
        self._sample = SampleProvider()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- faults -----------------------------------------------------------------------------

    def rate_limit(self, retry_after: str | None = "1", count: int = 1, after: int = 0) -> None:
        """`count` requests get 429, with `Retry-After: retry_after` (None: no header), once `after`
        more requests have been answered."""
        self._faults.append(_Fault("429", count, {"retry_after": retry_after}, after))

    def fail(self, status: int = 503, count: int = 1) -> None:
        """The next `count` requests get `status` with an error body."""
        self._faults.append(_Fault("status", count, {"status": status}))

    def slow(self, delay_s: float, count: int = 1) -> None:
        """The next `count` requests wait `delay_s` before answering normally."""
        self._faults.append(_Fault("slow", count, {"delay_s": delay_s}))

    def malformed(self, kind: MalformedKind = "not-json", count: int = 1) -> None:
        """The next `count` requests get a 200 whose body does not match brapi's types."""
        self._faults.append(_Fault("malformed", count, {"kind": kind}))

    def _next_fault(self) -> _Fault | None:
        if not self._faults:
            return None
        fault = self._faults[0]
        if fault.after > 0:
            fault.after -= 1
            return None
        fault.count -= 1
        if fault.count <= 0:
            self._faults.popleft()
        return fault

    # -- what happened ----------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def peak_per_second(self, window_s: float = 1.0) -> int:
        """The most requests received within any `window_s` seconds."""
        times = sorted(r.time for r in self.requests)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    def reset(self) -> None:
        """Forget the requests and queued faults."""
        self.requests.clear()
        self._faults.clear()

    # -- server -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/quote/{tickers}", self._quote)
        return app

    async def start(self) -> FakeBrapi:
        self._runner = web.AppRunner(self.app(), shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = "http://%s:%d" % (host, port)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeBrapi:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[FakeBrapi]:
        """Serve from a loop in a background thread, for tests whose code under test is synchronous."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-brapi", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(10)
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    # -- the endpoint -----------------------------------------------------------------------

    async def _quote(self, request: web.Request) -> web.StreamResponse:
        tickers = [t.strip().upper() for t in request.match_info["tickers"].split(",") if t.strip()]
        token = _token(request)
        params = {k: v for k, v in request.query.items() if k != "token"}
        record = FakeRequest(time.monotonic(), request.path, tickers, 0, token, params, self.clock())
        self.requests.append(record)
        response = await self._answer(tickers, token, params, record.at)
        record.status = response.status
        return response

    async def _answer(
        self, tickers: list[str], token: str | None, params: dict[str, str], now: float
    ) -> web.StreamResponse:
        fault = self._next_fault()
        delay = self.delay_s + (fault.params["delay_s"] if fault and fault.kind == "slow" else 0.0)
        if delay:
            await asyncio.sleep(delay)
        if fault and fault.kind == "429":
            headers = {"Retry-After": fault.params["retry_after"]} if fault.params["retry_after"] is not None else {}
            return _error(
                429, "Você atingiu o limite de requisições do seu plano. Tente novamente mais tarde.", headers
            )
        if fault and fault.kind == "status":
            return _error(fault.params["status"], "Erro interno. Tente novamente mais tarde.")
        refusal = self._refuse(tickers, token) or _refuse_params(params)
        if refusal is not None:
            return refusal
        unknown = [t for t in tickers if self._is_unknown(t)]
        if unknown and (self.unknown_mode == "batch" or len(unknown) == len(tickers)):
            return _error(404, "Não encontramos a ação %s" % unknown[0])
        results = [self._result(t, now, params.get("range")) for t in tickers if t not in unknown]
        if fault and fault.kind == "malformed":
            return _malformed(fault.params["kind"], results)
        body = {"results": results, "requestedAt": _iso(now), "took": 3}
        try:
            QuoteRetrieveResponse.model_validate(body)
        except ValidationError as exc:  # the fake itself drifted from brapi's types: fail loudly
            raise AssertionError("the fake's body does not match brapi's QuoteRetrieveResponse: %s" % exc) from exc
        return web.json_response(body)

    def _refuse(self, tickers: list[str], token: str | None) -> web.StreamResponse | None:
        if not tickers:
            return _error(400, "Informe ao menos um ticker.")
        if self.token is not None and token != self.token:
            keyless_ok = token is None and len(tickers) == 1 and tickers[0] in FREE_TICKERS
            if not keyless_ok:
                return _error(401, "O seu token é inválido, por favor, verifique o seu token em brapi.dev/dashboard")
        if self.max_per_request is not None and len(tickers) > self.max_per_request:
            return _error(400, "O seu plano permite até %d ativos por requisição." % self.max_per_request)
        return None

    def _is_unknown(self, ticker: str) -> bool:
        return ticker in self.unknown or not is_valid_ticker(ticker) or is_placeholder(ticker)

    def history(self, ticker: str, range_: str, now: float) -> list[Bar]:
        """The daily bars the fake serves for `ticker` over `range_` at `now` (oldest first)."""
        if ticker in self.no_history:
            return []
        last = calendar.session_of(now)
        sessions = calendar.trading_days(range_start(range_, last), last)  # type: ignore[arg-type]
        if ticker in self.history_days:
            sessions = sessions[-self.history_days[ticker] :] if self.history_days[ticker] else []
        bars = [bar.model_copy(update={"source": "brapi"}) for bar in self._sample.bars(ticker, sessions, now)]
        price = self.prices.get(ticker)
        if bars and price is not None and bars[-1].session == calendar.session_of(now):
            last_bar = bars[-1]  # the session so far closes at the quote's price
            bars[-1] = last_bar.model_copy(
                update={"close": price, "high": max(last_bar.high, price), "low": min(last_bar.low, price)}
            )
        return bars

    def _result(self, ticker: str, now: float, range_: str | None = None) -> dict[str, Any]:
        quote = self._sample.quote_at(ticker, now)
        price = self.prices.get(ticker, quote.price)
        change = quote.change or 0.0
        previous = round(price - change, 2)
        name = quote.name.replace(" (sample data)", "") if quote.name else ticker
        fixed = ticker in self.prices
        result = {
            "currency": "BRL",
            "symbol": self.renames.get(ticker, ticker),
            "shortName": name.upper(),
            "longName": name,
            "regularMarketPrice": price,
            "regularMarketChange": change,
            "regularMarketChangePercent": round(change / previous * 100, 4) if previous else 0.0,
            "regularMarketTime": _iso(quote.time),
            "regularMarketVolume": quote.volume,
            "regularMarketDayHigh": round(price * 1.01, 2) if fixed else quote.day_high,
            "regularMarketDayLow": round(price * 0.99, 2) if fixed else quote.day_low,
            "regularMarketDayRange": "%.2f - %.2f" % (price * 0.99, price * 1.01),
            "regularMarketOpen": previous if fixed else quote.day_open,
            "regularMarketPreviousClose": previous,
            "fiftyTwoWeekHigh": round(price * 1.3, 2),
            "fiftyTwoWeekLow": round(price * 0.7, 2),
            "fiftyTwoWeekRange": "%.2f - %.2f" % (price * 0.7, price * 1.3),
            "marketCap": None,
            "logourl": "https://icons.brapi.dev/icons/%s.svg" % ticker,
            "priceEarnings": None,
            "earningsPerShare": None,
        }
        if ticker in self.renames:
            result["requestedSymbol"] = ticker
        if range_ is not None:
            result.update(
                {
                    "historicalDataPrice": [_entry(bar) for bar in self.history(ticker, range_, now)],
                    "usedRange": range_,
                    "usedInterval": "1d",
                    "validRanges": list(RANGES),
                    "validIntervals": list(INTERVALS),
                }
            )
        return result


def _entry(bar: Bar) -> dict[str, Any]:
    """One `historicalDataPrice` entry (brapi's ResultHistoricalDataPrice), dated at the session's opening."""
    return {
        "date": int(calendar.at(bar.session, calendar.SESSION_OPEN)),
        "open": bar.open,
        "high": bar.high,
        "low": bar.low,
        "close": bar.close,
        "volume": bar.volume or 0,
        "adjustedClose": bar.close,
    }


def _refuse_params(params: dict[str, str]) -> web.StreamResponse | None:
    """brapi's 400 for a range or interval it does not have; the fake serves daily history only."""
    range_, interval = params.get("range"), params.get("interval")
    if range_ is not None and range_ not in RANGES:
        return _error(400, "Range inválido: %s. Use um de: %s" % (range_, ", ".join(RANGES)))
    if interval is not None and interval not in INTERVALS:
        return _error(400, "Intervalo inválido: %s. Use um de: %s" % (interval, ", ".join(INTERVALS)))
    if range_ is not None and (range_ not in RANGE_DAYS or interval != "1d"):
        raise AssertionError(
            "the fake serves daily history over %s only, asked range=%s interval=%s"
            % (", ".join(RANGE_DAYS), range_, interval)
        )
    return None


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip() or None
    return request.query.get("token") or None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": True, "message": message}, status=status, headers=headers)


def _malformed(kind: str, results: list[dict[str, Any]]) -> web.Response:
    if kind == "not-json":
        return web.Response(text='{"results": [', content_type="application/json")
    if kind == "html":
        return web.Response(text="<html><body>Bad gateway</body></html>", content_type="text/html")
    if kind == "not-object":
        return web.json_response(results)
    if kind == "no-results":
        return web.json_response({"requestedAt": _iso(time.time()), "took": 3})
    broken = [dict(r) for r in results]
    for r in broken:
        if kind == "bad-bar":
            r["historicalDataPrice"] = [{**e, "close": "R$ %s" % e["close"]} for e in r["historicalDataPrice"]]
        elif kind == "bad-price":
            r["regularMarketPrice"] = "R$ %s" % r["regularMarketPrice"]
        elif kind == "no-price":
            r.pop("regularMarketPrice")
        elif kind == "bad-time":
            r["regularMarketTime"] = "yesterday"
        elif kind == "stray-symbol":
            r["symbol"] = "ZZZZ%s" % r["symbol"][4:]
    return web.Response(
        text=json.dumps({"results": broken, "requestedAt": _iso(time.time()), "took": 3}),
        content_type="application/json",
    )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
async def fake_brapi() -> AsyncIterator[FakeBrapi]:
    """A running FakeBrapi (token "test-token"), stopped after the test."""
    async with FakeBrapi() as fake:
        yield fake
