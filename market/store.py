"""The market store on SQLite: tracked assets, daily bars, the quotes received, analysis requests and results.

Prices are daily bars, one per ticker, source and B3 session (market/bars.py): a quote updates its
session's bar, a provider's history writes whole bars. Sources stay apart: every read of bars or
quotes names the source it wants. The tables and the migration of older stores are in market/schema.py.

One file, WAL journal, one connection per thread; writes take SQLite's write lock up front
(BEGIN IMMEDIATE), so any number of threads and processes can share the file.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from market import calendar, schema
from market.bars import bar_of, merge
from market.errors import AnalysisNotFound
from market.models import AnalysisRequest, AnalysisResult, Asset, Bar, Quote
from market.providers.base import History
from market.tickers import DEFAULT_TICKERS, AssetType, TickerInfo, guess_type, ticker_info, validate_ticker

log = logging.getLogger(__name__)

_QUOTE_COLUMNS = (
    "ticker, source, time, price, change, change_percent, volume, name, currency, day_open, day_high, day_low"
)
_BAR_COLUMNS = "ticker, source, session, open, high, low, close, volume, time"
_REQUEST_COLUMNS = "id, ticker, status, requested_at, started_at, finished_at, error"


class Backfill(NamedTuple):
    """The last daily history fetched for a ticker from a source: in which session, how far back, how many bars."""

    session: dt.date
    range: str
    bars: int
    at: float


class MarketStore:
    """Assets, daily bars, quotes and analyses in one SQLite file, safe to share between threads and processes."""

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
            schema.prepare(db, str(self.path))

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

    # -- quotes and bars --------------------------------------------------------------------

    def add_quote(self, quote: Quote, *, track: bool = True) -> Bar:
        """Log the quote and update its session's bar (never a second bar for one session); returns the bar.

        With `track` (the default) the ticker becomes a tracked asset, as an update of an untracked
        ticker should; the quote's name fills a missing asset name.
        """
        with self._write() as db:
            bar = self._add_quote(db, quote)
            if track:
                self._track_quoted(db, quote)
        return bar

    def add_history(self, history: History, *, backfill_range: str | None = None, track: bool = True) -> Bar:
        """Store a provider's daily bars and its quote; returns the bar the quote updated.

        A bar of a session before the quote's is final: it replaces the stored one. The bar of the
        quote's session is merged, as a quote would be. With `backfill_range` the fetch is recorded
        (see `last_backfill`).
        """
        current = calendar.session_of(history.quote.time)
        with self._write() as db:
            for bar in history.bars:
                if bar.ticker != history.quote.ticker or bar.source != history.quote.source:
                    raise ValueError(
                        "add_history: a bar of %s from %s in the history of %s from %s"
                        % (bar.ticker, bar.source, history.quote.ticker, history.quote.source)
                    )
                self._put_bar(db, bar if bar.session < current else self._merged(db, bar))
            quoted = self._add_quote(db, history.quote)
            if backfill_range is not None:
                db.execute(
                    "INSERT OR REPLACE INTO backfills (ticker, source, session, range, bars, at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        history.quote.ticker,
                        history.quote.source,
                        calendar.session_of(self._clock()).isoformat(),
                        backfill_range,
                        len(history.bars),
                        self._clock(),
                    ),
                )
            if track:
                self._track_quoted(db, history.quote)
        return quoted

    def _add_quote(self, db: sqlite3.Connection, quote: Quote) -> Bar:
        db.execute(
            "INSERT OR REPLACE INTO quotes (%s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" % _QUOTE_COLUMNS,
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
                quote.day_open,
                quote.day_high,
                quote.day_low,
            ),
        )
        bar = self._merged(db, bar_of(quote))
        self._put_bar(db, bar)
        return bar

    def _track_quoted(self, db: sqlite3.Connection, quote: Quote) -> None:
        self._upsert_asset(db, quote.ticker, None, None)
        if quote.name:
            db.execute("UPDATE assets SET name = ? WHERE ticker = ? AND name IS NULL", (quote.name, quote.ticker))

    @staticmethod
    def _merged(db: sqlite3.Connection, bar: Bar) -> Bar:
        row = db.execute(
            "SELECT %s FROM bars WHERE ticker = ? AND source = ? AND session = ?" % _BAR_COLUMNS,
            (bar.ticker, bar.source, bar.session.isoformat()),
        ).fetchone()
        return merge(_bar(row), bar) if row is not None else bar

    @staticmethod
    def _put_bar(db: sqlite3.Connection, bar: Bar) -> None:
        db.execute(
            "INSERT OR REPLACE INTO bars (%s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)" % _BAR_COLUMNS,
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

    def latest_quote(self, ticker: str, source: str | None = None) -> Quote | None:
        """The newest quote received for the ticker (from `source`, or any), or None."""
        found = self.quotes(ticker, source, limit=1)
        return found[0] if found else None

    def quotes(self, ticker: str, source: str | None = None, limit: int = 200) -> list[Quote]:
        """The quotes received for the ticker (from `source`, or any), newest first, at most `limit`."""
        where, args = ("AND source = ?", [source]) if source is not None else ("", [])
        rows = self._db().execute(
            "SELECT %s FROM quotes WHERE ticker = ? %s ORDER BY time DESC LIMIT ?" % (_QUOTE_COLUMNS, where),
            (validate_ticker(ticker), *args, _positive(limit, "limit")),
        )
        return [_quote(row) for row in rows]

    def bars(self, ticker: str, source: str, limit: int = 200) -> list[Bar]:
        """The ticker's newest `limit` daily bars from `source`, oldest first."""
        rows = (
            self._db()
            .execute(
                "SELECT %s FROM bars WHERE ticker = ? AND source = ? ORDER BY session DESC LIMIT ?" % _BAR_COLUMNS,
                (validate_ticker(ticker), source, _positive(limit, "limit")),
            )
            .fetchall()
        )
        return [_bar(row) for row in reversed(rows)]

    def bar(self, ticker: str, source: str, session: dt.date) -> Bar | None:
        """The ticker's bar of one session from `source`, or None."""
        row = (
            self._db()
            .execute(
                "SELECT %s FROM bars WHERE ticker = ? AND source = ? AND session = ?" % _BAR_COLUMNS,
                (validate_ticker(ticker), source, session.isoformat()),
            )
            .fetchone()
        )
        return _bar(row) if row is not None else None

    def closes(self, ticker: str, source: str, limit: int = 200) -> list[float]:
        """The closes of the ticker's newest `limit` daily bars from `source`, oldest first."""
        return [bar.close for bar in self.bars(ticker, source, limit)]

    def count_bars(self, ticker: str, source: str, first: dt.date, last: dt.date) -> int:
        """How many bars from `source` the ticker has for the sessions `first` to `last`, both included."""
        row = (
            self._db()
            .execute(
                "SELECT COUNT(*) FROM bars WHERE ticker = ? AND source = ? AND session BETWEEN ? AND ?",
                (validate_ticker(ticker), source, first.isoformat(), last.isoformat()),
            )
            .fetchone()
        )
        return int(row[0])

    def last_backfill(self, ticker: str, source: str) -> Backfill | None:
        """The last daily history fetched for the ticker from `source` (add_history's `backfill_range`), or None."""
        row = (
            self._db()
            .execute(
                "SELECT session, range, bars, at FROM backfills WHERE ticker = ? AND source = ?",
                (validate_ticker(ticker), source),
            )
            .fetchone()
        )
        if row is None:
            return None
        return Backfill(dt.date.fromisoformat(row["session"]), row["range"], row["bars"], row["at"])

    def sources(self) -> dict[str, int]:
        """Each source the stored bars come from, with how many tickers have bars from it."""
        rows = self._db().execute("SELECT source, COUNT(DISTINCT ticker) FROM bars GROUP BY source ORDER BY source")
        return {row[0]: int(row[1]) for row in rows}

    def seed_closes(
        self, ticker: str, closes: Sequence[float], *, source: str, last_session: dt.date | None = None
    ) -> list[Bar]:
        """Store `closes` (oldest first) as flat bars of consecutive trading days ending at `last_session`
        (default: the current session); returns them. For demos and tests. The ticker is tracked."""
        ticker = validate_ticker(ticker)
        last = last_session if last_session is not None else calendar.session_of(self._clock())
        sessions = calendar.last_trading_days(len(closes), last) if closes else []
        bars = [
            Bar(
                ticker=ticker,
                session=session,
                open=price,
                high=price,
                low=price,
                close=price,
                time=calendar.at(session, calendar.SESSION_CLOSE),
                source=source,
            )
            for session, price in zip(sessions, closes, strict=True)
        ]
        with self._write() as db:
            self._upsert_asset(db, ticker, None, None)
            for bar in bars:
                self._put_bar(db, bar)
        return bars

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

    def release(self, request_id: str) -> None:
        """Return a running request to pending: it could not be analysed now and will be claimed again."""
        with self._write() as db:
            db.execute(
                "UPDATE analysis_requests SET status = 'pending', started_at = NULL"
                " WHERE id = ? AND status = 'running'",
                (request_id,),
            )

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
    return Quote(**{key: row[key] for key in row.keys()})  # noqa: SIM118 (a Row iterates its values)


def _bar(row: sqlite3.Row) -> Bar:
    return Bar(**{key: row[key] for key in row.keys()})  # noqa: SIM118 (a Row iterates its values)


def _request(row: sqlite3.Row) -> AnalysisRequest:
    return AnalysisRequest(**{key: row[key] for key in row.keys()})  # noqa: SIM118 (a Row iterates its values)
