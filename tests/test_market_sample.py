"""The offline sample provider: deterministic, plausible, labelled, and it knows what it does not know."""

from __future__ import annotations


import pytest

from market.errors import InvalidTicker, MarketError, RateLimited, UnknownTicker
from market.models import Quote
from market.providers import BrapiProvider, SampleProvider, make_provider
from market.providers.blocking import BlockingQuotes
from market.tickers import DEFAULT_TICKERS, validate_ticker

NOON = 1_700_000_000.0


def at(now: float) -> SampleProvider:
    return SampleProvider(clock=lambda: now)


async def test_the_same_minute_gives_the_same_quote_on_any_instance() -> None:
    first = await at(NOON).quote("PETR4")
    again = await at(NOON + 30 - NOON % 60).quote("PETR4")  # later in the same minute
    assert first == again
    assert first.time == NOON - NOON % 60


async def test_prices_move_between_minutes_and_days() -> None:
    prices = {(await at(NOON + m * 60).quote("VALE3")).price for m in range(10)}
    assert len(prices) > 1


async def test_sample_quotes_are_plausible_and_labelled() -> None:
    quotes = await at(NOON).quotes([t.ticker for t in DEFAULT_TICKERS])
    for info in DEFAULT_TICKERS:
        quote = quotes[info.ticker]
        assert isinstance(quote, Quote)
        assert quote.source == "sample" and quote.currency == "BRL"
        assert quote.name == "%s (sample data)" % info.name
        assert 1 < quote.price < 300 and quote.volume is not None and quote.volume > 0
    petr4 = quotes["PETR4"]
    assert isinstance(petr4, Quote) and 25 < petr4.price < 55


async def test_placeholders_and_listed_unknowns_are_unknown_tickers() -> None:
    provider = SampleProvider(unknown={"FAKE3"})
    results = await provider.quotes(["PETR4", "XXXX3", "fake3", "NOT-A-TICKER"])
    assert isinstance(results["PETR4"], Quote)
    assert isinstance(results["XXXX3"], UnknownTicker) and not results["XXXX3"].retryable
    assert isinstance(results["FAKE3"], UnknownTicker)
    assert isinstance(results["NOT-A-TICKER"], InvalidTicker)
    with pytest.raises(UnknownTicker, match="sample does not know ticker ZZZZ11"):
        await provider.quote("ZZZZ11")


def test_daily_closes_give_a_history_for_analyses() -> None:
    closes = at(NOON).daily_closes("ITUB4", 60)
    assert len(closes) == 60 and all(20 < c < 50 for c in closes)
    assert closes == at(NOON).daily_closes("ITUB4", 60)


def test_make_provider_picks_brapi_only_when_configured() -> None:
    assert isinstance(make_provider(None, None), SampleProvider)
    assert isinstance(make_provider("key", None), BrapiProvider)
    assert isinstance(make_provider(None, "http://127.0.0.1:9"), BrapiProvider)


def test_blocking_quotes_serve_threads_without_a_loop() -> None:
    with BlockingQuotes(lambda: at(NOON)) as quotes:
        assert quotes.get("BOVA11").ticker == "BOVA11"
        answers = quotes.get_many(["PETR4", "XXXX4"])
        assert isinstance(answers["PETR4"], Quote) and isinstance(answers["XXXX4"], UnknownTicker)
        with pytest.raises(UnknownTicker):
            quotes.get("XXXX4")


def test_ticker_validation_says_what_was_expected() -> None:
    assert validate_ticker(" bova11 ") == "BOVA11"
    with pytest.raises(InvalidTicker) as info:
        validate_ticker("PETR")
    assert info.value.ticker == "PETR"
    assert str(info.value) == (
        "ticker 'PETR': not a B3 ticker; expected four letters and one or two digits, e.g. PETR4, VALE3, BOVA11"
    )
    for bad in ["", "PETR123", "PET4", "1234", "PETR-4"]:
        with pytest.raises(InvalidTicker):
            validate_ticker(bad)
