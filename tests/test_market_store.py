"""The SQLite market store: assets, daily bars and the quote log, sources apart, analysis requests claimed
exactly once, and the migration of a store written before daily bars."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from market import calendar
from market.analysis import analyze
from market.errors import AnalysisNotFound, InvalidTicker, StoreVersionError
from market.models import Bar, Quote
from market.providers.base import History
from market.seed import seed_defaults
from market.store import MarketStore
from market.tickers import DEFAULT_TICKERS

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MarketStore]:
    with MarketStore(tmp_path / "market.sqlite3", clock=clock) as s:
        yield s


def quote(ticker: str, price: float, at: float, source: str = "test", volume: int = 100) -> Quote:
    return Quote(
        ticker=ticker, name=None, price=price, change=0.5, change_percent=1.0, volume=volume, time=at, source=source
    )


def sp(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> float:
    """An epoch second given as São Paulo wall-clock time."""
    return dt.datetime(year, month, day, hour, minute, tzinfo=calendar.SAO_PAULO).timestamp()


TUESDAY = dt.date(2026, 3, 10)


def test_the_file_uses_wal(store: MarketStore) -> None:
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_track_adds_known_names_and_types_and_reactivates(store: MarketStore, clock: Clock) -> None:
    # Given a tracked ticker, written in lower case
    asset = store.track(" petr4 ")
    assert (asset.ticker, asset.name, asset.type, asset.active) == ("PETR4", "Petrobras PN", "stock", True)
    assert asset.created_at == clock.now

    # When it is untracked, then tracked again with a new name
    assert store.untrack("PETR4")
    assert store.assets() == []
    clock.now += 60
    again = store.track("PETR4", name="Petróleo Brasileiro")

    # Then it is active, renamed, and keeps its creation time
    assert (again.name, again.active, again.created_at, again.updated_at) == (
        "Petróleo Brasileiro",
        True,
        asset.created_at,
        clock.now,
    )
    assert store.asset("PETR4") == again
    assert store.asset("VALE3") is None


def test_track_refuses_what_is_not_a_ticker(store: MarketStore) -> None:
    with pytest.raises(InvalidTicker, match="'PETROBRAS'"):
        store.track("PETROBRAS")


def test_seed_tracks_the_default_tickers_once(store: MarketStore) -> None:
    assert store.seed() == len(DEFAULT_TICKERS)
    assert store.seed() == 0
    assets = store.assets()
    assert [a.ticker for a in assets] == sorted(t.ticker for t in DEFAULT_TICKERS)
    assert {a.type for a in assets} >= {"stock", "etf", "fii", "unit"}


def test_assets_lists_inactive_ones_on_request(store: MarketStore) -> None:
    store.seed(["PETR4", "VALE3"])
    store.untrack("VALE3")
    assert [a.ticker for a in store.assets()] == ["PETR4"]
    assert [a.ticker for a in store.assets(active_only=False)] == ["PETR4", "VALE3"]


def test_ten_quotes_in_one_session_make_one_bar(store: MarketStore) -> None:
    # Given ten quotes of PETR4 during Tuesday's session, prices up and down, the volume growing
    prices = [38.0, 38.4, 37.6, 38.9, 38.2, 37.1, 37.9, 38.6, 38.1, 38.3]
    for i, price in enumerate(prices):
        bar = store.add_quote(quote("PETR4", price, at=sp(2026, 3, 10, 10, 5) + 1800 * i, volume=1000 * (i + 1)))
    # Then the session has one bar: the first price opens it, the last closes it, high and low cover all
    [stored] = store.bars("PETR4", "test")
    assert stored == bar
    assert (stored.session, stored.open, stored.close) == (TUESDAY, 38.0, 38.3)
    assert (stored.high, stored.low, stored.volume) == (38.9, 37.1, 10_000)
    # And every quote is in the log, the newest first
    assert [q.price for q in store.quotes("PETR4")] == prices[::-1]
    latest = store.latest_quote("PETR4")
    assert latest is not None and latest.price == 38.3
    assert store.closes("PETR4", "test") == [38.3]


def test_a_late_quote_does_not_move_the_close_back(store: MarketStore) -> None:
    store.add_quote(quote("PETR4", 38.0, at=sp(2026, 3, 10, 15)))
    store.add_quote(quote("PETR4", 36.0, at=sp(2026, 3, 10, 11)))  # arrives later, was taken earlier
    [bar] = store.bars("PETR4", "test")
    assert (bar.open, bar.close, bar.low, bar.high) == (36.0, 38.0, 36.0, 38.0)


def test_a_quote_belongs_to_the_last_session_that_had_opened(store: MarketStore) -> None:
    # Friday 2026-02-13 is followed by Carnival (Monday 16 and Tuesday 17); Ash Wednesday trades
    store.add_quote(quote("VALE3", 60.0, at=sp(2026, 2, 13, 16)))  # Friday, in session
    store.add_quote(quote("VALE3", 60.5, at=sp(2026, 2, 14, 2)))  # Saturday 02:00
    store.add_quote(quote("VALE3", 61.0, at=sp(2026, 2, 17, 12)))  # Carnival Tuesday
    store.add_quote(quote("VALE3", 61.5, at=sp(2026, 2, 18, 9, 59)))  # Ash Wednesday, before the open
    store.add_quote(quote("VALE3", 62.0, at=sp(2026, 2, 18, 13)))  # Ash Wednesday, in session
    assert [(b.session, b.close) for b in store.bars("VALE3", "test")] == [
        (dt.date(2026, 2, 13), 61.5),
        (dt.date(2026, 2, 18), 62.0),
    ]


def test_sources_are_kept_apart(store: MarketStore) -> None:
    store.add_quote(quote("PETR4", 38.0, at=sp(2026, 3, 10, 15), source="sample"))
    store.add_quote(quote("PETR4", 40.0, at=sp(2026, 3, 10, 15, 1), source="brapi"))
    assert store.closes("PETR4", "brapi") == [40.0] and store.closes("PETR4", "sample") == [38.0]
    assert store.closes("PETR4", "other") == []
    assert [(q.source, q.price) for q in store.quotes("PETR4")] == [("brapi", 40.0), ("sample", 38.0)]
    latest = store.latest_quote("PETR4", "sample")
    assert latest is not None and latest.price == 38.0
    assert store.sources() == {"brapi": 1, "sample": 1}


def test_a_history_replaces_past_bars_and_merges_the_current_one(store: MarketStore, clock: Clock) -> None:
    # Given bars built from quotes on Monday and Tuesday
    clock.now = sp(2026, 3, 10, 15)
    store.add_quote(quote("PETR4", 30.0, at=sp(2026, 3, 9, 16)))
    store.add_quote(quote("PETR4", 39.5, at=sp(2026, 3, 10, 11)))
    # When the provider's history arrives with Monday final and Tuesday so far, and a quote at 15:00
    history = History(
        quote("PETR4", 38.7, at=sp(2026, 3, 10, 15)),
        [
            flat("PETR4", dt.date(2026, 3, 6), 36.0),
            flat("PETR4", dt.date(2026, 3, 9), 37.0),
            Bar(
                ticker="PETR4",
                session=TUESDAY,
                open=37.5,
                high=38.8,
                low=37.4,
                close=38.6,
                volume=5000,
                time=sp(2026, 3, 10, 14, 59),
                source="test",
            ),
        ],
    )
    bar = store.add_history(history, backfill_range="3mo")
    # Then Monday is the provider's; Tuesday keeps the open seen first, widens, and closes at the quote
    bars = {b.session: b for b in store.bars("PETR4", "test")}
    assert sorted(bars) == [dt.date(2026, 3, 6), dt.date(2026, 3, 9), TUESDAY]
    assert bars[dt.date(2026, 3, 9)].close == 37.0
    assert bar == bars[TUESDAY]
    assert (bar.open, bar.high, bar.low, bar.close) == (39.5, 39.5, 37.4, 38.7)
    # And the fetch is recorded for the current session
    backfill = store.last_backfill("PETR4", "test")
    assert backfill is not None and (backfill.session, backfill.range, backfill.bars) == (TUESDAY, "3mo", 3)


def flat(ticker: str, session: dt.date, price: float, source: str = "test") -> Bar:
    return Bar(
        ticker=ticker,
        session=session,
        open=price,
        high=price,
        low=price,
        close=price,
        time=calendar.at(session, calendar.SESSION_CLOSE),
        source=source,
    )


def test_a_bar_must_hold_its_open_and_close_between_low_and_high() -> None:
    with pytest.raises(ValueError, match="expected low <= open, close <= high"):
        Bar(ticker="PETR4", session=TUESDAY, open=10, high=11, low=9, close=12, time=0.0, source="test")


def test_seed_closes_makes_flat_bars_of_consecutive_trading_days(store: MarketStore) -> None:
    # Ash Wednesday 2026-02-18 is three sessions after Thursday the 12th: Friday, then Carnival
    bars = store.seed_closes("BOVA11", [100.0, 102.0, 101.0], source="test", last_session=dt.date(2026, 2, 18))
    assert [b.session for b in bars] == [dt.date(2026, 2, 12), dt.date(2026, 2, 13), dt.date(2026, 2, 18)]
    assert store.closes("BOVA11", "test") == [100.0, 102.0, 101.0]
    assert store.count_bars("BOVA11", "test", dt.date(2026, 2, 13), dt.date(2026, 2, 18)) == 2
    assert store.asset("BOVA11") is not None


def test_a_quote_for_an_untracked_ticker_tracks_it(store: MarketStore) -> None:
    store.add_quote(quote("TAEE11", 35.0, at=1.0).model_copy(update={"name": "TAESA"}))
    asset = store.asset("TAEE11")
    assert asset is not None and asset.active and asset.name == "Taesa Unit"  # the known name wins
    store.add_quote(quote("KLBN11", 20.0, at=1.0).model_copy(update={"name": "Klabin Unit"}))
    klabin = store.asset("KLBN11")
    assert klabin is not None and klabin.name == "Klabin Unit"


def test_an_analysis_goes_from_pending_to_completed(store: MarketStore, clock: Clock) -> None:
    request = store.request_analysis("PETR4")
    assert request.status == "pending" and request.requested_at == clock.now

    clock.now += 5
    [claimed] = store.claim_pending(10)
    assert (claimed.id, claimed.status, claimed.started_at) == (request.id, "running", clock.now)
    assert store.claim_pending(10) == []

    result = analyze("PETR4", [100 + i * 0.1 for i in range(60)], source="test", now=clock.now)
    done = store.finish_analysis(request.id, result, None)
    assert done.status == "completed" and done.finished_at == clock.now

    found = store.analysis(request.id)
    assert found is not None
    assert found[0] == done and found[1] == result


def test_a_failed_analysis_keeps_its_reason(store: MarketStore) -> None:
    request = store.request_analysis("VALE3")
    store.claim_pending(1)
    store.finish_analysis(request.id, None, "the analysis of VALE3 needs at least 50 closing prices, found 3")
    found = store.analysis(request.id)
    assert found is not None
    assert found[0].status == "failed" and found[1] is None
    assert found[0].error is not None and "found 3" in found[0].error


def test_finish_analysis_checks_its_arguments(store: MarketStore) -> None:
    with pytest.raises(AnalysisNotFound):
        store.finish_analysis("nope", None, "boom")
    request = store.request_analysis("VALE3")
    with pytest.raises(ValueError, match="either a result or an error"):
        store.finish_analysis(request.id, None, None)
    assert store.analysis("nope") is None


def test_claim_pending_takes_the_oldest_first(store: MarketStore, clock: Clock) -> None:
    ids = []
    for ticker in ["PETR4", "VALE3", "ITUB4"]:
        ids.append(store.request_analysis(ticker).id)
        clock.now += 1
    assert [r.id for r in store.claim_pending(2)] == ids[:2]
    assert [r.id for r in store.claim_pending(2)] == ids[2:]


def test_a_released_request_is_pending_again(store: MarketStore) -> None:
    request = store.request_analysis("PETR4")
    store.claim_pending(1)
    store.release(request.id)
    [again] = store.claim_pending(1)
    assert again.id == request.id


def test_stale_running_requests_return_to_pending(store: MarketStore, clock: Clock) -> None:
    request = store.request_analysis("PETR4")
    store.claim_pending(1)
    clock.now += 30
    assert store.requeue_stale(older_than_s=60) == 0
    clock.now += 60
    assert store.requeue_stale(older_than_s=60) == 1
    assert [r.id for r in store.claim_pending(1)] == [request.id]


def test_two_threads_never_claim_the_same_request(tmp_path: Path) -> None:
    # Given 300 pending requests and two stores on the same file (as two processes would have)
    path = tmp_path / "market.sqlite3"
    first, second = MarketStore(path), MarketStore(path)
    expected = {first.request_analysis("PETR4").id for _ in range(300)}
    claimed: list[list[str]] = [[], [], [], []]

    def runner(store: MarketStore, out: list[str]) -> None:
        while batch := store.claim_pending(7):
            out.extend(r.id for r in batch)

    # When four threads, two per store, claim until nothing is left
    stores = [first, second, first, second]
    threads = [threading.Thread(target=runner, args=(s, out)) for s, out in zip(stores, claimed, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first.close()
    second.close()

    # Then every request was claimed exactly once
    every = [i for out in claimed for i in out]
    assert len(every) == len(set(every)) == 300
    assert set(every) == expected


CLAIMER = """
import json, sys
from market.store import MarketStore
store = MarketStore(sys.argv[1])
ids = []
while batch := store.claim_pending(5):
    ids.extend(r.id for r in batch)
print(json.dumps(ids))
"""


def test_two_processes_never_claim_the_same_request(tmp_path: Path) -> None:
    path = tmp_path / "market.sqlite3"
    with MarketStore(path) as store:
        expected = {store.request_analysis("VALE3").id for _ in range(200)}
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    every = outputs[0] + outputs[1]
    assert len(every) == len(set(every)) == 200
    assert set(every) == expected


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = MarketStore(tmp_path / "m.sqlite3")
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.assets()


def test_seed_defaults_gives_every_default_ticker_an_analysable_sample_history(
    store: MarketStore, clock: Clock
) -> None:
    report = seed_defaults(store, history_days=60, now=clock.now)
    assert report == (len(DEFAULT_TICKERS), len(DEFAULT_TICKERS), 60 * len(DEFAULT_TICKERS))
    assert seed_defaults(store, history_days=60, now=clock.now) == (0, 0, 0)

    bars = store.bars("PETR4", "sample", limit=200)
    assert len(bars) == 60 and all(calendar.is_trading_day(b.session) for b in bars)
    assert bars[-1].session == calendar.session_of(clock.now)
    latest = store.latest_quote("PETR4")
    assert latest is not None and latest.source == "sample" and latest.price == bars[-1].close
    assert store.sources() == {"sample": len(DEFAULT_TICKERS)}
    assert analyze("PETR4", [b.close for b in bars], source="sample").signal in ("buy", "hold", "sell")


# -- migration --------------------------------------------------------------------------------------

SCHEMA_V0 = """
CREATE TABLE assets (ticker TEXT PRIMARY KEY, name TEXT, type TEXT, active INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE quotes (ticker TEXT NOT NULL, time REAL NOT NULL, price REAL NOT NULL, change REAL,
    change_percent REAL, volume INTEGER, name TEXT, currency TEXT NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (ticker, time)) WITHOUT ROWID;
CREATE TABLE analysis_requests (id TEXT PRIMARY KEY, ticker TEXT NOT NULL, status TEXT NOT NULL,
    requested_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT);
CREATE INDEX analysis_requests_by_status ON analysis_requests (status, requested_at);
CREATE TABLE analysis_results (request_id TEXT PRIMARY KEY REFERENCES analysis_requests (id) ON DELETE CASCADE,
    ticker TEXT NOT NULL, signal TEXT NOT NULL, computed_at REAL NOT NULL, body TEXT NOT NULL);
"""


def test_a_store_written_before_daily_bars_migrates_on_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given a version-0 store: sample quotes a calendar day apart (weekend included), three brapi
    # quotes in one session, and a completed analysis whose result does not say its source
    path = tmp_path / "market.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V0)
        db.execute("INSERT INTO assets VALUES ('PETR4', 'Petrobras PN', 'stock', 1, 1.0, 1.0)")
        for day, price in [(13, 30.0), (14, 30.5), (15, 31.0), (16, 31.5), (17, 32.0), (18, 32.5)]:  # Fri..Wed
            db.execute(
                "INSERT INTO quotes VALUES ('PETR4', ?, ?, NULL, NULL, NULL, NULL, 'BRL', 'sample')",
                (sp(2026, 2, day, 17), price),
            )
        for hour, price in [(11, 40.0), (13, 41.0), (15, 39.0)]:
            db.execute(
                "INSERT INTO quotes VALUES ('VALE3', ?, ?, 0.1, 0.2, 500, 'Vale', 'BRL', 'brapi')",
                (sp(2026, 3, 10, hour), price),
            )
        old = analyze("VALE3", [10.0 + i for i in range(60)], source="x").model_dump(mode="json")
        del old["source"], old["last_session"]
        db.execute("INSERT INTO analysis_requests VALUES ('r1', 'VALE3', 'completed', 1.0, 2.0, 3.0, NULL)")
        db.execute("INSERT INTO analysis_results VALUES ('r1', 'VALE3', ?, 3.0, ?)", (old["signal"], json.dumps(old)))
    # When the store is opened
    with caplog.at_level("WARNING", logger="market.schema"), MarketStore(path) as store:
        # Then the quotes became one bar per source and session: the weekend and Carnival fold into
        # Friday, Ash Wednesday's 17:00 quote is its own session
        assert [(b.session, b.open, b.close) for b in store.bars("PETR4", "sample")] == [
            (dt.date(2026, 2, 13), 30.0, 32.0),
            (dt.date(2026, 2, 18), 32.5, 32.5),
        ]
        [vale] = store.bars("VALE3", "brapi")
        assert (vale.session, vale.open, vale.high, vale.low, vale.close, vale.volume) == (
            TUESDAY,
            40.0,
            41.0,
            39.0,
            39.0,
            500,
        )
        # And the quotes are all still there, and the old result says which source it could have read
        assert len(store.quotes("PETR4")) == 6 and len(store.quotes("VALE3", "brapi")) == 3
        found = store.analysis("r1")
        assert found is not None and found[1] is not None and found[1].source == "brapi"
        assert store.asset("PETR4") is not None
    assert "migrated to version 1: 9 quotes became 3 daily bars; 1 analysis results labelled" in caplog.text
    # And opening it again changes nothing
    with MarketStore(path) as again:
        assert len(again.bars("PETR4", "sample")) == 2
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1


def test_a_store_from_a_newer_b3_jobs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "market.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 7")
    with pytest.raises(StoreVersionError, match=r"has schema version 7; this b3-jobs reads versions up to 1"):
        MarketStore(path)
