"""The B3 jobs end to end through the queue: real manifest, consumer threads, the fake brapi server."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import ROOT, running_consumer, wait_state
from fake_brapi import FakeBrapi
from hand_indicators import indicators, of_result
from test_events_e2e import subscribe

from bus.publisher import KombuPublisher
from market.analysis import MIN_CLOSES
from runtime.core.cron import cron_job_id
from runtime.core.events import RecordingSink
from runtime.core.manifest import load_manifest
from runtime.engine import Runtime
from runtime.web.app import build_web, create_app

MANIFEST = ROOT / "schedules.toml"
SAO_PAULO = ZoneInfo("America/Sao_Paulo")
RATE = "5/1"
LINEAR = [10.0 + i for i in range(60)]


class TimedSink(RecordingSink):
    """Records events with the monotonic time they were emitted."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self._lock = threading.Lock()

    def emit(self, event: str, job: tuple[str, str] | None, data: dict[str, Any]) -> None:
        with self._lock:
            self.times.append(time.monotonic())
            super().emit(event, job, data)

    def of(self, job_id: str, event: str) -> list[tuple[float, dict[str, Any]]]:
        return [
            (t, data)
            for t, (name, job, data) in zip(self.times, self.events)
            if name == event and job and job[0] == job_id
        ]


@pytest.fixture
def fake() -> Iterator[FakeBrapi]:
    with FakeBrapi().in_thread() as server:
        yield server


@pytest.fixture
def b3_runtime(
    settings_for: Callable[..., Any], fake: FakeBrapi, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Runtime]]:
    """Runtimes on the real manifest whose services come from the real factory, pointed at the fake brapi."""
    monkeypatch.setenv("BRAPI_RATE_LIMIT", RATE)
    monkeypatch.setenv("BRAPI_API_KEY", "test-token")
    monkeypatch.setenv("BRAPI_BASE_URL", fake.url)
    made: list[Runtime] = []
    settings = settings_for("sqlite", manifest=MANIFEST)
    manifest = load_manifest(MANIFEST)

    def make(bus: str | None = None) -> Runtime:
        """With `bus`, events go out on that Kombu URL; else a TimedSink records them."""
        events = KombuPublisher(bus, namespace=settings.namespace) if bus else TimedSink()
        runtime = Runtime(settings, manifest, events=events)
        made.append(runtime)
        return runtime

    yield make
    for runtime in reversed(made):
        runtime.services.close()
        runtime.store.destroy()
        runtime.close()


def pin_clock(runtime: Runtime, fake: FakeBrapi, when: float) -> None:
    """The services and the fake brapi both go by `when`: a night or a session of the test's choosing."""
    runtime.services.clock = fake.clock = lambda: when


async def test_update_of_petr4_is_stored_and_seen_on_ws(
    b3_runtime: Callable[..., Runtime], fake: FakeBrapi, aiohttp_client: Callable[..., Any]
) -> None:
    # Given a web process and a consumer on the memory bus, and PETR4 at 38.12 at the provider
    fake.prices["PETR4"] = 38.12
    web_runtime = b3_runtime(bus="memory://")
    worker_runtime = b3_runtime(bus="memory://")
    client = await aiohttp_client(build_web(web_runtime.settings, web_runtime, url="memory://"))
    try:
        ws = await client.ws_connect("/ws")
        await subscribe(ws, events=["asset:updated"], where={"ticker": "PETR4"})
        await asyncio.sleep(0.5)  # the bridge's queue is bound
        with running_consumer(worker_runtime, workers=2):
            # When PETR4 is updated through the original route
            resp = await client.post("/api/v1/assets/update/PETR4")
            assert resp.status == 202
            job_id = (await resp.json())["jobId"]
            # Then asset:updated for PETR4 arrives on /ws from that job
            event = await next_event(ws, "asset:updated")
            record = await asyncio.get_running_loop().run_in_executor(None, wait_state, worker_runtime, job_id)
        assert event["job"] == {"id": job_id, "name": "update-asset-prices"}
        assert (event["data"]["ticker"], event["data"]["price"]) == ("PETR4", 38.12)
        assert {"change", "time"} <= set(event["data"])
        # And the quote is stored, the job completed with it, and the API shows it
        assert record.state == "completed" and record.result["price"] == 38.12
        latest = worker_runtime.services.store.latest_quote("PETR4")
        assert latest is not None and latest.price == 38.12
        shown = await (await client.get("/api/v1/assets/PETR4")).json()
        assert shown["latest"]["price"] == 38.12
        await ws.close()
    finally:
        web_runtime.events.close()  # type: ignore[attr-defined]
        worker_runtime.events.close()  # type: ignore[attr-defined]


async def next_event(ws: Any, name: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await ws.receive_json(timeout=max(0.05, deadline - time.monotonic()))
        for event in msg if isinstance(msg, list) else [msg]:
            if event.get("event") == name:
                return event
    raise AssertionError("no %s within %ss" % (name, timeout))


def test_a_429_is_retried_after_the_servers_retry_after(b3_runtime: Callable[..., Runtime], fake: FakeBrapi) -> None:
    # Given the provider answers the first request with 429 and Retry-After: 1
    runtime = b3_runtime()
    fake.rate_limit(retry_after="1", count=1)
    record, _ = runtime.enqueue("update-asset-prices", {"ticker": "VALE3"})
    # When the job runs
    with running_consumer(runtime):
        done = wait_state(runtime, record.id)
    # Then it completed on its second attempt, started at least Retry-After after the first
    assert (done.state, done.attempts) == ("completed", 2)
    sink: TimedSink = runtime.events  # type: ignore[assignment]
    (first, _), (second, _) = sink.of(record.id, "job:active")
    assert second - first >= 1.0
    [(_, retrying)] = sink.of(record.id, "job:retrying")
    assert retrying["delay_s"] == 1.0 and "rate limited" in retrying["error"]
    assert [r.status for r in fake.requests] == [429, 200]


def test_an_unknown_ticker_fails_once_with_a_clear_reason(b3_runtime: Callable[..., Runtime], fake: FakeBrapi) -> None:
    runtime = b3_runtime()
    record, _ = runtime.enqueue("update-asset-prices", {"ticker": "XXXX3"})
    with running_consumer(runtime):
        done = wait_state(runtime, record.id)
    assert (done.state, done.attempts) == ("failed", 1)
    assert done.error == "UnrecoverableError: brapi does not know ticker XXXX3: HTTP 404: Não encontramos a ação XXXX3"
    assert fake.request_count == 1
    assert runtime.services.store.asset("XXXX3") is None


def test_a_batch_of_20_with_2_unknown_completes_within_the_rate_limit(
    b3_runtime: Callable[..., Runtime], fake: FakeBrapi
) -> None:
    # Given 18 tickers the provider knows and 2 it does not
    runtime = b3_runtime()
    known = [
        "PETR4",
        "VALE3",
        "ITUB4",
        "BBDC4",
        "BBAS3",
        "ABEV3",
        "WEGE3",
        "GGBR4",
        "RENT3",
        "SUZB3",
        "PRIO3",
        "ELET3",
        "B3SA3",
        "TAEE11",
        "BOVA11",
        "HGLG11",
        "MGLU3",
        "LREN3",
    ]
    fake.unknown.update({"FAKE3", "NOPE11"})
    tickers = [*known[:9], "FAKE3", *known[9:], "NOPE11"]
    record, _ = runtime.enqueue("batch-update", {"tickers": tickers})
    # When the batch runs
    with running_consumer(runtime):
        done = wait_state(runtime, record.id, timeout=30)
    # Then it completed with 18 updated and 2 failed, each with its reason
    assert done.state == "completed", done.error
    assert done.result["updated"] == known
    assert sorted(done.result["failed"]) == ["FAKE3", "NOPE11"]
    assert "brapi does not know ticker FAKE3" in done.result["failed"]["FAKE3"]
    # And never more than 5 requests in any second reached the provider
    assert fake.request_count == 20
    assert fake.peak_per_second() <= 5
    # And it ran as a flow: one update-asset-prices child per ticker, each ending on the bus
    assert len(done.children) == 20
    sink: TimedSink = runtime.events  # type: ignore[assignment]
    ends = [
        name
        for name, job, _ in sink.events
        if job and job[0] in done.children and name in ("job:completed", "job:failed")
    ]
    assert sorted(ends) == ["job:completed"] * 18 + ["job:failed"] * 2
    assert all(runtime.services.store.latest_quote(t) is not None for t in known)


def test_daily_update_fires_at_2am_in_sao_paulo_and_updates_every_active_asset(
    b3_runtime: Callable[..., Runtime], fake: FakeBrapi
) -> None:
    # Given four active assets and one no longer tracked
    runtime = b3_runtime()
    store = runtime.services.store
    active = ["BOVA11", "PETR4", "VALE3", "WEGE3"]
    for ticker in [*active, "MGLU3"]:
        store.track(ticker)
    store.untrack("MGLU3")
    two_am = dt.datetime(2026, 3, 10, 2, 0, tzinfo=SAO_PAULO).timestamp()
    assert dt.datetime.fromtimestamp(two_am, dt.UTC).hour == 5  # UTC-3
    pin_clock(runtime, fake, two_am)
    cron = runtime.cron_runner(now=two_am - 180)

    def daily_jobs() -> list[str]:
        return [r.id for r in runtime.list(name="daily-update")]

    # When the clock reaches 01:59 there, nothing nightly is queued
    cron.tick(two_am - 60)
    assert daily_jobs() == []
    # And at 02:00 there, the daily update is queued once, by its cron entry
    cron.tick(two_am)
    cron.tick(two_am + 30)
    assert daily_jobs() == [cron_job_id("daily-update", two_am)]
    with running_consumer(runtime):
        done = wait_state(runtime, cron_job_id("daily-update", two_am), timeout=20)
    # Then every active asset's bar of Monday's session was updated, and only those
    assert done.state == "completed", done.error
    assert done.result == {"session": "2026-03-09", "due": True, "updated": active, "failed": {}}
    assert sorted(t for r in fake.requests for t in r.tickers) == active
    assert all((q := store.latest_quote(t)) is not None and q.source == "brapi" for t in active)
    assert all(
        (b := store.bar(t, "brapi", dt.date(2026, 3, 9))) is not None and b.close == store.latest_quote(t).price
        for t in active
    )  # type: ignore[union-attr]
    assert store.latest_quote("MGLU3") is None
    # And it ran as a flow: one update-asset-prices child per active asset
    children = [runtime.get(child_id) for child_id in done.children]
    assert [(c.name, c.payload["ticker"], c.state) for c in children] == [
        ("update-asset-prices", t, "completed") for t in active
    ]


def test_the_morning_after_carnival_the_daily_update_fetches_nothing(
    b3_runtime: Callable[..., Runtime], fake: FakeBrapi
) -> None:
    # Given active assets, and 02:00 in São Paulo on Ash Wednesday, after Carnival Tuesday
    runtime = b3_runtime()
    for ticker in ("PETR4", "VALE3"):
        runtime.services.store.track(ticker)
    two_am = dt.datetime(2026, 2, 18, 2, 0, tzinfo=SAO_PAULO).timestamp()
    pin_clock(runtime, fake, two_am)
    cron = runtime.cron_runner(now=two_am - 60)
    # When the nightly tick comes
    cron.tick(two_am)
    with running_consumer(runtime):
        done = wait_state(runtime, cron_job_id("daily-update", two_am), timeout=20)
    # Then the job completed saying nothing was due, spawned no update and asked the provider nothing
    assert done.state == "completed", done.error
    assert done.result == {
        "session": "2026-02-17",
        "due": False,
        "updated": [],
        "failed": {},
        "reason": "2026-02-17 was not a B3 trading day (Carnival): no session to update",
    }
    assert done.children == [] and fake.request_count == 0
    assert runtime.list(name="update-asset-prices") == []


def test_daily_update_completes_with_a_ticker_the_provider_does_not_know_in_failed(
    b3_runtime: Callable[..., Runtime], fake: FakeBrapi
) -> None:
    # Given three active assets, one of which the provider does not know, the night after a session
    runtime = b3_runtime()
    pin_clock(runtime, fake, dt.datetime(2026, 3, 11, 2, 0, tzinfo=SAO_PAULO).timestamp())
    for ticker in ("PETR4", "VALE3", "XXXX3"):
        runtime.services.store.track(ticker)
    record, _ = runtime.enqueue("daily-update", {})
    # When the nightly update runs
    with running_consumer(runtime):
        done = wait_state(runtime, record.id, timeout=20)
    # Then the bad ticker did not fail it: it completed, naming the one that failed and why
    assert done.state == "completed", done.error
    assert done.result["updated"] == ["PETR4", "VALE3"]
    assert list(done.result["failed"]) == ["XXXX3"]
    assert "brapi does not know ticker XXXX3" in done.result["failed"]["XXXX3"]


def test_a_refused_key_fails_the_daily_update_at_once(b3_runtime: Callable[..., Runtime], fake: FakeBrapi) -> None:
    # Given two active assets and a provider that refuses the configured key, the night after a session
    runtime = b3_runtime()
    pin_clock(runtime, fake, dt.datetime(2026, 3, 11, 2, 0, tzinfo=SAO_PAULO).timestamp())
    for ticker in ("PETR4", "VALE3"):
        runtime.services.store.track(ticker)
    fake.token = "another-token"
    record, _ = runtime.enqueue("daily-update", {})
    # When the nightly update runs
    with running_consumer(runtime):
        done = wait_state(runtime, record.id, timeout=20)
    # Then each update failed on its first attempt, and the nightly update failed at once, saying why
    assert [(c.state, c.attempts) for c in map(runtime.get, done.children)] == [("failed", 1), ("failed", 1)]
    assert (done.state, done.attempts) == ("failed", 1)
    assert (
        "no active asset could be updated (2 failed): PETR4: " in done.error and "refused the credentials" in done.error
    )
    assert fake.request_count == 2


def test_daily_update_does_not_fire_at_2am_utc(b3_runtime: Callable[..., Runtime]) -> None:
    runtime = b3_runtime()
    two_am_utc = dt.datetime(2026, 3, 10, 2, 0, tzinfo=dt.UTC).timestamp()
    cron = runtime.cron_runner(now=two_am_utc)
    cron.tick(two_am_utc)
    assert runtime.list(name="daily-update") == []
    assert [r.name for r in runtime.list()] == ["process-pending-analysis"]  # every minute, in UTC


async def test_analyses_requested_over_http_complete_or_fail_with_a_reason(
    b3_runtime: Callable[..., Runtime], fake: FakeBrapi, aiohttp_client: Callable[..., Any]
) -> None:
    # Given 60 daily closes of PETR4 from brapi up to today's session, and a VALE3 brapi has only 10 sessions of
    runtime = b3_runtime()
    store = runtime.services.store
    store.seed_closes("PETR4", LINEAR, source="brapi")
    fake.history_days["VALE3"] = 10
    client = await aiohttp_client(create_app(runtime))
    with running_consumer(runtime):
        # When both are requested through the API
        ids = {}
        for ticker in ("PETR4", "VALE3"):
            resp = await client.post("/api/v1/analysis", json={"ticker": ticker})
            assert resp.status == 202
            ids[ticker] = (await resp.json())["id"]
        # Then each reaches its end, visible in the API
        shown = {ticker: await until_finished(client, request_id) for ticker, request_id in ids.items()}
    petr4, vale3 = shown["PETR4"], shown["VALE3"]
    assert petr4["status"] == "completed"
    assert petr4["result"]["sma20"] == pytest.approx(59.5, abs=1e-9)
    assert petr4["result"]["macd"]["line"] == pytest.approx(7.0, abs=1e-9)
    assert (vale3["status"], vale3["result"]) == ("failed", None)
    assert vale3["error"] == "the analysis of VALE3 needs at least 50 closing prices, found 10"
    assert [r.tickers for r in fake.requests] == [["VALE3"]]  # PETR4's history was all there
    # And each announced itself: started, progress, then completed or failed
    names = {
        ticker: [
            name
            for name, _, data in runtime.events.events  # type: ignore[attr-defined]
            if name.startswith("analysis:") and data["id"] == ids[ticker]
        ]
        for ticker in ids
    }
    assert names == {
        "PETR4": ["analysis:started", "analysis:progress", "analysis:completed"],
        "VALE3": ["analysis:started", "analysis:progress", "analysis:failed"],
    }


async def until_finished(client: Any, request_id: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown: dict[str, Any] = await (await client.get("/api/v1/analysis/%s" % request_id)).json()
        if shown["status"] in ("completed", "failed"):
            return shown
        await asyncio.sleep(0.05)
    raise AssertionError("analysis %s did not finish within %ss" % (request_id, timeout))


async def test_an_analysis_of_a_ticker_never_seen_completes_on_its_first_run(
    b3_runtime: Callable[..., Runtime], fake: FakeBrapi, aiohttp_client: Callable[..., Any]
) -> None:
    # Given b3-jobs on the fake brapi (BRAPI_BASE_URL), and a ticker it has never seen
    runtime = b3_runtime()
    assert runtime.services.source == "brapi" and runtime.services.store.asset("WEGE3") is None
    client = await aiohttp_client(create_app(runtime))
    with running_consumer(runtime):
        # When its analysis is requested
        resp = await client.post("/api/v1/analysis", json={"ticker": "WEGE3"})
        assert resp.status == 202
        queued = await resp.json()
        shown = await until_finished(client, queued["id"])
    # Then the job the request queued completed it on its first run, having fetched WEGE3's daily history
    assert shown["status"] == "completed", shown["error"]
    record = runtime.get(queued["jobId"])
    assert (record.state, record.attempts, record.result["completed"]) == ("completed", 1, [queued["id"]])
    [fetch] = fake.requests
    assert (fetch.tickers, fetch.params) == (["WEGE3"], {"range": "3mo", "interval": "1d"})
    # And on at least 50 daily closes from brapi, its indicators those worked out by hand from the fake's history
    served = [bar.close for bar in fake.history("WEGE3", "3mo", fetch.at)]
    result = shown["result"]
    assert result["closes_used"] == len(served) >= MIN_CLOSES and result["source"] == "brapi"
    assert of_result(result) == pytest.approx(indicators(served), abs=1e-9)
    # And the asset shows those bars and the quote that came with them, apart
    asset = await (await client.get("/api/v1/assets/WEGE3", params={"days": "200"})).json()
    assert [b["close"] for b in asset["bars"]] == served and asset["latest"]["source"] == "brapi"


def test_a_429_in_the_middle_of_a_backfill_is_retried_for_its_ticker_alone(
    b3_runtime: Callable[..., Runtime], fake: FakeBrapi
) -> None:
    # Given four tickers never seen, and brapi answering the third request with 429, Retry-After 1
    runtime = b3_runtime()
    tickers = ["PETR4", "VALE3", "ITUB4", "WEGE3"]
    fake.rate_limit(retry_after="1", after=2)
    record, _ = runtime.enqueue("batch-update", {"tickers": tickers})
    # When the batch runs
    with running_consumer(runtime):
        done = wait_state(runtime, record.id, timeout=30)
    # Then every ticker was updated with its daily history; the one that met the 429 on a second attempt
    assert done.state == "completed", done.error
    assert done.result == {"updated": tickers, "failed": {}}
    children = [runtime.get(child_id) for child_id in done.children]
    assert sorted(c.attempts for c in children) == [1, 1, 1, 2]
    assert [r.status for r in fake.requests].count(429) == 1 and fake.request_count == 5
    assert all(r.params == {"range": "3mo", "interval": "1d"} for r in fake.requests)
    store = runtime.services.store
    assert all(len(store.bars(t, "brapi")) >= MIN_CLOSES for t in tickers)
    assert fake.peak_per_second() <= 5


def test_the_quick_start_analyses_sample_history_offline_labelled_as_such(
    settings_for: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no brapi key or URL: the sample provider, and the seed local_runner.py runs on a first start
    monkeypatch.delenv("BRAPI_API_KEY", raising=False)
    monkeypatch.delenv("BRAPI_BASE_URL", raising=False)
    runtime = Runtime(settings_for("sqlite", manifest=MANIFEST), load_manifest(MANIFEST), events=RecordingSink())
    try:
        from b3app.cli import COMMANDS
        from runtime.cli import run_command

        [seed] = COMMANDS
        assert seed.on_local_start == ("--if-empty",)
        assert run_command(seed, seed.on_local_start, runtime.services) == 0
        store = runtime.services.store
        assert runtime.services.source == "sample" and set(store.sources()) == {"sample"}
        # When PETR4 is updated and analysed through the queue
        update, _ = runtime.enqueue("update-asset-prices", {"ticker": "PETR4"})
        analysis = store.request_analysis("PETR4")
        job, _ = runtime.enqueue("process-pending-analysis", {})
        with running_consumer(runtime):
            updated = wait_state(runtime, update.id)
            analysed = wait_state(runtime, job.id)
        # Then both completed on sample data, and every price and result says so
        assert updated.state == "completed", updated.error
        assert updated.result["source"] == "sample" and updated.result["name"].endswith("(sample data)")
        assert updated.result["history"] is None  # the seed's sample bars cover what an analysis reads
        assert analysed.state == "completed" and analysed.result["completed"] == [analysis.id]
        found = store.analysis(analysis.id)
        assert found is not None and found[1] is not None
        assert (found[1].source, found[1].closes_used) == ("sample", 120)
        assert all(bar.source == "sample" for bar in store.bars("PETR4", "sample"))
    finally:
        runtime.services.close()
        runtime.store.destroy()
        runtime.close()
