"""The brapi provider against a local server that answers like brapi.dev."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate

import brapi
import pytest
from brapi.types import QuoteRetrieveResponse
from fake_brapi import FakeBrapi

from market import calendar
from market.errors import (
    MalformedResponse,
    ProviderAuthError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    UnknownTicker,
)
from market.models import Quote
from market.providers import BrapiProvider, make_provider
from market.providers.blocking import BlockingQuotes
from market.providers.brapi import parse_retry_after

ProviderFactory = Callable[..., BrapiProvider]


@pytest.fixture
async def fake() -> AsyncIterator[FakeBrapi]:
    async with FakeBrapi() as server:
        yield server


@pytest.fixture
async def provider_for(fake: FakeBrapi) -> AsyncIterator[ProviderFactory]:
    """Providers pointed at the fake server (token "test-token" unless told), closed after the test."""
    made: list[BrapiProvider] = []

    def make(api_key: str | None = "test-token", **kwargs: object) -> BrapiProvider:
        provider = BrapiProvider(api_key, fake.url, **kwargs)  # type: ignore[arg-type]
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def test_a_quote_for_petr4(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    fake.prices["PETR4"] = 38.42

    quote = await provider_for().quote("petr4")

    assert (quote.ticker, quote.price, quote.source, quote.currency) == ("PETR4", 38.42, "brapi", "BRL")
    assert quote.name and quote.change is not None and quote.volume
    assert quote.time == float(int(calendar.last_trade_time(fake.requests[0].at) // 60) * 60)  # the last trade
    assert fake.request_count == 1
    assert fake.requests[0].path == "/api/quote/PETR4"
    assert fake.requests[0].token == "test-token"


async def test_several_tickers_travel_in_one_request(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    results = await provider_for().quotes(["PETR4", "VALE3", "ITUB4", "BOVA11"])

    assert sorted(results) == ["BOVA11", "ITUB4", "PETR4", "VALE3"]
    assert all(isinstance(q, Quote) and q.ticker == t for t, q in results.items())
    assert fake.request_count == 1
    assert fake.requests[0].tickers == ["PETR4", "VALE3", "ITUB4", "BOVA11"]


async def test_batches_are_cut_at_max_per_request(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    results = await provider_for(max_per_request=2).quotes(["PETR4", "VALE3", "ITUB4", "BBDC4", "ABEV3"])
    assert all(isinstance(q, Quote) for q in results.values())
    assert [r.tickers for r in fake.requests] == [["PETR4", "VALE3"], ["ITUB4", "BBDC4"], ["ABEV3"]]


async def test_an_unknown_ticker_is_unknown_and_not_retryable(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    fake.unknown.add("FAKE3")

    with pytest.raises(UnknownTicker) as info:
        await provider_for().quote("FAKE3")

    assert info.value.ticker == "FAKE3" and not info.value.retryable
    assert str(info.value) == "brapi does not know ticker FAKE3: HTTP 404: Não encontramos a ação FAKE3"
    assert fake.request_count == 1


async def test_a_batch_with_a_bad_ticker_is_retried_one_by_one(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    # Given a server that fails a whole request when one of its tickers is unknown
    fake.unknown.add("FAKE3")

    # When three tickers, one of them unknown, are asked together
    results = await provider_for().quotes(["PETR4", "FAKE3", "VALE3"])

    # Then the good ones still come back, and the bad one is isolated
    assert isinstance(results["PETR4"], Quote) and isinstance(results["VALE3"], Quote)
    assert isinstance(results["FAKE3"], UnknownTicker)
    assert [r.tickers for r in fake.requests] == [["PETR4", "FAKE3", "VALE3"], ["PETR4"], ["FAKE3"], ["VALE3"]]


async def test_tickers_left_out_of_results_are_unknown(provider_for: ProviderFactory) -> None:
    async with (
        FakeBrapi(unknown={"FAKE3"}, unknown_mode="omit") as server,
        _closing(BrapiProvider("test-token", server.url)) as provider,
    ):
        results = await provider.quotes(["PETR4", "FAKE3"])
    assert isinstance(results["PETR4"], Quote)
    assert isinstance(results["FAKE3"], UnknownTicker)
    assert server.request_count == 1


async def test_a_plan_limit_on_tickers_per_request_is_survived(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    fake.max_per_request = 1
    results = await provider_for().quotes(["PETR4", "VALE3"])
    assert all(isinstance(q, Quote) for q in results.values())


async def test_a_bad_token_is_an_auth_error(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    with pytest.raises(ProviderAuthError) as info:
        await provider_for("wrong-token").quotes(["PETR4", "VALE3"])
    assert info.value.status == 401 and not info.value.retryable
    assert info.value.tickers == ("PETR4", "VALE3")
    assert "token é inválido" in str(info.value)


async def test_without_a_key_no_authorization_is_sent_and_free_tickers_answer(fake: FakeBrapi) -> None:
    provider = make_provider(None, fake.url)
    try:
        results = await provider.quotes(["PETR4", "VALE3"])
    finally:
        await provider.aclose()
    assert all(isinstance(q, Quote) for q in results.values())
    assert [(r.tickers, r.token) for r in fake.requests] == [(["PETR4"], None), (["VALE3"], None)]


async def test_429_is_rate_limited_with_the_servers_retry_after(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    provider = provider_for()
    fake.rate_limit(retry_after="7", count=1)

    with pytest.raises(RateLimited) as info:
        await provider.quotes(["PETR4", "VALE3"])

    assert info.value.retry_after == 7.0 and info.value.retryable and info.value.status == 429
    assert isinstance(await provider.quote("PETR4"), Quote)  # the next request goes through
    assert fake.request_count == 2  # the client's own retries are off


async def test_retry_after_as_an_http_date_or_missing(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    provider = provider_for()
    fake.rate_limit(retry_after=formatdate(time.time() + 30, usegmt=True))
    with pytest.raises(RateLimited) as info:
        await provider.quote("PETR4")
    assert info.value.retry_after is not None and 25 < info.value.retry_after <= 31

    fake.rate_limit(retry_after=None)
    with pytest.raises(RateLimited) as info:
        await provider.quote("PETR4")
    assert info.value.retry_after is None


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "2.5"}, 0) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, 0) == 1.5
    assert parse_retry_after({"retry-after": "-3"}, 0) == 0.0
    assert parse_retry_after({"retry-after": "soon"}, 0) is None
    assert parse_retry_after({}, 0) is None


async def test_a_slow_answer_is_a_timeout(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    fake.slow(delay_s=2.0)
    started = time.monotonic()

    with pytest.raises(ProviderTimeout) as info:
        await provider_for(timeout_s=0.2).quote("PETR4")

    assert time.monotonic() - started < 1.5
    assert info.value.retryable
    assert str(info.value) == "brapi: timed out for PETR4: no answer within 0.2s"


async def test_5xx_and_refused_connections_are_unavailable(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    fake.fail(status=503)
    with pytest.raises(ProviderUnavailable) as info:
        await provider_for().quote("PETR4")
    assert info.value.status == 503 and info.value.retryable

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with _closing(BrapiProvider("k", "http://127.0.0.1:%d" % port)) as closed:
        with pytest.raises(ProviderUnavailable, match="cannot connect"):
            await closed.quote("PETR4")


@pytest.mark.parametrize("kind", ["not-json", "html", "not-object", "no-results"])
async def test_a_body_that_is_not_a_quote_response_is_malformed(
    kind: str,
    fake: FakeBrapi,
    provider_for: ProviderFactory,
) -> None:
    fake.malformed(kind)  # type: ignore[arg-type]
    with pytest.raises(MalformedResponse) as info:
        await provider_for().quotes(["PETR4", "VALE3"])
    assert not info.value.retryable and info.value.tickers == ("PETR4", "VALE3")


@pytest.mark.parametrize(
    "kind, says", [("bad-price", "regularMarketPrice"), ("no-price", "no regularMarketPrice"), ("bad-time", "ISO 8601")]
)
async def test_a_result_that_does_not_match_the_types_is_malformed_for_its_ticker(
    kind: str,
    says: str,
    fake: FakeBrapi,
    provider_for: ProviderFactory,
) -> None:
    fake.malformed(kind)  # type: ignore[arg-type]
    provider = provider_for()

    results = await provider.quotes(["PETR4", "VALE3"])

    for ticker in ("PETR4", "VALE3"):
        error = results[ticker]
        assert isinstance(error, MalformedResponse) and error.tickers == (ticker,)
        assert says in str(error)
    fake.malformed(kind)  # type: ignore[arg-type]
    with pytest.raises(MalformedResponse):
        await provider.quote("PETR4")


async def test_a_renamed_ticker_answers_for_the_ticker_asked(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    # brapi swaps an old ticker for the current one and says which was asked in `requestedSymbol`
    fake.renames["ELET3"] = "AXIA3"
    quote = await provider_for().quote("ELET3")
    assert quote.ticker == "ELET3"


async def test_entries_for_tickers_not_asked_make_the_missing_ones_malformed(
    fake: FakeBrapi, provider_for: ProviderFactory
) -> None:
    fake.malformed("stray-symbol")
    results = await provider_for().quotes(["PETR4"])
    assert isinstance(results["PETR4"], MalformedResponse)
    assert "an entry for ZZZZ4" in str(results["PETR4"])


async def test_the_fake_answers_in_brapis_own_types(fake: FakeBrapi) -> None:
    # The official client with strict validation accepts the fake's body, and its errors match
    client = brapi.AsyncBrapi(api_key="test-token", base_url=fake.url, max_retries=0, _strict_response_validation=True)
    try:
        response = await client.quote.retrieve("PETR4,VALE3")
        assert isinstance(response, QuoteRetrieveResponse)
        assert [r.symbol for r in response.results] == ["PETR4", "VALE3"]
        fake.unknown.add("FAKE3")
        with pytest.raises(brapi.NotFoundError):
            await client.quote.retrieve("FAKE3")
        fake.rate_limit()
        with pytest.raises(brapi.RateLimitError):
            await client.quote.retrieve("PETR4")
    finally:
        await client.close()


# -- daily history (`range`, `interval=1d` → historicalDataPrice) ----------------------------------


async def test_history_is_one_request_with_the_quote_and_a_bar_per_session(
    fake: FakeBrapi, provider_for: ProviderFactory
) -> None:
    history = await provider_for().history("PETR4", "3mo")

    [request] = fake.requests
    assert request.params == {"range": "3mo", "interval": "1d"}
    assert history.quote.ticker == "PETR4" and history.quote.source == "brapi"
    assert history.bars == fake.history("PETR4", "3mo", request.at)
    assert 60 <= len(history.bars) <= 66
    assert all(calendar.is_trading_day(b.session) and b.source == "brapi" for b in history.bars)
    assert history.bars[-1].session == calendar.session_of(request.at)


async def test_a_ticker_with_fewer_sessions_than_asked_gives_what_it_has(
    fake: FakeBrapi, provider_for: ProviderFactory
) -> None:
    fake.history_days["WEGE3"] = 30  # listed six weeks ago
    history = await provider_for().history("WEGE3", "1y")
    assert len(history.bars) == 30 and fake.requests[0].params["range"] == "1y"


async def test_a_ticker_without_history_gives_its_quote_and_no_bars(
    fake: FakeBrapi, provider_for: ProviderFactory
) -> None:
    fake.no_history.add("HGLG11")
    history = await provider_for().history("HGLG11", "3mo")
    assert history.bars == [] and history.quote.ticker == "HGLG11"


async def test_history_errors_are_the_quotes(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    provider = provider_for()
    with pytest.raises(UnknownTicker, match="brapi does not know ticker XXXX3"):
        await provider.history("XXXX3", "3mo")
    fake.rate_limit(retry_after="3")
    with pytest.raises(RateLimited) as limited:
        await provider.history("PETR4", "3mo")
    assert limited.value.retry_after == 3.0
    fake.malformed("bad-bar")
    with pytest.raises(MalformedResponse, match=r"historicalDataPrice\.0\.close"):
        await provider.history("PETR4", "3mo")


async def test_a_range_brapi_refuses_is_not_an_unknown_ticker(fake: FakeBrapi, provider_for: ProviderFactory) -> None:
    with pytest.raises(ProviderError) as refused:
        await provider_for().history("PETR4", "3y")  # type: ignore[arg-type]
    assert not isinstance(refused.value, UnknownTicker) and not refused.value.retryable
    assert "range=3y interval=1d refused: HTTP 400: Range inválido" in str(refused.value)


async def test_the_fakes_history_is_in_brapis_own_types(fake: FakeBrapi) -> None:
    fake.history_days["VALE3"] = 5
    client = brapi.AsyncBrapi(api_key="test-token", base_url=fake.url, max_retries=0, _strict_response_validation=True)
    try:
        response = await client.quote.retrieve("PETR4,VALE3", range="1mo", interval="1d")
        petr4, vale3 = response.results
        assert petr4.historical_data_price and len(petr4.historical_data_price) >= 18
        assert vale3.historical_data_price is not None and len(vale3.historical_data_price) == 5
        assert petr4.used_range == "1mo" and petr4.used_interval == "1d"
        entry = petr4.historical_data_price[-1]
        assert calendar.local_date(entry.date) == calendar.session_of(fake.requests[-1].at)
        assert entry.low <= entry.close <= entry.high
    finally:
        await client.close()


def test_blocking_quotes_over_brapi_from_a_thread_fake() -> None:
    with FakeBrapi().in_thread() as server:
        with BlockingQuotes(lambda: BrapiProvider("test-token", server.url)) as quotes:
            assert quotes.get("PETR4").source == "brapi"
            assert isinstance(quotes.get_many(["VALE3", "XXXX3"])["XXXX3"], UnknownTicker)
        assert server.request_count == 1 + 3  # the batch, then one by one


class _closing:
    """`async with` for a provider: closes it on the way out."""

    def __init__(self, provider: BrapiProvider) -> None:
        self.provider = provider

    async def __aenter__(self) -> BrapiProvider:
        return self.provider

    async def __aexit__(self, *exc: object) -> None:
        await self.provider.aclose()
