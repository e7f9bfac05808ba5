"""update-asset-prices, batch-update and daily-update, each called with `handle()` and a test context."""

from __future__ import annotations

from typing import Any

from pathlib import Path

import pytest
from pydantic import ValidationError

from fake_brapi import FakeBrapi
from handlers import batch_update, daily_update, update_asset_prices
from market.errors import ProviderTimeout, ProviderUnavailable
from market.services import Services
from runtime import Retry, UnrecoverableError
from runtime.core.context import ChildResult, JobContext
from runtime.core.events import RecordingSink

from conftest import wait_for
from test_handlers_services import brapi_services, events_named, fake, make_ctx, services  # noqa: F401 (fixtures)

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
    # And asset:updated carries ticker, price, change and time
    [(name, data)] = events_named(sink, "asset:")
    assert name == "asset:updated"
    assert {k: data[k] for k in ("ticker", "price", "change", "time")} == {
        "ticker": "PETR4", "price": 37.25, "change": result["change"], "time": result["time"]}


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

    ctx = JobContext(job_id=job_id, job="flow", attempt=1, max_attempts=4, timeout_s=None, services=services,
                     events=RecordingSink(), on_spawn=on_spawn, children=children)
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
    children = [ChildResult("b1.0", "completed", result={"price": 1}), ChildResult("b1.2", "failed", error="unknown ticker"),
                ChildResult("b1.1", "completed", result={"price": 2})]
    again, _ = flow_ctx(None, "b1", children)
    assert batch_update.handle(payload, again) == {"updated": ["PETR4", "VALE3"], "failed": {"XXXX3": "unknown ticker"}}


# -- daily-update -----------------------------------------------------------------------------------


def test_daily_update_spawns_one_update_per_active_asset(services: Services, fake: FakeBrapi) -> None:
    # Given three active assets and one no longer tracked
    for ticker in ("VALE3", "PETR4", "WEGE3", "MGLU3"):
        services.store.track(ticker)
    services.store.untrack("MGLU3")
    ctx, spawned = flow_ctx(services, "d1")
    # When the nightly update first runs
    assert daily_update.handle(daily_update.Payload(), ctx) is None
    # Then it spawned one update-asset-prices child per active asset, in ticker order, and asked the provider nothing itself
    assert spawned == [("update-asset-prices", [{"ticker": "PETR4"}, {"ticker": "VALE3"}, {"ticker": "WEGE3"}])]
    assert fake.request_count == 0


def test_daily_update_sums_up_its_children_and_one_bad_ticker_does_not_fail_it(services: Services) -> None:
    # Given four active assets whose updates ran, the one the provider does not know failed
    for ticker in ("PETR4", "VALE3", "WEGE3", "ZZZZ11"):
        services.store.track(ticker)
    unknown = "UnrecoverableError: brapi does not know ticker ZZZZ11"
    children = [updated("d1", 0, "PETR4"), updated("d1", 1, "VALE3"), updated("d1", 2, "WEGE3"),
                ChildResult("d1.3", "failed", error=unknown)]
    ctx, spawned = flow_ctx(services, "d1", children)
    # When the nightly update runs again after them
    summary = daily_update.handle(daily_update.Payload(), ctx)
    # Then it completes with who was updated and why the other failed, and spawns nothing more
    assert summary == {"updated": ["PETR4", "VALE3", "WEGE3"], "failed": {"ZZZZ11": unknown}}
    assert spawned == []


def test_with_the_provider_down_for_every_ticker_daily_update_fails_without_a_retry(services: Services) -> None:
    # Given two active assets whose updates all failed, after their retries, with the provider down
    services.store.track("PETR4")
    services.store.track("VALE3")
    down = "ProviderUnavailable: brapi: service unavailable (HTTP 503) for %s: try later"
    children = [ChildResult("d1.0", "failed", error=down % "PETR4"), ChildResult("d1.1", "failed", error=down % "VALE3")]
    ctx, _ = flow_ctx(services, "d1", children)
    # When the nightly update sums up, it fails at once (another run would read the same outcomes), with the reasons
    with pytest.raises(UnrecoverableError, match=r"no active asset could be updated \(2 failed\): PETR4: ProviderUnavailable") as caught:
        daily_update.handle(daily_update.Payload(), ctx)
    assert "VALE3: ProviderUnavailable" in str(caught.value)


def test_an_asset_tracked_while_the_updates_ran_is_not_reported(services: Services) -> None:
    # Given the updates of PETR4 (failed) and WEGE3 (done), and VALE3 tracked while they ran
    for ticker in ("PETR4", "WEGE3", "VALE3"):
        services.store.track(ticker)
    children = [ChildResult("d1.0", "failed", error="JobTimeout: update-asset-prices timed out after 60s"),
                updated("d1", 1, "WEGE3")]
    ctx, _ = flow_ctx(services, "d1", children)
    # When the nightly update sums up
    summary = daily_update.handle(daily_update.Payload(), ctx)
    # Then VALE3, never updated, is not named as failed: the failed child cannot be told apart, so its job id names it
    assert summary == {"updated": ["WEGE3"], "failed": {"d1.0": "JobTimeout: update-asset-prices timed out after 60s"}}


def test_daily_update_with_no_assets_does_nothing(services: Services, fake: FakeBrapi) -> None:
    ctx, spawned = flow_ctx(services, "d1")
    assert daily_update.handle(daily_update.Payload(), ctx) == {"updated": [], "failed": {}}
    assert spawned == [] and fake.request_count == 0
