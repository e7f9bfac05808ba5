"""The market store's tables, and the migration of a store written by an older b3-jobs.

The version is SQLite's `user_version`. Version 0 (before daily bars) kept every quote in one
history that the analyses read as if it were daily closes; version 1 keeps one bar per ticker,
source and B3 session, and the quotes apart. A store opened by this code migrates at once, inside
the transaction that opens it, so two processes opening it together migrate it once.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable

from market.bars import bar_of, merge
from market.errors import StoreVersionError
from market.models import Bar, Quote

log = logging.getLogger(__name__)

VERSION = 1

# Tables version 1 keeps as version 0 had them
_KEPT = """
CREATE TABLE assets (
    ticker TEXT PRIMARY KEY,
    name TEXT,
    type TEXT,
    active INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE analysis_requests (
    id TEXT PRIMARY KEY,
    ticker TEXT NOT NULL,
    status TEXT NOT NULL,
    requested_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT
);
CREATE INDEX analysis_requests_by_status ON analysis_requests (status, requested_at);
"""

# Tables new or rebuilt in version 1
_NEW = """
-- every quote received: the intraday log, whose newest row is the latest quote
CREATE TABLE quotes (
    ticker TEXT NOT NULL,
    source TEXT NOT NULL,
    time REAL NOT NULL,
    price REAL NOT NULL,
    change REAL,
    change_percent REAL,
    volume INTEGER,
    name TEXT,
    currency TEXT NOT NULL,
    day_open REAL,
    day_high REAL,
    day_low REAL,
    PRIMARY KEY (ticker, source, time)
) WITHOUT ROWID;
-- one bar per ticker, source and B3 session (ISO date in America/Sao_Paulo)
CREATE TABLE bars (
    ticker TEXT NOT NULL,
    source TEXT NOT NULL,
    session TEXT NOT NULL,
    open REAL NOT NULL,
    high REAL NOT NULL,
    low REAL NOT NULL,
    close REAL NOT NULL,
    volume INTEGER,
    time REAL NOT NULL,
    PRIMARY KEY (ticker, source, session)
) WITHOUT ROWID;
-- the last history fetched per ticker and source, so a ticker is backfilled at most once a session
CREATE TABLE backfills (
    ticker TEXT NOT NULL,
    source TEXT NOT NULL,
    session TEXT NOT NULL,
    range TEXT NOT NULL,
    bars INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (ticker, source)
) WITHOUT ROWID;
-- the body is the AnalysisResult as JSON, its source included
CREATE TABLE analysis_results (
    request_id TEXT PRIMARY KEY REFERENCES analysis_requests (id) ON DELETE CASCADE,
    ticker TEXT NOT NULL,
    signal TEXT NOT NULL,
    computed_at REAL NOT NULL,
    body TEXT NOT NULL
);
"""


def prepare(db: sqlite3.Connection, where: str) -> None:
    """Create the tables of a new store or migrate an older one; inside the caller's write transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == VERSION:
        return
    if version > VERSION:
        raise StoreVersionError(where, version, VERSION)
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'assets'").fetchone() is None:
        _execute(db, _KEPT + _NEW)
    else:
        _migrate_0_to_1(db, where)
    db.execute("PRAGMA user_version = %d" % VERSION)


def _execute(db: sqlite3.Connection, script: str) -> None:
    # Statement by statement: executescript() would commit the transaction it runs in.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate_0_to_1(db: sqlite3.Connection, where: str) -> None:
    """Version 0 → 1: the quote history becomes the quote log and one bar per ticker, source and session;
    each stored analysis result is labelled with the source of the quotes it could have read."""
    db.execute("ALTER TABLE quotes RENAME TO quotes_v0")
    db.execute("ALTER TABLE analysis_results RENAME TO analysis_results_v0")
    _execute(db, _NEW)
    quotes = [_quote_v0(row) for row in db.execute("SELECT * FROM quotes_v0 ORDER BY ticker, source, time")]
    for quote in quotes:
        db.execute(
            "INSERT INTO quotes (ticker, source, time, price, change, change_percent, volume, name, currency)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                quote.ticker,
                quote.source,
                quote.time,
                quote.price,
                quote.change,
                quote.change_percent,
                quote.volume,
                quote.name,
                quote.currency,
            ),
        )
    bars = _bars_of(quotes)
    for bar in bars:
        db.execute(
            "INSERT INTO bars (ticker, source, session, open, high, low, close, volume, time)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                bar.ticker,
                bar.source,
                bar.session.isoformat(),
                bar.open,
                bar.high,
                bar.low,
                bar.close,
                bar.volume,
                bar.time,
            ),
        )
    results = db.execute("SELECT * FROM analysis_results_v0").fetchall()
    for row in results:
        db.execute(
            "INSERT INTO analysis_results (request_id, ticker, signal, computed_at, body) VALUES (?, ?, ?, ?, ?)",
            (
                row["request_id"],
                row["ticker"],
                row["signal"],
                row["computed_at"],
                _labelled(row["body"], _sources(quotes, row["ticker"])),
            ),
        )
    db.execute("DROP TABLE quotes_v0")
    db.execute("DROP TABLE analysis_results_v0")
    log.warning(
        "market store %s migrated to version %d: %d quotes became %d daily bars; %d analysis results labelled"
        " with their source",
        where,
        VERSION,
        len(quotes),
        len(bars),
        len(results),
    )


def _quote_v0(row: sqlite3.Row) -> Quote:
    return Quote(**{key: row[key] for key in row.keys()})  # noqa: SIM118 (a Row iterates its values)


def _bars_of(quotes: Iterable[Quote]) -> list[Bar]:
    """One bar per ticker, source and session from quotes in (ticker, source, time) order."""
    bars: dict[tuple[str, str, str], Bar] = {}
    for quote in quotes:
        bar = bar_of(quote)
        key = (bar.ticker, bar.source, bar.session.isoformat())
        bars[key] = merge(bars[key], bar) if key in bars else bar
    return list(bars.values())


def _sources(quotes: Iterable[Quote], ticker: str) -> str:
    found = sorted({q.source for q in quotes if q.ticker == ticker})
    if not found:
        return "unknown"
    return found[0] if len(found) == 1 else "mixed (%s)" % ", ".join(found)


def _labelled(body: str, source: str) -> str:
    data = json.loads(body)
    data.setdefault("source", source)
    return json.dumps(data)
