"""The platform's frontend hook against b3-jobs: python-socketio's client, real B3 jobs, the HTTP API.

The handlers are those of the frontend's hook, in Python: each looks at the event's data only
(`{ticker, progress}`), as `socket.on('analysis:progress', ({ticker, progress}) => ...)` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import socketio
import test_b3_e2e
from conftest import running_consumer
from fake_brapi import FakeBrapi
from test_b3_e2e import LINEAR

from bus.relay import Relay
from runtime.engine import Runtime
from runtime.web.app import build_web, create_app

TOKEN = "s3cret-token"
b3_runtime, fake = test_b3_e2e.b3_runtime, test_b3_e2e.fake  # the B3 end-to-end tests' fixtures


class Page:
    """What the frontend's hook keeps: a status and a progress per ticker, and each price tile."""

    def __init__(self, ticker: str) -> None:
        self.ticker = ticker
        self.status = "idle"
        self.progress = 0
        self.statuses: list[str] = []
        self.progresses: list[Any] = []
        self.prices: dict[str, float] = {}
        self.socket = socketio.AsyncClient(reconnection=False)
        on = self.socket.on
        on("analysis:started", lambda data, meta=None: self._status(data, "processing"))
        on("analysis:progress", lambda data, meta=None: self._progress(data))
        on("analysis:completed", lambda data, meta=None: self._completed(data))
        on("asset:updated", lambda data, meta=None: self.prices.__setitem__(data["ticker"], data["price"]))

    def _status(self, data: dict[str, Any], status: str) -> None:
        if data["ticker"] == self.ticker:
            self.status = status
            self.statuses.append(status)

    def _progress(self, data: dict[str, Any]) -> None:
        if data["ticker"] == self.ticker:
            self.progress = data["progress"]
            self.progresses.append(data["progress"])

    def _completed(self, data: dict[str, Any]) -> None:
        if data["ticker"] == self.ticker:
            self.progress = 100
            self._status(data, "completed")


async def close(page: socketio.AsyncClient) -> None:
    """Disconnect; on long-polling without waiting for the pending poll (python-engineio's clean close does, up to 45 s)."""
    if page.transport() != "polling":
        await page.disconnect()
        return
    await page.eio.disconnect(abort=True)
    for task in (page.eio.read_loop_task, page.eio.write_loop_task):
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_the_frontend_hook_sees_an_analysis_and_a_price_update_requested_over_http(
    b3_runtime: Callable[..., Runtime],
    fake: FakeBrapi,
    aiohttp_client: Callable[..., Any],
) -> None:
    # Given b3-jobs (web process and consumer on one bus), PETR4's history, and a page watching PETR4
    fake.prices["PETR4"] = 38.12
    web_runtime = b3_runtime(bus="memory://")
    worker_runtime = b3_runtime(bus="memory://")
    worker_runtime.services.store.seed_closes("PETR4", LINEAR, source="brapi")
    client = await aiohttp_client(build_web(web_runtime.settings, web_runtime, url="memory://"))
    page = Page("PETR4")
    await page.socket.connect(str(client.make_url("/")), wait_timeout=5)
    try:
        await asyncio.sleep(0.5)  # the bridge's queue is bound
        with running_consumer(worker_runtime, workers=2):
            # When an analysis and an update of PETR4 are requested through the original routes
            assert (await client.post("/api/v1/analysis", json={"ticker": "PETR4"})).status == 202
            assert (await client.post("/api/v1/assets/update/PETR4")).status == 202
            await until(lambda: page.status == "completed" and "PETR4" in page.prices)
        # Then the hook went processing → 50 → completed (100), and the price tile shows the quote
        assert page.statuses == ["processing", "completed"]
        assert page.progresses == [50] and page.progress == 100
        assert page.prices["PETR4"] == 38.12
    finally:
        await page.socket.disconnect()
        web_runtime.events.close()  # type: ignore[attr-defined]
        worker_runtime.events.close()  # type: ignore[attr-defined]


async def test_with_a_token_only_a_page_that_sends_it_connects(
    b3_runtime: Callable[..., Runtime],
    aiohttp_client: Callable[..., Any],
) -> None:
    runtime = b3_runtime()
    client = await aiohttp_client(create_app(runtime, Relay(token=TOKEN), token=TOKEN))
    url = str(client.make_url("/"))
    refused = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(url, wait_timeout=5, transports=["websocket"])
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(url, wait_timeout=5, transports=["websocket"], auth={"token": "wrong"})
    admitted = socketio.AsyncClient(reconnection=False)
    await admitted.connect(url, wait_timeout=5, auth={"token": TOKEN})
    assert admitted.connected
    await admitted.disconnect()


async def test_without_a_token_the_apps_own_pages_connect_on_either_transport_and_others_do_not(
    b3_runtime: Callable[..., Runtime],
    aiohttp_client: Callable[..., Any],
) -> None:
    # Given b3-jobs without a token, behind its Host and Origin checks (runtime.web.origin)
    runtime = b3_runtime()
    client = await aiohttp_client(create_app(runtime, Relay()))
    url = str(client.make_url("/"))
    own = {"Origin": url.rstrip("/")}
    # Then a page of its own connects, by long-polling (text/plain POSTs) and by websocket
    for transports in (["polling"], ["websocket"]):
        page = socketio.AsyncClient(reconnection=False)
        await page.connect(url, wait_timeout=5, transports=transports, headers=own)
        assert page.connected and page.transport() == transports[0]
        await close(page)
    # and a page of another site does not
    for transports in (["polling"], ["websocket"]):
        other = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await other.connect(url, wait_timeout=5, transports=transports, headers={"Origin": "http://evil.example"})
        if other.eio.http is not None:  # python-engineio keeps its session after a refused handshake
            await other.eio.http.close()
