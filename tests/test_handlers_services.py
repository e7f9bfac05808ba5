"""market.services (built by b3app.services): the rate-limit setting, the request pacer, lazy services.

And the helpers the handler tests share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_brapi import FakeBrapi

from b3app.services import build_services
from market.providers.blocking import BlockingQuotes
from market.services import (
    PacedQuotes,
    RateLimit,
    RequestPacer,
    Services,
    parse_history_range,
    parse_rate_limit,
)
from market.store import MarketStore
from market.tickers import DEFAULT_TICKERS
from runtime.core.context import JobContext
from runtime.core.events import RecordingSink
from runtime.core.settings import Settings, SettingsError

# -- helpers shared by the handler tests ------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeBrapi]:
    """A FakeBrapi (token "test-token") served from a background thread, for synchronous handlers."""
    with FakeBrapi().in_thread() as server:
        yield server


def brapi_services(
    tmp_path: Path,
    fake: FakeBrapi,
    rate: str = "20/1",
    timeout_s: float = 2.0,
    clock: Callable[[], float] | None = None,
) -> Services:
    """Services on the fake brapi server and a store of this test's own; with `clock`, both go by it."""
    if clock is not None:
        fake.clock = clock
    return Services(
        tmp_path / "var",
        brapi_api_key="test-token",
        brapi_base_url=fake.url,
        rate_limit=parse_rate_limit(rate),
        provider_timeout_s=timeout_s,
        clock=clock or time.time,
    )


@pytest.fixture
def services(tmp_path: Path, fake: FakeBrapi) -> Iterator[Services]:
    made = brapi_services(tmp_path, fake)
    yield made
    made.close()


def make_ctx(
    services: Any, job: str, *, timeout_s: float | None = None, attempt: int = 1
) -> tuple[JobContext, RecordingSink]:
    """A JobContext as the executor builds it, its events recorded."""
    sink = RecordingSink()
    ctx = JobContext(
        job_id="test-%s" % job,
        job=job,
        attempt=attempt,
        max_attempts=4,
        timeout_s=timeout_s,
        services=services,
        events=sink,
    )
    return ctx, sink


def events_named(sink: RecordingSink, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, data) for name, _, data in sink.events if name.startswith(prefix)]


# -- BRAPI_RATE_LIMIT -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("5/1", RateLimit(5, 1.0)),
        (" 100/60 ", RateLimit(100, 60.0)),
        ("3/0.5s", RateLimit(3, 0.5)),
        ("off", None),
    ],
)
def test_rate_limit_is_limit_per_seconds(text: str, expected: RateLimit | None) -> None:
    assert parse_rate_limit(text) == expected


@pytest.mark.parametrize("text", ["5", "five/1", "0/1", "5/0", "5/-1", "5/inf", "/1", ""])
def test_a_bad_rate_limit_says_what_was_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected LIMIT/SECONDS such as 5/1 .* got %r" % text):
        parse_rate_limit(text)


def test_build_services_reads_brapi_settings_and_refuses_a_bad_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path)
    monkeypatch.setenv("BRAPI_API_KEY", "k")
    monkeypatch.setenv("BRAPI_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("BRAPI_RATE_LIMIT", "7/2")
    services = build_services(settings)
    assert services.rate_limit == RateLimit(7, 2.0)
    assert (services.brapi_api_key, services.brapi_base_url) == ("k", "http://127.0.0.1:1")
    assert services.store_path == tmp_path / "market.sqlite3"
    assert services.history_range == "3mo"
    monkeypatch.setenv("BRAPI_HISTORY_RANGE", "1y")
    assert build_services(settings).history_range == "1y"
    monkeypatch.setenv("BRAPI_HISTORY_RANGE", "1mo")
    with pytest.raises(SettingsError, match=r"BRAPI_HISTORY_RANGE: expected one of 3mo, 6mo, 1y, 2y, 5y, 10y .* '1mo'"):
        build_services(settings)
    monkeypatch.setenv("BRAPI_HISTORY_RANGE", "3mo")
    monkeypatch.setenv("BRAPI_RATE_LIMIT", "lots")
    with pytest.raises(SettingsError, match=r"BRAPI_RATE_LIMIT: expected LIMIT/SECONDS .* got 'lots'"):
        build_services(settings)


def test_parse_history_range() -> None:
    assert parse_history_range(" 6MO ") == "6mo"
    with pytest.raises(ValueError, match="got 'max'"):
        parse_history_range("max")


def test_a_start_with_brapi_on_a_store_of_sample_bars_says_they_are_kept_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a store seeded offline, with sample bars
    monkeypatch.delenv("BRAPI_API_KEY", raising=False)
    monkeypatch.delenv("BRAPI_BASE_URL", raising=False)
    offline = build_services(Settings(data_dir=tmp_path))
    offline.seed(history_days=5)
    offline.close()
    # When the app starts with a brapi key
    monkeypatch.setenv("BRAPI_API_KEY", "k")
    with caplog.at_level("WARNING", logger="market.services"):
        services = build_services(Settings(data_dir=tmp_path))
    # Then it says so at once: the sample bars stay apart, brapi's alone are analysed and shown
    try:
        assert services.source == "brapi"
        assert (
            "holds daily bars from sample (%d tickers); the active provider is brapi" % len(DEFAULT_TICKERS)
            in caplog.text
        )
        assert "brapi bars only" in caplog.text
    finally:
        services.close()


def test_services_are_made_on_first_use_and_the_sample_is_not_paced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given services without a brapi key or URL
    monkeypatch.delenv("BRAPI_API_KEY", raising=False)
    monkeypatch.delenv("BRAPI_BASE_URL", raising=False)
    services = build_services(Settings(data_dir=tmp_path / "var"))
    # Then building them touched nothing
    assert not (tmp_path / "var").exists()
    # And on first use: the sample provider, unpaced, and the store in the data dir
    try:
        assert isinstance(services.quotes, BlockingQuotes) and services.quotes.name == "sample"
        assert services.rate_limit is None
        assert isinstance(services.store, MarketStore) and services.store is services.store
        assert (tmp_path / "var" / "market.sqlite3").exists()
    finally:
        services.close()


def test_brapi_quotes_are_paced(services: Services) -> None:
    assert isinstance(services.quotes, PacedQuotes) and services.quotes.name == "brapi"
    assert services.quotes is services.quotes


def test_a_forked_process_makes_its_own(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    store = services.store
    monkeypatch.setattr("market.services.os.getpid", lambda: -1)
    assert services.store is not store


def test_seed_if_empty_seeds_only_a_first_start(tmp_path: Path) -> None:
    services = Services(tmp_path)
    try:
        report = services.seed_if_empty(history_days=60)
        assert report is not None and report.tracked == len(DEFAULT_TICKERS)
        assert report.bars == 60 * len(DEFAULT_TICKERS)
        assert services.store.asset("B3SA3") is not None
        assert services.store.sources() == {"sample": len(DEFAULT_TICKERS)}
        assert services.seed_if_empty() is None
    finally:
        services.close()


def test_with_brapi_the_seed_tracks_and_writes_no_sample_data(tmp_path: Path, fake: FakeBrapi) -> None:
    services = brapi_services(tmp_path, fake)
    try:
        report = services.seed(history_days=60)
        assert report == (len(DEFAULT_TICKERS), 0, 0)
        assert len(services.store.assets()) == len(DEFAULT_TICKERS)
        assert services.store.sources() == {} and services.store.latest_quote("PETR4") is None
        assert fake.request_count == 0
    finally:
        services.close()


# -- the pacer --------------------------------------------------------------------------------------


def test_the_pacer_never_lets_more_than_limit_requests_into_any_window() -> None:
    # Given 3 requests per 0.2 s shared by 4 threads making 15 requests
    pacer = RequestPacer(RateLimit(3, 0.2))
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(4 if threading.current_thread().name != "w0" else 3):
            with pacer.slot():
                start = time.monotonic()
                time.sleep(0.01)
                end = time.monotonic()
            with lock:
                spans.append((start, end))

    threads = [threading.Thread(target=worker, name="w%d" % i) for i in range(4)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then every request started at least 0.2 s after the one `limit` places before it ended
    starts = sorted(s for s, _ in spans)
    assert len(starts) == 15
    assert all(later - earlier >= 0.2 for earlier, later in zip(starts, starts[3:]))
    # And the pacer did not hold them back much more than needed: 15 at 3 per 0.2 s is ~0.8-1 s
    assert time.monotonic() - began < 2.0


def test_paced_brapi_requests_stay_within_the_limit_at_the_server(tmp_path: Path, fake: FakeBrapi) -> None:
    services = brapi_services(tmp_path, fake, rate="4/0.5")
    try:
        for _ in range(5):
            services.quotes.get("PETR4")
            services.quotes.history("VALE3", "3mo")  # backfills share the pacer with quotes
    finally:
        services.close()
    assert fake.request_count == 10
    assert sum(1 for r in fake.requests if r.params.get("range") == "3mo") == 5
    assert fake.peak_per_second(window_s=0.5) <= 4
