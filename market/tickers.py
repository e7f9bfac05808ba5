"""B3 ticker form and the usual liquid tickers the quick start tracks."""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from market.errors import InvalidTicker

# The platform's contract (handler payloads, API, store). A four-character root starting with a
# letter, then the one- or two-digit class: the root may hold a digit, as B3's own B3SA3 does.
# ASCII only: `\d` would take any script's digits (PETR٤, fullwidth PETR４) as new tickers.
TICKER_PATTERN = r"^[A-Z][A-Z0-9]{3}[0-9]{1,2}$"
_TICKER_RE = re.compile(r"[A-Z][A-Z0-9]{3}[0-9]{1,2}")

AssetType = Literal["stock", "unit", "etf", "fii", "bdr"]


class TickerInfo(NamedTuple):
    """A ticker the platform knows by default, with its display name and asset type."""

    ticker: str
    name: str
    type: AssetType


DEFAULT_TICKERS: tuple[TickerInfo, ...] = (
    TickerInfo("PETR4", "Petrobras PN", "stock"),
    TickerInfo("VALE3", "Vale ON", "stock"),
    TickerInfo("ITUB4", "Itaú Unibanco PN", "stock"),
    TickerInfo("BBDC4", "Bradesco PN", "stock"),
    TickerInfo("BBAS3", "Banco do Brasil ON", "stock"),
    TickerInfo("ABEV3", "Ambev ON", "stock"),
    TickerInfo("WEGE3", "WEG ON", "stock"),
    TickerInfo("GGBR4", "Gerdau PN", "stock"),
    TickerInfo("RENT3", "Localiza ON", "stock"),
    TickerInfo("SUZB3", "Suzano ON", "stock"),
    TickerInfo("PRIO3", "PetroRio ON", "stock"),
    TickerInfo("ELET3", "Eletrobras ON", "stock"),
    TickerInfo("B3SA3", "B3 ON", "stock"),
    TickerInfo("TAEE11", "Taesa Unit", "unit"),
    TickerInfo("BOVA11", "iShares Ibovespa ETF", "etf"),
    TickerInfo("HGLG11", "CSHG Logística FII", "fii"),
)

_KNOWN = {info.ticker: info for info in DEFAULT_TICKERS}


def validate_ticker(text: str) -> str:
    """The ticker in canonical form (stripped, upper case); InvalidTicker when it is not B3 form."""
    if not isinstance(text, str):
        raise InvalidTicker(repr(text), "expected a string, got %s" % type(text).__name__)
    ticker = text.strip().upper()
    if not ticker:
        raise InvalidTicker(text, "empty")
    if not text.isascii():  # before upper(): "ı".upper() is "I"
        raise InvalidTicker(text, "not a B3 ticker: ASCII letters and digits only")
    if not _TICKER_RE.fullmatch(ticker):
        raise InvalidTicker(text, "not a B3 ticker")
    return ticker


def is_valid_ticker(text: str) -> bool:
    """Whether `text` is already a canonical B3 ticker (no stripping, no case folding)."""
    return bool(_TICKER_RE.fullmatch(text))


def ticker_info(ticker: str) -> TickerInfo | None:
    """The default name and type of a well-known ticker, or None."""
    return _KNOWN.get(ticker)


def guess_type(ticker: str) -> AssetType | None:
    """The asset type a ticker's number suggests: 3 to 8 are share classes; 11 is ambiguous (unit, ETF, FII)."""
    info = _KNOWN.get(ticker)
    if info is not None:
        return info.type
    digits = ticker[4:]
    if digits in {"3", "4", "5", "6", "7", "8"}:
        return "stock"
    if digits in {"32", "33", "34", "35"}:
        return "bdr"
    return None


def is_placeholder(ticker: str) -> bool:
    """Whether a well-formed ticker is a made-up placeholder (four identical letters: XXXX3, ZZZZ11).

    No listed B3 ticker has that form, so the sample provider and the fake brapi server both
    treat these as unknown: tests and demos get a "ticker the provider does not know" for free.
    """
    letters = ticker[:4]
    return len(letters) == 4 and letters.isalpha() and len(set(letters)) == 1
