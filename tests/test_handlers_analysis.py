"""process-pending-analysis, called with `handle()` and a test context: on fixed series, on history
backfilled from the fake brapi, with a 429 in the way, and on a store that also holds sample bars."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_brapi import FakeBrapi
from hand_indicators import indicators, of_result
from test_handlers_services import brapi_services, events_named, fake, make_ctx  # noqa: F401 (fixtures)

from handlers import process_pending_analysis as job
from market import calendar
from market.analysis import MIN_CLOSES, analyze
from market.services import Services

LINEAR = [10.0 + i for i in range(60)]  # 10, 11, ..., 69: every indicator has a value by hand


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    made = Services(tmp_path)  # the sample provider
    yield made
    made.close()


@pytest.fixture
def brapi(tmp_path: Path, fake: FakeBrapi) -> Iterator[Services]:
    made = brapi_services(tmp_path, fake)
    yield made
    made.close()


def test_a_request_with_enough_history_completes_with_the_hand_checked_indicators(services: Services) -> None:
    # Given 60 daily closes rising by 1 from 10, up to the current session, and a pending request
    services.store.seed_closes("PETR4", LINEAR, source="sample")
    request = services.store.request_analysis("PETR4")
    ctx, sink = make_ctx(services, "process-pending-analysis")
    # When the job runs
    summary = job.handle(job.Payload(), ctx)
    # Then the request completed with the indicators a hand gets on that series
    assert summary == {"completed": [request.id], "failed": {}, "deferred": {}}
    found = services.store.analysis(request.id)
    assert found is not None
    stored, result = found
    assert stored.status == "completed" and result is not None
    assert result.sma20 == pytest.approx(59.5, abs=1e-9)  # mean of 50..69
    assert result.sma50 == pytest.approx(44.5, abs=1e-9)  # mean of 20..69
    assert result.ema20 == pytest.approx(69 - 9.5, abs=1e-9)  # a line's EMA lags it by (n-1)/2
    assert result.rsi14 == pytest.approx(100.0, abs=1e-9)  # no losses
    assert result.macd.line == pytest.approx(12.5 - 5.5, abs=1e-9)
    assert result.macd.signal == pytest.approx(7.0, abs=1e-9)
    assert result.macd.histogram == pytest.approx(0.0, abs=1e-9)
    returns = [math.log(LINEAR[i + 1] / LINEAR[i]) for i in range(39, 59)]
    assert result.volatility == pytest.approx(statistics.stdev(returns) * math.sqrt(252), abs=1e-9)
    assert result.model_dump(exclude={"computed_at"}) == analyze(
        "PETR4", LINEAR, source="sample", last_session=result.last_session
    ).model_dump(exclude={"computed_at"})
    assert result.source == "sample" and result.last_session == calendar.session_of(result.computed_at)
    # And it announced started, progress and completed, in that order, with the result
    events = events_named(sink, "analysis:")
    assert [name for name, _ in events] == ["analysis:started", "analysis:progress", "analysis:completed"]
    assert all(data["id"] == request.id and data["ticker"] == "PETR4" for _, data in events)
    assert events[1][1]["closes"] == 60
    assert events[2][1]["result"]["sma20"] == pytest.approx(59.5)


def test_a_ticker_never_seen_is_backfilled_and_analysed_on_the_first_run(brapi: Services, fake: FakeBrapi) -> None:
    # Given an analysis request for a ticker the store has never seen
    request = brapi.store.request_analysis("WEGE3")
    ctx, sink = make_ctx(brapi, "process-pending-analysis")
    # When the job runs
    summary = job.handle(job.Payload(), ctx)
    # Then it fetched the ticker's daily history and completed on it
    assert summary == {"completed": [request.id], "failed": {}, "deferred": {}}
    [fetch] = fake.requests
    assert fetch.params == {"range": "3mo", "interval": "1d"}
    served = [bar.close for bar in fake.history("WEGE3", "3mo", fetch.at)]
    found = brapi.store.analysis(request.id)
    assert found is not None and found[1] is not None
    result = found[1]
    assert (result.source, result.closes_used, result.last_close) == ("brapi", len(served), served[-1])
    assert result.closes_used >= MIN_CLOSES
    # And its indicators are those worked out by hand from the fake's history
    assert of_result(result.model_dump(mode="json")) == pytest.approx(indicators(served), abs=1e-9)
    progress = events_named(sink, "analysis:progress")[0][1]
    assert (progress["closes"], progress["backfilled"], progress["source"]) == (len(served), len(served), "brapi")


def test_too_little_history_fails_that_request_only_with_a_clear_reason(brapi: Services, fake: FakeBrapi) -> None:
    # Given a ticker brapi has 10 sessions of, one it has no history of, one it does not know, and one with enough
    fake.history_days["VALE3"] = 10
    fake.no_history.add("MGLU3")
    short = brapi.store.request_analysis("VALE3")
    empty = brapi.store.request_analysis("MGLU3")
    unknown = brapi.store.request_analysis("XXXX3")
    enough = brapi.store.request_analysis("PETR4")
    ctx, sink = make_ctx(brapi, "process-pending-analysis")
    # When the job runs
    summary = job.handle(job.Payload(), ctx)
    # Then the short ones failed with the reason, the other completed
    assert summary["completed"] == [enough.id]
    assert summary["failed"] == {
        short.id: "the analysis of VALE3 needs at least 50 closing prices, found 10",
        empty.id: "the analysis of MGLU3 needs at least 50 closing prices, found 1",  # today's, from the quote
        unknown.id: "brapi does not know ticker XXXX3: HTTP 404: Não encontramos a ação XXXX3",
    }
    stored = brapi.store.analysis(short.id)
    assert stored is not None and stored[0].status == "failed" and stored[1] is None
    assert stored[0].error == summary["failed"][short.id]
    failed = [data for name, data in events_named(sink, "analysis:failed")]
    assert sorted(d["ticker"] for d in failed) == ["MGLU3", "VALE3", "XXXX3"]
    # And a new request in the same session does not ask brapi for the history again
    fake.reset()
    brapi.store.request_analysis("VALE3")
    assert job.handle(job.Payload(), ctx)["failed"] and fake.request_count == 0


def test_a_429_defers_the_requests_that_need_history_and_the_next_run_completes_them(
    brapi: Services, fake: FakeBrapi
) -> None:
    # Given requests for two tickers never seen and one with its history stored, and brapi answering 429 once
    brapi.store.seed_closes("PETR4", LINEAR, source="brapi")
    first = brapi.store.request_analysis("WEGE3")
    second = brapi.store.request_analysis("BBAS3")
    stored = brapi.store.request_analysis("PETR4")
    fake.rate_limit(retry_after="30")
    ctx, sink = make_ctx(brapi, "process-pending-analysis")
    # When the job runs
    summary = job.handle(job.Payload(), ctx)
    # Then the two that need history went back to pending with the reason, after one request only,
    # and the one with its history completed
    assert summary["completed"] == [stored.id] and summary["failed"] == {}
    assert sorted(summary["deferred"]) == sorted([first.id, second.id])
    assert all("rate limited" in reason for reason in summary["deferred"].values())
    assert fake.request_count == 1
    assert [data["ticker"] for _, data in events_named(sink, "analysis:deferred")] == ["WEGE3", "BBAS3"]
    assert {brapi.store.analysis(r.id)[0].status for r in (first, second)} == {"pending"}  # type: ignore[index]
    # And the next run completes them
    assert sorted(job.handle(job.Payload(), ctx)["completed"]) == sorted([first.id, second.id])


def test_with_brapi_active_no_analysis_uses_a_sample_bar(tmp_path: Path, fake: FakeBrapi) -> None:
    # Given a store seeded offline with sample bars for the usual tickers
    offline = Services(tmp_path / "var")
    offline.seed(history_days=120)
    offline.close()
    # When it is opened with brapi and PETR4 is analysed
    brapi = brapi_services(tmp_path, fake)
    try:
        assert brapi.store.sources()["sample"] > 0
        request = brapi.store.request_analysis("PETR4")
        summary = job.handle(job.Payload(), make_ctx(brapi, "process-pending-analysis")[0])
        # Then the analysis ran on brapi's bars, backfilled, and on no sample bar
        assert summary["completed"] == [request.id]
        found = brapi.store.analysis(request.id)
        assert found is not None and found[1] is not None
        result = found[1]
        served = [bar.close for bar in fake.history("PETR4", "3mo", fake.requests[0].at)]
        assert (result.source, result.closes_used) == ("brapi", len(served))
        assert of_result(result.model_dump(mode="json")) == pytest.approx(indicators(served), abs=1e-9)
        sample = brapi.store.closes("PETR4", "sample")
        assert len(sample) == 120 and result.closes_used < len(sample)
    finally:
        brapi.close()


def test_with_nothing_pending_it_does_nothing_and_respects_its_limit(services: Services) -> None:
    ctx, sink = make_ctx(services, "process-pending-analysis")
    assert job.handle(job.Payload(), ctx) == {"completed": [], "failed": {}, "deferred": {}}
    assert sink.events == []
    services.store.seed_closes("PETR4", LINEAR, source="sample")
    ids = [services.store.request_analysis("PETR4").id for _ in range(3)]
    first = job.handle(job.Payload(limit=2), ctx)["completed"]
    second = job.handle(job.Payload(limit=2), ctx)["completed"]
    assert (len(first), len(second)) == (2, 1) and set(first + second) == set(ids)
