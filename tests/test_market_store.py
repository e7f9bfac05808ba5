"""The SQLite market store: assets, quote history, analysis requests claimed exactly once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from market.analysis import analyze
from market.errors import AnalysisNotFound, InvalidTicker
from market.models import Quote
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


def quote(ticker: str, price: float, at: float, source: str = "test") -> Quote:
    return Quote(
        ticker=ticker, name=None, price=price, change=0.5, change_percent=1.0, volume=100, time=at, source=source
    )


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


def test_history_is_newest_first_and_closes_oldest_first(store: MarketStore) -> None:
    for i, price in enumerate([10.0, 11.0, 12.0, 13.0]):
        store.add_quote(quote("PETR4", price, at=1000.0 + i))
    store.add_quote(quote("VALE3", 60.0, at=1001.0))

    assert [q.price for q in store.history("PETR4")] == [13.0, 12.0, 11.0, 10.0]
    assert [q.price for q in store.history("PETR4", limit=2)] == [13.0, 12.0]
    assert store.closes("PETR4", limit=3) == [11.0, 12.0, 13.0]
    latest = store.latest_quote("PETR4")
    assert latest is not None and latest.price == 13.0 and latest.source == "test"
    assert store.latest_quote("ITUB4") is None


def test_a_repeated_quote_replaces_the_one_at_the_same_time(store: MarketStore) -> None:
    store.add_quote(quote("PETR4", 10.0, at=1000.0))
    store.add_quote(quote("PETR4", 10.5, at=1000.0))
    assert [q.price for q in store.history("PETR4")] == [10.5]


def test_a_quote_for_an_untracked_ticker_tracks_it(store: MarketStore) -> None:
    store.add_quote(quote("TAEE11", 35.0, at=1.0).model_copy(update={"name": "TAESA"}))
    asset = store.asset("TAEE11")
    assert asset is not None and asset.active and asset.name == "Taesa Unit"  # the known name wins
    store.add_quote(quote("KLBN11", 20.0, at=1.0).model_copy(update={"name": "Klabin Unit"}))
    klabin = store.asset("KLBN11")
    assert klabin is not None and klabin.name == "Klabin Unit"


def test_seed_history_spaces_closes_a_day_apart(store: MarketStore) -> None:
    assert store.seed_history("BOVA11", [100.0, 102.0, 101.0], start_time=0.0) == 3
    history = store.history("BOVA11")
    assert [q.time for q in history] == [172800.0, 86400.0, 0.0]
    assert history[0].change == pytest.approx(-1.0)
    assert history[-1].change is None
    assert store.closes("BOVA11") == [100.0, 102.0, 101.0]


def test_an_analysis_goes_from_pending_to_completed(store: MarketStore, clock: Clock) -> None:
    request = store.request_analysis("PETR4")
    assert request.status == "pending" and request.requested_at == clock.now

    clock.now += 5
    [claimed] = store.claim_pending(10)
    assert (claimed.id, claimed.status, claimed.started_at) == (request.id, "running", clock.now)
    assert store.claim_pending(10) == []

    result = analyze("PETR4", [100 + i * 0.1 for i in range(60)], now=clock.now)
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


def test_seed_defaults_gives_every_default_ticker_an_analysable_history(store: MarketStore, clock: Clock) -> None:
    report = seed_defaults(store, history_days=60, now=clock.now)
    assert report == (len(DEFAULT_TICKERS), len(DEFAULT_TICKERS), 60 * len(DEFAULT_TICKERS))
    assert seed_defaults(store, history_days=60, now=clock.now) == (0, 0, 0)

    closes = store.closes("PETR4", limit=200)
    latest = store.latest_quote("PETR4")
    assert len(closes) == 60 and latest is not None and latest.time == clock.now and latest.source == "sample"
    assert analyze("PETR4", closes).signal in ("buy", "hold", "sell")
