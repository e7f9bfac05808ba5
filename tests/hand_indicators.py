"""The indicators of an analysis worked out by hand, independently of market/analysis.py, to check it against."""

from __future__ import annotations

import itertools
import math
import statistics


def _ema_series(values: list[float], n: int) -> list[float]:
    alpha = 2 / (n + 1)
    series = [sum(values[:n]) / n]
    for value in values[n:]:
        series.append(alpha * value + (1 - alpha) * series[-1])
    return series


def _rsi(values: list[float], n: int = 14) -> float:
    changes = [b - a for a, b in itertools.pairwise(values)]
    gain = sum(max(c, 0) for c in changes[:n]) / n
    loss = sum(max(-c, 0) for c in changes[:n]) / n
    for c in changes[n:]:
        gain = (gain * (n - 1) + max(c, 0)) / n
        loss = (loss * (n - 1) + max(-c, 0)) / n
    return 100.0 if loss == 0 else 100 - 100 / (1 + gain / loss)


def indicators(closes: list[float]) -> dict[str, float]:
    """SMA20, SMA50, EMA20, RSI14, MACD(12, 26, 9) and the 20-day annualised volatility of `closes`."""
    fast, slow = _ema_series(closes, 12), _ema_series(closes, 26)
    line = [f - s for f, s in zip(fast[14:], slow)]
    signal = _ema_series(line, 9)
    returns = [math.log(b / a) for a, b in zip(closes[-21:], closes[-20:])]
    return {
        "sma20": sum(closes[-20:]) / 20,
        "sma50": sum(closes[-50:]) / 50,
        "ema20": _ema_series(closes, 20)[-1],
        "rsi14": _rsi(closes),
        "macd.line": line[-1],
        "macd.signal": signal[-1],
        "macd.histogram": line[-1] - signal[-1],
        "volatility": statistics.stdev(returns) * math.sqrt(252),
    }


def of_result(result: dict[str, object]) -> dict[str, float]:
    """The same keys, read from an AnalysisResult dumped as JSON."""
    macd = result["macd"]
    assert isinstance(macd, dict)
    values = {key: result[key] for key in ("sma20", "sma50", "ema20", "rsi14", "volatility")}
    values.update({"macd.%s" % key: macd[key] for key in ("line", "signal", "histogram")})
    return {key: float(value) for key, value in values.items()}  # type: ignore[arg-type]
