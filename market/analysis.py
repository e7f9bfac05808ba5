"""Technical indicators on daily closing prices (oldest first) and the buy/hold/sell signal they add up to.

Pure functions: series in, series out. A series result is aligned to the end of the input: its
last item belongs to the last close.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import statistics
import time
from collections.abc import Sequence
from typing import NamedTuple

from market.errors import InsufficientHistory
from market.models import AnalysisResult, Macd, Signal
from market.tickers import validate_ticker

TRADING_DAYS_PER_YEAR = 252
RSI_OVERSOLD = 30.0
RSI_OVERBOUGHT = 70.0
MIN_CLOSES = 50  # SMA50 is the longest look-back; MACD(12, 26, 9) needs 34, RSI14 needs 15.


class MacdSeries(NamedTuple):
    """MACD series, each aligned to the end of the input; `signal` and `histogram` are the shorter."""

    line: list[float]
    signal: list[float]
    histogram: list[float]


def _need(values: Sequence[float], needed: int, what: str) -> None:
    if len(values) < needed:
        raise InsufficientHistory(needed, len(values), what=what)


def _check_period(n: int, name: str = "n") -> None:
    if n < 1:
        raise ValueError("%s must be >= 1, got %d" % (name, n))


def sma(values: Sequence[float], n: int) -> list[float]:
    """Simple moving average: one mean per window of `n` values (len(values) - n + 1 items)."""
    _check_period(n)
    _need(values, n, "SMA%d" % n)
    # Each window summed exactly (fsum), so no rounding error drifts along a long series.
    return [math.fsum(values[i : i + n]) / n for i in range(len(values) - n + 1)]


def ema(values: Sequence[float], n: int) -> list[float]:
    """Exponential moving average, alpha 2/(n+1), seeded with the SMA of the first `n` values."""
    _check_period(n)
    _need(values, n, "EMA%d" % n)
    alpha = 2.0 / (n + 1)
    out = [math.fsum(values[:n]) / n]
    for value in values[n:]:
        out.append(alpha * value + (1 - alpha) * out[-1])
    return out


def _rsi_value(avg_gain: float, avg_loss: float) -> float:
    if avg_loss == 0:
        return 50.0 if avg_gain == 0 else 100.0
    return 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)


def rsi(values: Sequence[float], n: int = 14) -> list[float]:
    """Wilder's RSI: simple means of the first `n` gains and losses, then Wilder smoothing (len - n items)."""
    _check_period(n)
    _need(values, n + 1, "RSI%d" % n)
    changes = [b - a for a, b in itertools.pairwise(values)]
    avg_gain = math.fsum(max(c, 0.0) for c in changes[:n]) / n
    avg_loss = math.fsum(max(-c, 0.0) for c in changes[:n]) / n
    out = [_rsi_value(avg_gain, avg_loss)]
    for change in changes[n:]:
        avg_gain = (avg_gain * (n - 1) + max(change, 0.0)) / n
        avg_loss = (avg_loss * (n - 1) + max(-change, 0.0)) / n
        out.append(_rsi_value(avg_gain, avg_loss))
    return out


def macd(values: Sequence[float], fast: int = 12, slow: int = 26, signal: int = 9) -> MacdSeries:
    """MACD: line = EMA(fast) - EMA(slow), signal = EMA(signal) of the line, histogram = line - signal."""
    _check_period(fast, "fast")
    _check_period(signal, "signal")
    if slow <= fast:
        raise ValueError("slow must be > fast, got fast=%d slow=%d" % (fast, slow))
    _need(values, slow + signal - 1, "MACD(%d, %d, %d)" % (fast, slow, signal))
    fast_ema = ema(values, fast)[slow - fast :]
    slow_ema = ema(values, slow)
    line = [f - s for f, s in zip(fast_ema, slow_ema, strict=True)]
    signal_line = ema(line, signal)
    histogram = [m - s for m, s in zip(line[signal - 1 :], signal_line, strict=True)]
    return MacdSeries(line, signal_line, histogram)


def volatility(values: Sequence[float], window: int = 20) -> float:
    """Annualised volatility: sample stdev of the last `window` daily log returns times sqrt(252)."""
    if window < 2:
        raise ValueError("window must be >= 2, got %d" % window)
    _need(values, window + 1, "volatility over %d days" % window)
    recent = values[-(window + 1) :]
    if any(v <= 0 for v in recent):
        raise ValueError("volatility needs positive prices, got %r" % (min(recent),))
    returns = [math.log(b / a) for a, b in itertools.pairwise(recent)]
    return statistics.stdev(returns) * math.sqrt(TRADING_DAYS_PER_YEAR)


def _rsi_vote(value: float) -> tuple[int, str]:
    if value < RSI_OVERSOLD:
        return 1, "RSI %.1f < %g: oversold" % (value, RSI_OVERSOLD)
    if value > RSI_OVERBOUGHT:
        return -1, "RSI %.1f > %g: overbought" % (value, RSI_OVERBOUGHT)
    return 0, "RSI %.1f between %g and %g: neutral" % (value, RSI_OVERSOLD, RSI_OVERBOUGHT)


def _trend_vote(sma20: float, sma50: float) -> tuple[int, str]:
    if sma20 > sma50:
        return 1, "SMA20 %.2f above SMA50 %.2f: uptrend" % (sma20, sma50)
    if sma20 < sma50:
        return -1, "SMA20 %.2f below SMA50 %.2f: downtrend" % (sma20, sma50)
    return 0, "SMA20 equals SMA50 %.2f: no trend" % sma50


def _macd_vote(histogram: Sequence[float]) -> tuple[int, str]:
    now, before = histogram[-1], histogram[-2]
    if now > 0 >= before:
        return 1, "MACD histogram turned positive (%.3f): bullish crossover" % now
    if now < 0 <= before:
        return -1, "MACD histogram turned negative (%.3f): bearish crossover" % now
    if now > 0:
        return 1, "MACD above its signal (histogram %.3f): bullish momentum" % now
    if now < 0:
        return -1, "MACD below its signal (histogram %.3f): bearish momentum" % now
    return 0, "MACD on its signal line: no momentum"


def _signal(score: int) -> Signal:
    if score >= 2:
        return "buy"
    if score <= -2:
        return "sell"
    return "hold"


def analyze(
    ticker: str,
    closes: Sequence[float],
    *,
    source: str,
    last_session: dt.date | None = None,
    now: float | None = None,
) -> AnalysisResult:
    """The indicators of daily `closes` (oldest first, all from `source`, the newest of `last_session`)
    and a signal: buy when at least two of RSI, trend and MACD are bullish net of the bearish ones,
    sell for the mirror case, hold otherwise."""
    ticker = validate_ticker(ticker)
    if len(closes) < MIN_CLOSES:
        raise InsufficientHistory(MIN_CLOSES, len(closes), ticker=ticker)
    sma20, sma50 = sma(closes, 20)[-1], sma(closes, 50)[-1]
    rsi14 = rsi(closes, 14)[-1]
    series = macd(closes, 12, 26, 9)
    vol = volatility(closes, 20)
    votes = [_rsi_vote(rsi14), _trend_vote(sma20, sma50), _macd_vote(series.histogram)]
    score = sum(vote for vote, _ in votes)
    reasons = [reason for _, reason in votes]
    reasons.append("volatility %.1f%% a year over 20 days" % (vol * 100))
    return AnalysisResult(
        ticker=ticker,
        source=source,
        last_session=last_session,
        closes_used=len(closes),
        last_close=closes[-1],
        sma20=sma20,
        sma50=sma50,
        ema20=ema(closes, 20)[-1],
        rsi14=rsi14,
        macd=Macd(line=series.line[-1], signal=series.signal[-1], histogram=series.histogram[-1]),
        volatility=vol,
        signal=_signal(score),
        score=score,
        reasons=tuple(reasons),
        computed_at=time.time() if now is None else now,
    )
