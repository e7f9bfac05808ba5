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


# -- the batch run inside daily-update -----------------------------------------------------------------------------------


def test_batch_updates_each_ticker_and_one_bad_one_does_not_fail_it(tmp_path: Path, fake: FakeBrapi) -> None:
    # Given six tickers (one twice, one the provider does not know) and a limit of 3 requests per 0.3 s
    services = brapi_services(tmp_path, fake, rate="3/0.3")
    ctx, sink = make_ctx(services, "batch-update")
    tickers = ["PETR4", "VALE3", "ZZZZ11", "B3SA3", "PETR4", "BOVA11", "ITUB4"]
    try:
        # When the batch runs
        summary = daily_update.run_batch(tickers, ctx)
    finally:
        services.close()
    # Then it sums up who was updated and why the other failed
    assert summary["updated"] == ["PETR4", "VALE3", "B3SA3", "BOVA11", "ITUB4"]
    assert list(summary["failed"]) == ["ZZZZ11"] and "does not know ticker ZZZZ11" in summary["failed"]["ZZZZ11"]
    # And it reported progress after each ticker, announced each update and kept to the limit
    progress = [data["progress"] for name, data in events_named(sink, "job:progress")]
    assert progress == [17, 33, 50, 67, 83, 100]
    assert [data["ticker"] for _, data in events_named(sink, "asset:updated")] == summary["updated"]
    assert fake.request_count == 6 and fake.peak_per_second(window_s=0.3) <= 3


def test_a_rate_limited_ticker_is_asked_again_after_retry_after(services: Services, fake: FakeBrapi) -> None:
    fake.rate_limit(retry_after="0.3", count=1)
    ctx, _ = make_ctx(services, "batch-update")
    summary = daily_update.run_batch(["PETR4", "VALE3"], ctx)
    assert summary == {"updated": ["PETR4", "VALE3"], "failed": {}}
    first, second = fake.requests[0], fake.requests[1]
    assert (first.status, second.status) == (429, 200) and second.time - first.time >= 0.3


def test_with_the_provider_down_for_every_ticker_the_batch_raises_for_a_retry(
    services: Services, fake: FakeBrapi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daily_update, "RETRY_WAIT_S", 0.01)
    fake.fail(503, count=100)
    ctx, _ = make_ctx(services, "batch-update")
    with pytest.raises(ProviderUnavailable, match="no ticker could be updated"):
        daily_update.run_batch(["PETR4", "VALE3"], ctx)
    assert fake.request_count == 2 * daily_update.ATTEMPTS_PER_TICKER


def test_a_refused_key_fails_the_batch_at_once(tmp_path: Path, fake: FakeBrapi) -> None:
    services = Services(tmp_path, brapi_api_key="wrong", brapi_base_url=fake.url)
    ctx, _ = make_ctx(services, "batch-update")
    try:
        with pytest.raises(UnrecoverableError, match="refused the credentials"):
            daily_update.run_batch(["PETR4", "VALE3", "WEGE3"], ctx)
    finally:
        services.close()
    assert fake.request_count == 1


def test_batch_payload_validation() -> None:
    for bad in ({"tickers": []}, {"tickers": ["PETR4", "nope"]}, {}, {"tickers": "PETR4"}):
        with pytest.raises(ValidationError):
            batch_update.Payload.model_validate(bad)


# -- daily-update -----------------------------------------------------------------------------------


def test_daily_update_updates_every_active_asset(services: Services, fake: FakeBrapi) -> None:
    # Given three active assets and one no longer tracked
    for ticker in ("VALE3", "PETR4", "WEGE3", "MGLU3"):
        services.store.track(ticker)
    services.store.untrack("MGLU3")
    ctx, sink = make_ctx(services, "daily-update")
    # When the nightly update runs
    summary = daily_update.handle(daily_update.Payload(), ctx)
    # Then only the active ones were asked for and updated, with progress
    assert summary == {"updated": ["PETR4", "VALE3", "WEGE3"], "failed": {}}
    assert sorted(t for r in fake.requests for t in r.tickers) == ["PETR4", "VALE3", "WEGE3"]
    assert all(services.store.latest_quote(t) is not None for t in summary["updated"])
    assert [d["progress"] for _, d in events_named(sink, "job:progress")] == [33, 67, 100]


def test_daily_update_with_no_assets_does_nothing(services: Services, fake: FakeBrapi) -> None:
    ctx, _ = make_ctx(services, "daily-update")
    assert daily_update.handle(daily_update.Payload(), ctx) == {"updated": [], "failed": {}}
    assert fake.request_count == 0


def test_batch_update_spawns_one_child_per_ticker_then_sums_them_up() -> None:
    from runtime.core.context import ChildResult, JobContext
    from runtime.core.events import RecordingSink

    spawned: list[tuple[str, list[dict[str, Any]]]] = []

    def on_spawn(job: str, payloads: list[dict[str, Any]], first: int) -> list[str]:
        spawned.append((job, payloads))
        return ["b1.%d" % (first + i) for i in range(len(payloads))]

    payload = batch_update.Payload(tickers=["PETR4", "VALE3", "PETR4", "XXXX3"])
    first = JobContext(job_id="b1", job="batch-update", attempt=1, max_attempts=1, timeout_s=None, services=None,
                       events=RecordingSink(), on_spawn=on_spawn)
    assert batch_update.handle(payload, first) is None
    assert spawned == [("update-asset-prices", [{"ticker": "PETR4"}, {"ticker": "VALE3"}, {"ticker": "XXXX3"}])]
    children = [ChildResult("b1.0", "completed", result={"price": 1}), ChildResult("b1.2", "failed", error="unknown ticker"),
                ChildResult("b1.1", "completed", result={"price": 2})]
    again = JobContext(job_id="b1", job="batch-update", attempt=1, max_attempts=1, timeout_s=None, services=None,
                       events=RecordingSink(), children=children)
    assert batch_update.handle(payload, again) == {"updated": ["PETR4", "VALE3"], "failed": {"XXXX3": "unknown ticker"}}
