"""The offline sample provider: deterministic, plausible, labelled, trading in B3's sessions only, and it
knows what it does not know."""

from __future__ import annotations

import datetime as dt

import pytest

from market import calendar
from market.errors import InvalidTicker, UnknownTicker
from market.models import Quote
from market.providers import BrapiProvider, SampleProvider, make_provider
from market.providers.blocking import BlockingQuotes
from market.tickers import DEFAULT_TICKERS, validate_ticker

NOON = dt.datetime(2026, 3, 10, 13, 13, 20, tzinfo=calendar.SAO_PAULO).timestamp()  # a Tuesday, in session


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


async def test_out_of_hours_a_quote_is_the_last_trade_of_the_session_before() -> None:
    # Saturday morning: Friday's close; the morning after Carnival: the Friday before it
    saturday = dt.datetime(2026, 3, 14, 9, 0, tzinfo=calendar.SAO_PAULO).timestamp()
    friday_close = dt.datetime(2026, 3, 13, 18, 0, tzinfo=calendar.SAO_PAULO).timestamp()
    assert (await at(saturday).quote("PETR4")) == (await at(friday_close).quote("PETR4"))
    assert (await at(saturday).quote("PETR4")).time == friday_close


async def test_the_history_has_one_bar_per_session_and_ends_with_the_quote() -> None:
    history = await at(NOON).history("ITUB4", "3mo")
    bars = history.bars
    assert 60 <= len(bars) <= 66 and all(calendar.is_trading_day(b.session) for b in bars)
    assert len({b.session for b in bars}) == len(bars) and bars == sorted(bars, key=lambda b: b.session)
    assert all(20 < b.low <= b.close <= b.high < 50 and b.source == "sample" for b in bars)
    last = bars[-1]
    assert (last.session, last.close, last.time) == (dt.date(2026, 3, 10), history.quote.price, history.quote.time)
    assert (history.quote.day_open, history.quote.day_high, history.quote.day_low) == (last.open, last.high, last.low)
    assert history == await at(NOON).history("ITUB4", "3mo")
    with pytest.raises(UnknownTicker):
        await at(NOON).history("XXXX3", "3mo")


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
