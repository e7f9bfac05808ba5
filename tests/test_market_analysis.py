"""Indicators against hand-computed values, and the signal they add up to."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from market.analysis import MIN_CLOSES, _macd_vote, analyze, ema, macd, rsi, sma, volatility
from market.errors import InsufficientHistory, InvalidTicker

TOL = 1e-9


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=0, abs_tol=TOL) for x, y in zip(a, b, strict=True))


def test_sma_is_the_mean_of_each_window() -> None:
    # (2+4+6)/3, (4+6+8)/3, (6+8+12)/3
    assert close(sma([2, 4, 6, 8, 12], 3), [4.0, 6.0, 26 / 3])


def test_ema_is_seeded_with_the_sma_then_smoothed() -> None:
    # alpha = 2/(3+1) = 0.5; seed (2+4+6)/3 = 4; 0.5*8 + 0.5*4 = 6; 0.5*12 + 0.5*6 = 9
    assert close(ema([2, 4, 6, 8, 12], 3), [4.0, 6.0, 9.0])


def test_rsi_uses_wilder_smoothing() -> None:
    # changes +1, -0.5, +1 | +0.5 | -1
    # first: gain 2/3, loss 1/6, RS 4 -> 80
    # then: gain (2/3*2 + 0.5)/3 = 11/18, loss (1/6*2)/3 = 1/9, RS 5.5 -> 100 - 100/6.5 = 1100/13
    # then: gain (11/18*2)/3 = 11/27, loss (1/9*2 + 1)/3 = 11/27, RS 1 -> 50
    assert close(rsi([10, 11, 10.5, 11.5, 12, 11], 3), [80.0, 1100 / 13, 50.0])


def test_rsi_of_a_series_that_only_rises_is_100_and_of_a_flat_one_50() -> None:
    assert rsi([1, 2, 3, 4], 3) == [100.0]
    assert rsi([5, 5, 5, 5], 3) == [50.0]


def test_macd_line_signal_and_histogram() -> None:
    # Given closes 1, 2, 4, 8, 16, 32 and MACD(fast=2, slow=3, signal=2)
    # EMA2 (alpha 2/3) from index 1: 3/2, 19/6, 115/18, 691/54, 4147/162
    # EMA3 (alpha 1/2) from index 2: 7/3, 31/6, 127/12, 511/24
    # line = EMA2 - EMA3: 5/6, 11/9, 239/108, 2791/648
    # signal = EMA2 of the line: 37/36, 589/324, 845/243
    # histogram = line - signal: 7/36, 32/81, 1613/1944
    series = macd([1, 2, 4, 8, 16, 32], fast=2, slow=3, signal=2)
    assert close(series.line, [5 / 6, 11 / 9, 239 / 108, 2791 / 648])
    assert close(series.signal, [37 / 36, 589 / 324, 845 / 243])
    assert close(series.histogram, [7 / 36, 32 / 81, 1613 / 1944])


def test_volatility_is_the_annualised_sample_stdev_of_log_returns() -> None:
    # returns ln(1.1) and ln(0.9): sample stdev |ln(1.1) - ln(0.9)| / sqrt(2), times sqrt(252)
    expected = math.log(1.1 / 0.9) / math.sqrt(2) * math.sqrt(252)
    assert math.isclose(volatility([100, 110, 99], window=2), expected, abs_tol=TOL)
    # only the last `window` returns count
    assert math.isclose(volatility([1, 50, 100, 110, 99], window=2), expected, abs_tol=TOL)


@pytest.mark.parametrize(
    "call, needed",
    [
        (lambda: sma([1, 2], 3), 3),
        (lambda: ema([1, 2], 3), 3),
        (lambda: rsi([1, 2, 3], 3), 4),
        (lambda: macd([1.0] * 33), 34),
        (lambda: volatility([1.0] * 20), 21),
    ],
)
def test_indicators_refuse_short_series(call: Callable[[], object], needed: int) -> None:
    with pytest.raises(InsufficientHistory) as info:
        call()
    assert info.value.needed == needed


def rising(n: int) -> list[float]:
    return [100 + 0.5 * i + 3 * math.sin(i * 1.3) for i in range(n)]


def test_an_uptrend_with_momentum_is_a_buy() -> None:
    result = analyze("petr4", rising(80), source="test", now=1000.0)

    assert (result.ticker, result.source, result.last_session) == ("PETR4", "test", None)
    assert result.signal == "buy" and result.score == 2
    assert result.closes_used == 80 and result.computed_at == 1000.0
    assert result.sma20 == pytest.approx(sma(rising(80), 20)[-1], abs=TOL)
    assert result.sma50 == pytest.approx(sma(rising(80), 50)[-1], abs=TOL)
    assert result.ema20 == pytest.approx(ema(rising(80), 20)[-1], abs=TOL)
    assert result.rsi14 == pytest.approx(rsi(rising(80), 14)[-1], abs=TOL)
    assert result.macd.histogram == pytest.approx(macd(rising(80)).histogram[-1], abs=TOL)
    assert any("uptrend" in r for r in result.reasons)
    assert any(r.startswith("MACD above its signal") for r in result.reasons)


def test_the_mirror_downtrend_is_a_sell() -> None:
    result = analyze("VALE3", [240 - c for c in rising(80)], source="test")
    assert result.signal == "sell" and result.score == -2
    assert any("downtrend" in r for r in result.reasons)


def test_a_crash_is_oversold_but_bearish_so_hold() -> None:
    closes = [100 + 0.2 * i for i in range(70)] + [114 - 3 * i for i in range(1, 11)]
    result = analyze("ITUB4", closes, source="test")
    assert result.signal == "hold"
    assert result.reasons[0].startswith("RSI ") and result.reasons[0].endswith("< 30: oversold")


def test_macd_crossovers_are_named() -> None:
    assert _macd_vote([-0.1, 0.2]) == (1, "MACD histogram turned positive (0.200): bullish crossover")
    assert _macd_vote([0.1, -0.2])[0] == -1
    assert "turned negative" in _macd_vote([0.1, -0.2])[1]


def test_too_little_history_names_what_was_needed_and_found() -> None:
    with pytest.raises(InsufficientHistory) as info:
        analyze("PETR4", rising(MIN_CLOSES - 1), source="test")
    assert (info.value.needed, info.value.found, info.value.ticker) == (50, 49, "PETR4")
    assert str(info.value) == "the analysis of PETR4 needs at least 50 closing prices, found 49"


def test_analyze_validates_the_ticker() -> None:
    with pytest.raises(InvalidTicker):
        analyze("PETROBRAS", rising(80), source="test")
