"""process-pending-analysis, called with `handle()` and a test context, on a store with fixed series."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Iterator

import pytest

from handlers import process_pending_analysis as job
from market.analysis import analyze
from market.services import Services

from test_handlers_services import events_named, make_ctx

START = 1_767_225_600.0  # 2026-01-01 UTC
LINEAR = [10.0 + i for i in range(60)]  # 10, 11, ..., 69: every indicator has a value by hand


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    made = Services(tmp_path)  # the sample provider; this job only reads the store
    yield made
    made.close()


def test_a_request_with_enough_history_completes_with_the_hand_checked_indicators(services: Services) -> None:
    # Given 60 daily closes rising by 1 from 10, and a pending request
    services.store.seed_history("PETR4", LINEAR, START)
    request = services.store.request_analysis("PETR4")
    ctx, sink = make_ctx(services, "process-pending-analysis")
    # When the job runs
    summary = job.handle(job.Payload(), ctx)
    # Then the request completed with the indicators a hand gets on that series
    assert summary == {"completed": [request.id], "failed": {}}
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
    assert result.model_dump(exclude={"computed_at"}) == analyze("PETR4", LINEAR).model_dump(exclude={"computed_at"})
    # And it announced started, progress and completed, in that order, with the result
    events = events_named(sink, "analysis:")
    assert [name for name, _ in events] == ["analysis:started", "analysis:progress", "analysis:completed"]
    assert all(data["id"] == request.id and data["ticker"] == "PETR4" for _, data in events)
    assert events[1][1]["closes"] == 60
    assert events[2][1]["result"]["sma20"] == pytest.approx(59.5)


def test_too_little_history_fails_that_request_only_with_a_clear_reason(services: Services) -> None:
    # Given one ticker with 10 closes, one with none and one with enough
    services.store.seed_history("VALE3", LINEAR[:10], START)
    services.store.seed_history("PETR4", LINEAR, START)
    short = services.store.request_analysis("VALE3")
    empty = services.store.request_analysis("MGLU3")
    enough = services.store.request_analysis("PETR4")
    ctx, sink = make_ctx(services, "process-pending-analysis")
    # When the job runs
    summary = job.handle(job.Payload(), ctx)
    # Then the short ones failed with the reason, the other completed
    assert summary["completed"] == [enough.id]
    assert summary["failed"] == {
        short.id: "the analysis of VALE3 needs at least 50 closing prices, found 10",
        empty.id: "the analysis of MGLU3 needs at least 50 closing prices, found 0",
    }
    stored = services.store.analysis(short.id)
    assert stored is not None and stored[0].status == "failed" and stored[1] is None
    assert stored[0].error == summary["failed"][short.id]
    failed = [data for name, data in events_named(sink, "analysis:failed")]
    assert sorted((d["ticker"], d["error"]) for d in failed) == [
        ("MGLU3", summary["failed"][empty.id]), ("VALE3", summary["failed"][short.id])]


def test_with_nothing_pending_it_does_nothing_and_respects_its_limit(services: Services) -> None:
    ctx, sink = make_ctx(services, "process-pending-analysis")
    assert job.handle(job.Payload(), ctx) == {"completed": [], "failed": {}}
    assert sink.events == []
    services.store.seed_history("PETR4", LINEAR, START)
    ids = [services.store.request_analysis("PETR4").id for _ in range(3)]
    first = job.handle(job.Payload(limit=2), ctx)["completed"]
    second = job.handle(job.Payload(limit=2), ctx)["completed"]
    assert (len(first), len(second)) == (2, 1) and set(first + second) == set(ids)
