"""The asset and price store on SQLite: tracked assets, quote history, analysis requests and results.

One file, WAL journal, one connection per thread; writes take SQLite's write lock up front
(BEGIN IMMEDIATE), so any number of threads and processes can share the file.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from market.errors import AnalysisNotFound
from market.models import AnalysisRequest, AnalysisResult, Asset, Quote
from market.tickers import DEFAULT_TICKERS, AssetType, TickerInfo, guess_type, ticker_info, validate_ticker

log = logging.getLogger(__name__)

DAY_S = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    ticker TEXT PRIMARY KEY,
    name TEXT,
    type TEXT,
    active INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quotes (
    ticker TEXT NOT NULL,
    time REAL NOT NULL,
    price REAL NOT NULL,
    change REAL,
    change_percent REAL,
    volume INTEGER,
    name TEXT,
    currency TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (ticker, time)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS analysis_requests (
    id TEXT PRIMARY KEY,
    ticker TEXT NOT NULL,
    status TEXT NOT NULL,
    requested_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS analysis_requests_by_status ON analysis_requests (status, requested_at);
CREATE TABLE IF NOT EXISTS analysis_results (
    request_id TEXT PRIMARY KEY REFERENCES analysis_requests (id) ON DELETE CASCADE,
    ticker TEXT NOT NULL,
    signal TEXT NOT NULL,
    computed_at REAL NOT NULL,
    body TEXT NOT NULL
);
"""

_QUOTE_COLUMNS = "ticker, time, price, change, change_percent, volume, name, currency, source"
_REQUEST_COLUMNS = "id, ticker, status, requested_at, started_at, finished_at, error"


class MarketStore:
    """Assets, quotes and analyses in one SQLite file, safe to share between threads and processes."""

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 30.0, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        with self._write() as db:
            # Statement by statement: executescript() would commit the transaction it runs in.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    # -- connections and transactions ------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            return db
        if self._closed:
            raise RuntimeError("MarketStore(%s) is closed" % self.path)
        # Autocommit mode: every transaction below is explicit. check_same_thread=False only so that
        # close() may close every thread's connection; each connection is used by its own thread.
        db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = %d" % int(self._busy_timeout_s * 1000))
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        with self._lock:
            self._connections.append(db)
        self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock before reading, so read-then-update steps are atomic
        # across threads and processes, and a lock upgrade can never deadlock.
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()
        self._local = threading.local()

    def __enter__(self) -> MarketStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- assets ----------------------------------------------------------------------------

    def track(self, ticker: str, name: str | None = None, type: AssetType | None = None) -> Asset:
        """Add the ticker to the tracked assets, or reactivate it; a given name or type replaces the stored one."""
        ticker = validate_ticker(ticker)
        with self._write() as db:
            self._upsert_asset(db, ticker, name, type)
            row = db.execute("SELECT * FROM assets WHERE ticker = ?", (ticker,)).fetchone()
        return _asset(row)

    def untrack(self, ticker: str) -> bool:
        """Mark the asset inactive (its history stays); False when it was not tracked."""
        ticker = validate_ticker(ticker)
        with self._write() as db:
            cursor = db.execute(
                "UPDATE assets SET active = 0, updated_at = ? WHERE ticker = ?", (self._clock(), ticker)
            )
        return cursor.rowcount > 0

    def _upsert_asset(self, db: sqlite3.Connection, ticker: str, name: str | None, type: AssetType | None) -> bool:
        """Insert or reactivate; True when the asset is new."""
        known = ticker_info(ticker)
        now = self._clock()
        exists = db.execute("SELECT 1 FROM assets WHERE ticker = ?", (ticker,)).fetchone() is not None
        if exists:
            db.execute(
                "UPDATE assets SET name = COALESCE(?, name), type = COALESCE(?, type), active = 1,"
                " updated_at = ? WHERE ticker = ?",
                (name, type, now, ticker),
            )
            return False
        db.execute(
            "INSERT INTO assets (ticker, name, type, active, created_at, updated_at) VALUES (?, ?, ?, 1, ?, ?)",
            (
                ticker,
                name if name is not None else (known.name if known else None),
                type if type is not None else guess_type(ticker),
                now,
                now,
            ),
        )
        return True

    def assets(self, active_only: bool = True) -> list[Asset]:
        """Tracked assets in ticker order; all of them, inactive included, with active_only=False."""
        sql = "SELECT * FROM assets" + (" WHERE active = 1" if active_only else "") + " ORDER BY ticker"
        return [_asset(row) for row in self._db().execute(sql)]

    def asset(self, ticker: str) -> Asset | None:
        """One asset, active or not, or None when it was never tracked."""
        row = self._db().execute("SELECT * FROM assets WHERE ticker = ?", (validate_ticker(ticker),)).fetchone()
        return _asset(row) if row is not None else None

    def seed(self, tickers: Iterable[TickerInfo | str] = DEFAULT_TICKERS) -> int:
        """Track the usual B3 tickers (idempotent); returns how many were not tracked before."""
        added = 0
        with self._write() as db:
            for item in tickers:
                if isinstance(item, TickerInfo):
                    ticker, name, type_ = validate_ticker(item.ticker), item.name, item.type
                else:
                    ticker, name, type_ = validate_ticker(item), None, None
                added += self._upsert_asset(db, ticker, name, type_)
        return added

    # -- quotes ----------------------------------------------------------------------------

    def add_quote(self, quote: Quote, *, track: bool = True) -> None:
        """Store a quote in the ticker's history (one per ticker and time: a repeat replaces it).

        With `track` (the default) the ticker becomes a tracked asset, as an update of an untracked
        ticker should; the quote's name fills a missing asset name.
        """
        with self._write() as db:
            self._insert_quote(db, quote)
            if track:
                self._upsert_asset(db, quote.ticker, None, None)
                if quote.name:
                    db.execute(
                        "UPDATE assets SET name = ? WHERE ticker = ? AND name IS NULL", (quote.name, quote.ticker)
                    )

    @staticmethod
    def _insert_quote(db: sqlite3.Connection, quote: Quote) -> None:
        db.execute(
            "INSERT OR REPLACE INTO quotes (%s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)" % _QUOTE_COLUMNS,
            (
                quote.ticker,
                quote.time,
                quote.price,
                quote.change,
                quote.change_percent,
                quote.volume,
                quote.name,
                quote.currency,
                quote.source,
            ),
        )

    def latest_quote(self, ticker: str) -> Quote | None:
        """The newest stored quote of the ticker, or None."""
        found = self.history(ticker, limit=1)
        return found[0] if found else None

    def history(self, ticker: str, limit: int = 200) -> list[Quote]:
        """The ticker's stored quotes, newest first, at most `limit`."""
        rows = self._db().execute(
            "SELECT %s FROM quotes WHERE ticker = ? ORDER BY time DESC LIMIT ?" % _QUOTE_COLUMNS,
            (validate_ticker(ticker), _positive(limit, "limit")),
        )
        return [_quote(row) for row in rows]

    def closes(self, ticker: str, limit: int = 200) -> list[float]:
        """The ticker's last `limit` prices, oldest first: the input of the analysis functions."""
        rows = (
            self._db()
            .execute(
                "SELECT price FROM quotes WHERE ticker = ? ORDER BY time DESC LIMIT ?",
                (validate_ticker(ticker), _positive(limit, "limit")),
            )
            .fetchall()
        )
        return [float(row[0]) for row in reversed(rows)]

    def seed_history(
        self,
        ticker: str,
        closes: Sequence[float],
        start_time: float,
        *,
        step_s: float = DAY_S,
        source: str = "seed",
    ) -> int:
        """Store `closes` (oldest first) as one quote every `step_s` from `start_time`; returns how many.

        For demos and tests: gives an analysis a history to work on. The ticker is tracked.
        """
        ticker = validate_ticker(ticker)
        previous: float | None = None
        with self._write() as db:
            self._upsert_asset(db, ticker, None, None)
            for i, price in enumerate(closes):
                change = None if previous is None else price - previous
                percent = None if previous is None or change is None else change / previous * 100
                quote = Quote(
                    ticker=ticker,
                    price=price,
                    change=change,
                    change_percent=percent,
                    time=start_time + i * step_s,
                    source=source,
                )
                self._insert_quote(db, quote)
                previous = price
        return len(closes)

    # -- analyses --------------------------------------------------------------------------

    def request_analysis(self, ticker: str) -> AnalysisRequest:
        """A new pending analysis request for the ticker."""
        request = AnalysisRequest(
            id=uuid.uuid4().hex, ticker=validate_ticker(ticker), status="pending", requested_at=self._clock()
        )
        with self._write() as db:
            db.execute(
                "INSERT INTO analysis_requests (id, ticker, status, requested_at) VALUES (?, ?, ?, ?)",
                (request.id, request.ticker, request.status, request.requested_at),
            )
        return request

    def claim_pending(self, limit: int = 10) -> list[AnalysisRequest]:
        """Move up to `limit` pending requests (oldest first) to running and return them.

        Atomic across threads and processes: two callers never claim the same request.
        """
        now = self._clock()
        with self._write() as db:
            ids = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM analysis_requests WHERE status = 'pending' ORDER BY requested_at, id LIMIT ?",
                    (_positive(limit, "limit"),),
                )
            ]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            db.execute(
                "UPDATE analysis_requests SET status = 'running', started_at = ? WHERE id IN (%s)" % marks,
                (now, *ids),
            )
            rows = db.execute(
                "SELECT %s FROM analysis_requests WHERE id IN (%s) ORDER BY requested_at, id"
                % (_REQUEST_COLUMNS, marks),
                ids,
            ).fetchall()
        return [_request(row) for row in rows]

    def requeue_stale(self, older_than_s: float) -> int:
        """Return running requests claimed more than `older_than_s` ago (their runner died) to pending."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE analysis_requests SET status = 'pending', started_at = NULL"
                " WHERE status = 'running' AND started_at < ?",
                (self._clock() - older_than_s,),
            )
        if cursor.rowcount:
            log.warning("returned %d stale running analysis request(s) to pending", cursor.rowcount)
        return cursor.rowcount

    def finish_analysis(
        self, request_id: str, result: AnalysisResult | None, error: str | None = None
    ) -> AnalysisRequest:
        """Complete the request with its result, or fail it with `error` (exactly one of the two)."""
        if (result is None) == (error is None):
            raise ValueError(
                "finish_analysis(%r): give either a result or an error, got result=%s error=%r"
                % (request_id, "set" if result is not None else "None", error)
            )
        now = self._clock()
        with self._write() as db:
            if db.execute("SELECT 1 FROM analysis_requests WHERE id = ?", (request_id,)).fetchone() is None:
                raise AnalysisNotFound(request_id)
            if result is not None:
                db.execute(
                    "INSERT OR REPLACE INTO analysis_results (request_id, ticker, signal, computed_at, body)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (request_id, result.ticker, result.signal, result.computed_at, result.model_dump_json()),
                )
            else:
                db.execute("DELETE FROM analysis_results WHERE request_id = ?", (request_id,))
            db.execute(
                "UPDATE analysis_requests SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                ("completed" if result is not None else "failed", now, error, request_id),
            )
            row = db.execute(
                "SELECT %s FROM analysis_requests WHERE id = ?" % _REQUEST_COLUMNS, (request_id,)
            ).fetchone()
        return _request(row)

    def analysis(self, request_id: str) -> tuple[AnalysisRequest, AnalysisResult | None] | None:
        """The request and, once completed, its result; None for an unknown id."""
        db = self._db()
        row = db.execute("SELECT %s FROM analysis_requests WHERE id = ?" % _REQUEST_COLUMNS, (request_id,)).fetchone()
        if row is None:
            return None
        body = db.execute("SELECT body FROM analysis_results WHERE request_id = ?", (request_id,)).fetchone()
        result = AnalysisResult.model_validate_json(body[0]) if body is not None else None
        return _request(row), result

    def analyses(self, ticker: str | None = None, limit: int = 50) -> list[AnalysisRequest]:
        """The newest analysis requests, of one ticker or all."""
        where, args = ("WHERE ticker = ?", [validate_ticker(ticker)]) if ticker else ("", [])
        rows = self._db().execute(
            "SELECT %s FROM analysis_requests %s ORDER BY requested_at DESC, id LIMIT ?" % (_REQUEST_COLUMNS, where),
            (*args, _positive(limit, "limit")),
        )
        return [_request(row) for row in rows]


def _positive(value: int, name: str) -> int:
    if value < 1:
        raise ValueError("%s must be >= 1, got %d" % (name, value))
    return value


def _asset(row: sqlite3.Row) -> Asset:
    return Asset(
        ticker=row["ticker"],
        name=row["name"],
        type=row["type"],
        active=bool(row["active"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _quote(row: sqlite3.Row) -> Quote:
    return Quote(**{key: row[key] for key in row.keys()})


def _request(row: sqlite3.Row) -> AnalysisRequest:
    return AnalysisRequest(**{key: row[key] for key in row.keys()})
