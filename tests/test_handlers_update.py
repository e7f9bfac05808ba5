"""update-asset-prices, batch-update and daily-update, each called with `handle()` and a test context.

Times of day that matter (a session, the morning after Carnival) come from an injected clock that
the services and the fake brapi share."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from fake_brapi import FakeBrapi
from pydantic import ValidationError
from test_handlers_services import brapi_services, events_named, fake, make_ctx, services  # noqa: F401 (fixtures)

from handlers import batch_update, daily_update, update_asset_prices
from market import calendar
from market.analysis import MIN_CLOSES
from market.errors import ProviderTimeout, ProviderUnavailable
from market.services import Services
from runtime import Retry, UnrecoverableError
from runtime.core.context import ChildResult, JobContext
from runtime.core.events import RecordingSink


class Clock:
    """São Paulo wall-clock time, settable; the services and the fake brapi read it."""

    def __init__(self, when: dt.datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def at(self, year: int, month: int, day: int, hour: int, minute: int = 0) -> Clock:
        self.now = dt.datetime(year, month, day, hour, minute, tzinfo=calendar.SAO_PAULO).timestamp()
        return self


def sao_paulo(year: int, month: int, day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=calendar.SAO_PAULO)


@pytest.fixture
def clock() -> Clock:
    return Clock(sao_paulo(2026, 3, 10, 11))  # a Tuesday, in session


@pytest.fixture
def timed(tmp_path: Path, fake: FakeBrapi, clock: Clock) -> Iterator[Services]:
    """Services on the fake brapi, both on `clock`."""
    made = brapi_services(tmp_path, fake, clock=clock)
    yield made
    made.close()


def update(services: Services, ticker: str) -> dict[str, Any]:
    ctx, _ = make_ctx(services, "update-asset-prices")
    return update_asset_prices.handle(update_asset_prices.Payload(ticker=ticker), ctx)


# -- update-asset-prices ----------------------------------------------------------------------------


def test_update_stores_the_quote_tracks_the_ticker_and_emits_asset_updated(services: Services, fake: FakeBrapi) -> None:
    # Given an untracked ticker with a known price at the provider
    fake.prices["PETR4"] = 37.25
    assert services.store.asset("PETR4") is None
    ctx, sink = make_ctx(services, "update-asset-prices")
    # When the handler runs
    result = update_asset_prices.handle(update_asset_prices.Payload(ticker="PETR4"), ctx)
    # Then it returns the quote, stores it and tracks the ticker
    assert (result["ticker"], result["price"], result["source"]) == ("PETR4", 37.25, "brapi")
    latest = services.store.latest_quote("PETR4")
    assert latest is not None and latest.price == 37.25 and latest.time == result["time"]
    asset = services.store.asset("PETR4")
    assert asset is not None and asset.active and asset.name
    # And its session's bar closes at that price, and its daily history came with the quote, in one request
    session = calendar.session_of(result["time"])
    assert result["session"] == session.isoformat() and result["bar"]["close"] == 37.25
    assert result["history"]["range"] == "3mo" and result["history"]["bars"] >= MIN_CLOSES
    assert [r.params for r in fake.requests] == [{"range": "3mo", "interval": "1d"}]
    assert len(services.store.bars("PETR4", "brapi")) == result["history"]["bars"]
    # And asset:updated carries ticker, price, change, time and the session
    [(name, data)] = events_named(sink, "asset:")
    assert name == "asset:updated"
    assert {k: data[k] for k in ("ticker", "price", "change", "time", "session")} == {
        "ticker": "PETR4",
        "price": 37.25,
        "change": result["change"],
        "time": result["time"],
        "session": session.isoformat(),
    }


def test_ten_updates_in_one_session_leave_one_bar_closing_at_the_last_price(
    timed: Services, fake: FakeBrapi, clock: Clock
) -> None:
    # Given PETR4 at ten different prices through Tuesday's session
    prices = [37.8, 38.4, 37.2, 39.1, 38.0, 36.9, 37.7, 38.8, 38.2, 38.5]
    # When update-asset-prices runs ten times, every 30 minutes from 10:30
    for i, price in enumerate(prices):
        clock.at(2026, 3, 10, 10, 30).now += 1800 * i
        fake.prices["PETR4"] = price
        result = update(timed, "PETR4")
        assert result["session"] == "2026-03-10"
    # Then Tuesday has one bar: it closes at the last price, and its high and low cover all ten
    tuesday = [b for b in timed.store.bars("PETR4", "brapi") if b.session == dt.date(2026, 3, 10)]
    assert len(tuesday) == 1
    [bar] = tuesday
    assert bar.close == 38.5
    assert bar.high >= max(prices) and bar.low <= min(prices)
    # And the sessions before are the backfill's, one bar each: only the first update asked for history
    sessions = [b.session for b in timed.store.bars("PETR4", "brapi")]
    assert len(sessions) == len(set(sessions)) >= MIN_CLOSES
    assert [r.params.get("range") for r in fake.requests] == ["3mo"] + [None] * 9
    assert len(timed.store.quotes("PETR4", "brapi")) == 10


def test_a_ticker_with_fewer_sessions_than_asked_is_backfilled_once_a_session(
    timed: Services, fake: FakeBrapi, clock: Clock
) -> None:
    # Given a ticker brapi has 30 sessions of
    fake.history_days["WEGE3"] = 30
    # When it is updated twice on Tuesday and once on Wednesday
    first = update(timed, "WEGE3")
    again = update(timed, "WEGE3")
    clock.at(2026, 3, 11, 11)
    wednesday = update(timed, "WEGE3")
    # Then Tuesday asked for history once and stored the 30 bars; Wednesday asked again (still short)
    assert first["history"] == {"range": "3mo", "bars": 30} and again["history"] is None
    assert wednesday["history"] == {"range": "3mo", "bars": 30}
    assert len(timed.store.bars("WEGE3", "brapi")) == 31  # 30 sessions to Tuesday, then Wednesday's
    assert [r.params.get("range") for r in fake.requests] == ["3mo", None, "3mo"]


def test_a_ticker_without_history_is_updated_with_its_quote_alone(timed: Services, fake: FakeBrapi) -> None:
    fake.no_history.add("HGLG11")
    result = update(timed, "HGLG11")
    assert result["history"] == {"range": "3mo", "bars": 0}
    assert [b.session for b in timed.store.bars("HGLG11", "brapi")] == [dt.date(2026, 3, 10)]
    assert update(timed, "HGLG11")["history"] is None  # not asked again this session


def test_a_429_in_the_middle_of_a_backfill_retries_that_ticker_alone(timed: Services, fake: FakeBrapi) -> None:
    # Given three tickers never seen before, and brapi answering the second request with 429
    fake.rate_limit(retry_after="2", after=1)
    # When they are updated in turn
    first = update(timed, "PETR4")
    with pytest.raises(Retry, match="rate limited") as caught:
        update(timed, "VALE3")
    third = update(timed, "ITUB4")
    # Then the 429 asks for a retry of VALE3 after Retry-After, and stored nothing of it
    assert caught.value.delay == 2.0
    assert timed.store.bars("VALE3", "brapi") == [] and timed.store.last_backfill("VALE3", "brapi") is None
    # And the others were backfilled; VALE3's retry backfills it too
    assert first["history"]["bars"] >= MIN_CLOSES and third["history"]["bars"] >= MIN_CLOSES
    retried = update(timed, "VALE3")
    assert retried["history"]["bars"] >= MIN_CLOSES
    assert [(r.tickers, r.status, r.params.get("range")) for r in fake.requests] == [
        (["PETR4"], 200, "3mo"),
        (["VALE3"], 429, "3mo"),
        (["ITUB4"], 200, "3mo"),
        (["VALE3"], 200, "3mo"),
    ]


def test_an_unknown_ticker_fails_without_retry_and_stores_nothing(services: Services, fake: FakeBrapi) -> None:
    ctx, sink = make_ctx(services, "update-asset-prices")
    with pytest.raises(UnrecoverableError, match="brapi does not know ticker XXXX3"):
        update_asset_prices.handle(update_asset_prices.Payload(ticker="XXXX3"), ctx)
    assert services.store.asset("XXXX3") is None and sink.events == []
    assert fake.request_count == 1


def test_a_429_asks_for_a_retry_after_the_servers_retry_after(services: Services, fake: FakeBrapi) -> None:
    fake.rate_limit(retry_after="2", count=1)
    ctx, _ = make_ctx(services, "update-asset-prices")
    with pytest.raises(Retry, match="rate limited") as caught:
        update_asset_prices.handle(update_asset_prices.Payload(ticker="PETR4"), ctx)
    assert caught.value.delay == 2.0


def test_timeouts_and_outages_are_left_to_the_jobs_retry_policy(tmp_path: Path, fake: FakeBrapi) -> None:
    services = brapi_services(tmp_path, fake, timeout_s=0.3)
    ctx, _ = make_ctx(services, "update-asset-prices")
    payload = update_asset_prices.Payload(ticker="PETR4")
    try:
        fake.slow(delay_s=0.6)
        with pytest.raises(ProviderTimeout):
            update_asset_prices.handle(payload, ctx)
        wait_for(lambda: fake.requests[0].status, what="the slow answer")  # the server stops cleanly
        fake.fail(503)
        with pytest.raises(ProviderUnavailable, match="HTTP 503"):
            update_asset_prices.handle(payload, ctx)
    finally:
        services.close()


def test_a_refused_key_fails_at_once(tmp_path: Path, fake: FakeBrapi) -> None:
    services = Services(tmp_path, brapi_api_key="wrong", brapi_base_url=fake.url)
    ctx, _ = make_ctx(services, "update-asset-prices")
    try:
        with pytest.raises(UnrecoverableError, match="refused the credentials"):
            update_asset_prices.handle(update_asset_prices.Payload(ticker="VALE3"), ctx)
    finally:
        services.close()


def test_update_payload_takes_one_b3_ticker() -> None:
    assert update_asset_prices.Payload(ticker="B3SA3").ticker == "B3SA3"
    for bad in ({"ticker": "petr4"}, {"ticker": "PETROBRAS"}, {}, {"ticker": "PETR4", "extra": 1}):
        with pytest.raises(ValidationError):
            update_asset_prices.Payload.model_validate(bad)


# -- flows: batch-update and daily-update -----------------------------------------------------------


def flow_ctx(
    services: Any, job_id: str, children: list[ChildResult] | None = None
) -> tuple[JobContext, list[tuple[str, list[dict[str, Any]]]]]:
    """A flow parent's context: its first run (spawns recorded, child ids `<job_id>.N`), or, given
    `children`, its run after them."""
    spawned: list[tuple[str, list[dict[str, Any]]]] = []

    def on_spawn(job: str, payloads: list[dict[str, Any]], first: int) -> list[str]:
        spawned.append((job, payloads))
        return ["%s.%d" % (job_id, first + i) for i in range(len(payloads))]

    ctx = JobContext(
        job_id=job_id,
        job="flow",
        attempt=1,
        max_attempts=4,
        timeout_s=None,
        services=services,
        events=RecordingSink(),
        on_spawn=on_spawn,
        children=children,
    )
    return ctx, spawned


def updated(job_id: str, n: int, ticker: str) -> ChildResult:
    return ChildResult("%s.%d" % (job_id, n), "completed", result={"ticker": ticker, "price": 10.0 + n})


# -- batch-update ------------------------------------------------------------------------------------


def test_batch_payload_validation() -> None:
    for bad in ({"tickers": []}, {"tickers": ["PETR4", "nope"]}, {}, {"tickers": "PETR4"}):
        with pytest.raises(ValidationError):
            batch_update.Payload.model_validate(bad)


def test_batch_update_spawns_one_child_per_ticker_then_sums_them_up() -> None:
    payload = batch_update.Payload(tickers=["PETR4", "VALE3", "PETR4", "XXXX3"])
    first, spawned = flow_ctx(None, "b1")
    assert batch_update.handle(payload, first) is None
    assert spawned == [("update-asset-prices", [{"ticker": "PETR4"}, {"ticker": "VALE3"}, {"ticker": "XXXX3"}])]
    children = [
        ChildResult("b1.0", "completed", result={"price": 1}),
        ChildResult("b1.2", "failed", error="unknown ticker"),
        ChildResult("b1.1", "completed", result={"price": 2}),
    ]
    again, _ = flow_ctx(None, "b1", children)
    assert batch_update.handle(payload, again) == {"updated": ["PETR4", "VALE3"], "failed": {"XXXX3": "unknown ticker"}}


# -- daily-update -----------------------------------------------------------------------------------


def test_the_morning_after_carnival_tuesday_nothing_is_due(timed: Services, fake: FakeBrapi, clock: Clock) -> None:
    # Given active assets, and the clock at 02:00 on Ash Wednesday, after Carnival Tuesday
    for ticker in ("PETR4", "VALE3"):
        timed.store.track(ticker)
    clock.at(2026, 2, 18, 2)
    ctx, spawned = flow_ctx(timed, "d1")
    # When the nightly update runs
    summary = daily_update.handle(daily_update.Payload(), ctx)
    # Then it records that nothing was due, and why; it spawned nothing and asked the provider nothing
    assert summary == {
        "session": "2026-02-17",
        "due": False,
        "updated": [],
        "failed": {},
        "reason": "2026-02-17 was not a B3 trading day (Carnival): no session to update",
    }
    assert spawned == [] and fake.request_count == 0
    # And the same holds the morning after a Sunday
    clock.at(2026, 2, 16, 2)
    assert daily_update.handle(daily_update.Payload(), flow_ctx(timed, "d2")[0])["due"] is False


def test_the_morning_after_a_session_every_active_assets_bar_for_it_is_updated(
    timed: Services, fake: FakeBrapi, clock: Clock
) -> None:
    # Given three active assets with their history up to Monday, and one no longer tracked
    active = ["PETR4", "VALE3", "WEGE3"]
    clock.at(2026, 3, 9, 16)
    for ticker in [*active, "MGLU3"]:
        update(timed, ticker)
    timed.store.untrack("MGLU3")
    fake.reset()
    # When the nightly update runs at 02:00 on Wednesday
    clock.at(2026, 3, 11, 2)
    ctx, spawned = flow_ctx(timed, "d1")
    assert daily_update.handle(daily_update.Payload(), ctx) is None
    # Then it spawned one update per active asset
    assert spawned == [("update-asset-prices", [{"ticker": t} for t in active])]
    # And when the children run (at 02:00, so each quote is Tuesday's last trade) every bar of Tuesday is there
    children = []
    for i, payload in enumerate(spawned[0][1]):
        result = update(timed, payload["ticker"])
        assert result["session"] == "2026-03-10" and result["history"] is None
        children.append(ChildResult("d1.%d" % i, "completed", result=result))
    for ticker in active:
        bar = timed.store.bar(ticker, "brapi", dt.date(2026, 3, 10))
        latest = timed.store.latest_quote(ticker, "brapi")
        assert bar is not None and latest is not None and bar.close == latest.price
    assert timed.store.bar("MGLU3", "brapi", dt.date(2026, 3, 10)) is None
    assert [r.tickers for r in fake.requests] == [[t] for t in active]
    # And the summary names the session
    again, _ = flow_ctx(timed, "d1", children)
    assert daily_update.handle(daily_update.Payload(), again) == {
        "session": "2026-03-10",
        "due": True,
        "updated": active,
        "failed": {},
    }


def test_an_update_run_after_its_session_ended_fetches_that_sessions_final_bar(
    timed: Services, fake: FakeBrapi, clock: Clock
) -> None:
    # Given PETR4 with its history up to Monday
    clock.at(2026, 3, 9, 16)
    update(timed, "PETR4")
    # When Tuesday's update only runs on Wednesday at 11:00 (consumers were down all night)
    clock.at(2026, 3, 11, 11)
    result = update(timed, "PETR4")
    # Then the quote is Wednesday's, and Tuesday's final bar came with it, in the same request
    assert result["session"] == "2026-03-11" and result["history"]["range"] == "3mo"
    tuesday = timed.store.bar("PETR4", "brapi", dt.date(2026, 3, 10))
    assert tuesday == fake.history("PETR4", "3mo", clock.now)[-2]
    assert fake.request_count == 2


def test_daily_update_sums_up_its_children_and_one_bad_ticker_does_not_fail_it(timed: Services, clock: Clock) -> None:
    # Given four active assets whose updates ran, the one the provider does not know failed
    clock.at(2026, 3, 11, 2, 5)
    for ticker in ("PETR4", "VALE3", "WEGE3", "ZZZZ11"):
        timed.store.track(ticker)
    unknown = "UnrecoverableError: brapi does not know ticker ZZZZ11"
    children = [
        updated("d1", 0, "PETR4"),
        updated("d1", 1, "VALE3"),
        updated("d1", 2, "WEGE3"),
        ChildResult("d1.3", "failed", error=unknown),
    ]
    ctx, spawned = flow_ctx(timed, "d1", children)
    # When the nightly update runs again after them, on Wednesday at 02:05
    summary = daily_update.handle(daily_update.Payload(), ctx)
    # Then it completes with who was updated and why the other failed, and spawns nothing more
    assert summary == {
        "session": "2026-03-10",
        "due": True,
        "updated": ["PETR4", "VALE3", "WEGE3"],
        "failed": {"ZZZZ11": unknown},
    }
    assert spawned == []


def test_with_the_provider_down_for_every_ticker_daily_update_fails_without_a_retry(
    timed: Services, clock: Clock
) -> None:
    # Given two active assets whose updates all failed, after their retries, with the provider down
    clock.at(2026, 3, 11, 2, 5)
    timed.store.track("PETR4")
    timed.store.track("VALE3")
    down = "ProviderUnavailable: brapi: service unavailable (HTTP 503) for %s: try later"
    children = [
        ChildResult("d1.0", "failed", error=down % "PETR4"),
        ChildResult("d1.1", "failed", error=down % "VALE3"),
    ]
    ctx, _ = flow_ctx(timed, "d1", children)
    # When the nightly update sums up, it fails at once (another run would read the same outcomes), with the reasons
    with pytest.raises(
        UnrecoverableError, match=r"no active asset could be updated \(2 failed\): PETR4: ProviderUnavailable"
    ) as caught:
        daily_update.handle(daily_update.Payload(), ctx)
    assert "VALE3: ProviderUnavailable" in str(caught.value)


def test_an_asset_tracked_while_the_updates_ran_is_not_reported(timed: Services, clock: Clock) -> None:
    # Given the updates of PETR4 (failed) and WEGE3 (done), and VALE3 tracked while they ran
    clock.at(2026, 3, 11, 2, 5)
    for ticker in ("PETR4", "WEGE3", "VALE3"):
        timed.store.track(ticker)
    children = [
        ChildResult("d1.0", "failed", error="JobTimeout: update-asset-prices timed out after 60s"),
        updated("d1", 1, "WEGE3"),
    ]
    ctx, _ = flow_ctx(timed, "d1", children)
    # When the nightly update sums up
    summary = daily_update.handle(daily_update.Payload(), ctx)
    # Then VALE3, never updated, is not named as failed: the failed child cannot be told apart, so its job id names it
    assert summary["failed"] == {"d1.0": "JobTimeout: update-asset-prices timed out after 60s"}
    assert summary["updated"] == ["WEGE3"]


def test_daily_update_with_no_assets_does_nothing(timed: Services, fake: FakeBrapi, clock: Clock) -> None:
    clock.at(2026, 3, 11, 2)
    ctx, spawned = flow_ctx(timed, "d1")
    assert daily_update.handle(daily_update.Payload(), ctx) == {
        "session": "2026-03-10",
        "due": True,
        "updated": [],
        "failed": {},
    }
    assert spawned == [] and fake.request_count == 0


def test_daily_update_payload_is_empty() -> None:
    assert daily_update.Payload().model_dump(mode="json") == {}
    with pytest.raises(ValidationError):
        daily_update.Payload.model_validate({"session": "2026-03-10"})
