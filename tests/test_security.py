"""The probes of the hardening issue, kept as regression tests: what a caller on another site, a
caller with crafted input, or a caller who holds many sockets can and cannot do (SECURITY.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import REDIS_URL, TEST_MANIFEST, require_redis, running_consumer, wait_for, wait_state

from bus.publisher import KombuPublisher
from bus.relay import Relay
from runtime.core.cron import cron_job_id
from runtime.core.enqueue import MAX_DELAY_S
from runtime.core.errors import B3JobsError
from runtime.core.manifest import load_manifest
from runtime.core.messages import encode_message
from runtime.core.records import JobRecord
from runtime.engine import Runtime
from runtime.store.base import NewJob
from runtime.web.app import build_web, create_app
from runtime.web.limits import WebLimits
from runtime.web.serve import WebThread

EVIL = "http://evil.example"


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def web_thread(runtime: Runtime, limits: WebLimits | None = None, token: str | None = None) -> Iterator[WebThread]:
    """A real server on a free loopback port (raw sockets reach it as any client would)."""
    thread = WebThread(create_app(runtime, token=token, limits=limits), "127.0.0.1", 0).start()
    try:
        yield thread
    finally:
        thread.stop()


def raw_request(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send bytes as they are and read the answer to its end."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def jobs_of(runtime: Runtime, name: str) -> int:
    return sum(runtime.counts().get(name, {}).values())


# ---------------------------------------------------------------- cross-site control (no token)


async def test_a_foreign_host_header_is_refused(api: Any, runtime: Runtime) -> None:
    # A DNS-rebound name reaches the loopback server with the attacker's Host
    for method, path in (("GET", "/api/v1/queues"), ("GET", "/"), ("POST", "/api/v1/jobs/noop")):
        resp = await api.request(method, path, headers={"Host": "evil.example:%d" % api.port}, json={})
        assert resp.status == 403, (method, path)
        assert (await resp.json())["error"]["code"] == "unknown_host"
    assert jobs_of(runtime, "noop") == 0
    # The names a local browser uses for it pass
    for host in ("127.0.0.1:%d" % api.port, "localhost:%d" % api.port, "LOCALHOST.:%d" % api.port):
        assert (await api.get("/api/v1/queues", headers={"Host": host})).status == 200, host
    # loopback at another port is another server
    assert (await api.get("/api/v1/queues", headers={"Host": "127.0.0.1:1"})).status == 403


async def test_state_changes_from_another_origin_are_refused(api: Any, runtime: Runtime) -> None:
    attempts = [
        dict(headers={"Origin": EVIL}, json={"payload": {}}),
        dict(headers={"Origin": "null"}, json={"payload": {}}),  # a sandboxed or no-referrer page
        dict(headers={"Origin": "http://127.0.0.1:1"}, json={"payload": {}}),  # another local port
        dict(headers={"Sec-Fetch-Site": "cross-site"}, json={"payload": {}}),
        dict(headers={"Sec-Fetch-Site": "same-site"}, json={"payload": {}}),
    ]
    for attempt in attempts:
        resp = await api.post("/api/v1/jobs/noop", **attempt)
        assert resp.status == 403, attempt
        assert (await resp.json())["error"]["code"] == "foreign_origin"
    resp = await api.post("/api/v1/queues/noop/pause", headers={"Origin": EVIL})
    assert resp.status == 403
    assert runtime.paused() == set() and jobs_of(runtime, "noop") == 0

    # The server's own page, and scripts (no Origin), may
    own = "http://127.0.0.1:%d" % api.port
    resp = await api.post("/api/v1/jobs/noop", json={}, headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert resp.status == 202
    assert (await api.post("/api/v1/jobs/noop", json={})).status == 202


async def test_bodies_that_a_page_may_send_without_asking_are_refused(api: Any, runtime: Runtime) -> None:
    # A form or text/plain POST needs no CORS preflight: its body must not be taken as JSON
    body = json.dumps({"payload": {}})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": content_type} if content_type else {}
        resp = await api.post("/api/v1/jobs/noop", data=body.encode(), headers=headers)
        assert resp.status == 415, content_type
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"
    assert jobs_of(runtime, "noop") == 0
    ok = await api.post("/api/v1/jobs/noop", data=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status == 202


async def test_a_websocket_from_another_origin_is_refused(runtime: Runtime, aiohttp_client: Callable[..., Any]) -> None:
    api = await aiohttp_client(create_app(runtime, Relay()))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.ws_connect("/ws", headers={"Origin": EVIL})
    assert refused.value.status == 403
    ws = await api.ws_connect("/ws", headers={"Origin": "http://localhost:%d" % api.port})
    await ws.close()


async def test_with_a_token_the_token_is_the_guard(runtime: Runtime, aiohttp_client: Callable[..., Any]) -> None:
    client = await aiohttp_client(create_app(runtime, token="tok"))
    bearer = {"Authorization": "Bearer tok"}
    # A page elsewhere cannot send the header; a client that has the token may come from anywhere
    assert (await client.post("/api/v1/jobs/noop", json={}, headers={"Origin": EVIL})).status == 401
    assert (await client.post("/api/v1/jobs/noop", json={}, headers={"Origin": EVIL, **bearer})).status == 202
    assert (await client.get("/api/v1/queues", headers={"Host": "jobs.example.com", **bearer})).status == 200


async def test_allowed_hosts_name_the_server_behind_a_proxy(
    runtime: Runtime, aiohttp_client: Callable[..., Any]
) -> None:
    client = await aiohttp_client(create_app(runtime, token="tok", allowed_hosts=("jobs.example.com",)))
    bearer = {"Authorization": "Bearer tok"}
    assert (await client.get("/api/v1/queues", headers={"Host": "jobs.example.com", **bearer})).status == 200
    assert (await client.get("/api/v1/queues", headers={"Host": "jobs.example.com:443", **bearer})).status == 200
    assert (await client.get("/api/v1/queues", headers={"Host": "other.example.com", **bearer})).status == 403


# ---------------------------------------------------------------- headers, bad input


async def test_responses_name_no_version_and_deny_framing(api: Any) -> None:
    for path in ("/api/v1/queues", "/", "/dashboard/app.js", "/nowhere", "/healthz"):
        resp = await api.get(path)
        assert resp.headers["Server"] == "b3-jobs", path
        assert resp.headers["X-Frame-Options"] == "DENY", path
    assert "frame-ancestors 'none'" in (await api.get("/")).headers["Content-Security-Policy"]


def test_the_parsers_own_errors_name_no_version(runtime: Runtime) -> None:
    with web_thread(runtime) as web:
        answer = raw_request(web.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
    head = answer.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.") and head.split()[1] == "400", head
    assert "aiohttp" not in answer.decode(errors="replace") and "Python" not in head


@pytest.mark.parametrize("header", [b"Bearer \xff\xfe", b"Bearer", b"Basic dG9rOnRvaw==", b"bearer  tok  x", b"\xc3("])
def test_a_malformed_authorization_header_is_a_401(runtime: Runtime, header: bytes) -> None:
    with web_thread(runtime, token="tok") as web:
        answer = raw_request(
            web.port,
            b"GET /api/v1/queues HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: %s\r\n"
            b"Connection: close\r\n\r\n" % (web.port, header),
        )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


async def test_deeply_nested_json_is_a_400(api: Any) -> None:
    for body in (b"[" * 100_000, b'{"payload": ' + b'{"a": ' * 40 + b"1" + b"}" * 41):
        resp = await api.post("/api/v1/jobs/echo", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400, body[:40]
        assert "nested deeper than 32" in (await resp.json())["error"]["message"]


async def test_every_query_parameter_is_bounded(api: Any) -> None:
    for path in (
        "/api/v1/jobs?offset=1000000000",
        "/api/v1/jobs?limit=100000",
        "/api/v1/jobs?name=" + "x" * 500,
        "/api/v1/dashboard/search?q=x&offset=1000000000",
    ):
        resp = await api.get(path)
        assert resp.status == 422, path
        assert "redis" not in (await resp.text()).lower()


async def test_numbers_in_bodies_are_json_numbers_within_the_documented_range(api: Any) -> None:
    doc = await (await api.get("/api/openapi.json")).json()
    delay = doc["components"]["schemas"]["EnqueueBody"]["properties"]["delay"]
    assert any(alt.get("maximum") == MAX_DELAY_S for alt in delay["anyOf"])
    for body in ({"priority": "1"}, {"priority": 1.5}, {"delay": "5"}, {"delay": MAX_DELAY_S + 1}, {"priority": True}):
        resp = await api.post("/api/v1/jobs/noop", json=body)
        assert resp.status == 422, body


async def test_a_slow_body_gets_a_408(runtime: Runtime) -> None:
    with web_thread(runtime, WebLimits(body_timeout_s=0.5)) as web:
        reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
        writer.write(
            b"POST /api/v1/jobs/noop HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{" % web.port
        )
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 3
    assert jobs_of(runtime, "noop") == 0


def test_a_slowloris_connection_is_closed_within_the_header_timeout(runtime: Runtime) -> None:
    with web_thread(runtime, WebLimits(header_timeout_s=1.0)) as web:
        sock = socket.create_connection(("127.0.0.1", web.port))
        sock.sendall(b"GET /api/v1/queues HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % web.port)
        started = time.monotonic()
        closed_after = None
        # one more header line every 0.2 s, never the blank line that ends them
        while time.monotonic() - started < 10:
            try:
                sock.sendall(b"X-Slow: %d\r\n" % int(time.monotonic() * 1000))
                sock.settimeout(0.2)
                if sock.recv(1024) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
        sock.close()
    assert closed_after is not None and closed_after < 2.5, closed_after


def test_connections_past_the_cap_get_a_503_and_one_log_line(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with web_thread(runtime, WebLimits(max_connections=5, header_timeout_s=30)) as web:
        # Given five idle connections, the cap
        held = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(5)]
        time.sleep(0.2)
        # When fifty more arrive: each is answered 503 and closed
        answers = [
            raw_request(web.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % web.port) for _ in range(50)
        ]
        assert all(a.startswith(b"HTTP/1.1 503") and b"too_many_connections" in a for a in answers), answers[0]
        # Then once some close, requests are served again
        for sock in held:
            sock.close()
        wait_for(
            lambda: raw_request(
                web.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % web.port
            ).startswith(b"HTTP/1.1 200"),
            what="a request served again",
        )
    lines = [r for r in caplog.records if "connection" in r.getMessage().lower() and r.levelno >= logging.WARNING]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]


# ---------------------------------------------------------------- secrets


@pytest.mark.redis
@pytest.mark.parametrize("bus", ["same as REDIS_URL", "redis with its own password", "amqp"])
async def test_no_credential_in_any_response_frame_or_log_line(
    bus: str, tmp_path: Path, aiohttp_client: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    require_redis()
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-%s" % uuid.uuid4().hex[:8]
    base = REDIS_URL.split("://", 1)[1]
    redis_url = "redis://:%s@%s" % (secret, base)  # Redis without requirepass takes any password
    bus_url = {
        "same as REDIS_URL": None,
        "redis with its own password": "redis://:%s-bus@%s" % (secret, base.rsplit("/", 1)[0] + "/13"),
        "amqp": "amqp://guest:%s@127.0.0.1:5672//" % secret,
    }[bus]  # a wrong password: the broker refuses
    from runtime.core.settings import Settings

    settings = Settings.from_env(
        {},
        redis_url=redis_url,
        bus_url=bus_url,
        manifest=TEST_MANIFEST,
        namespace="t%s" % uuid.uuid4().hex[:10],
        data_dir=tmp_path,
    )
    runtime = Runtime(
        settings,
        load_manifest(TEST_MANIFEST),
        events=KombuPublisher(bus_url or redis_url, namespace=settings.namespace),
    )
    try:
        client = await aiohttp_client(build_web(settings, runtime))
        seen = []
        ws = await client.ws_connect("/ws")
        await ws.send_json({"op": "subscribe", "events": ["*"]})
        record, _ = runtime.enqueue("noop", {})
        for path in (
            "/healthz",
            "/metrics",
            "/api/v1/dashboard/overview",
            "/api/v1/queues",
            "/api/openapi.json",
            "/api/v1/jobs/%s" % record.id,
            "/api/v1/jobs",
            "/nowhere",
        ):
            resp = await client.get(path)
            seen.append(await resp.text())
        with contextlib.suppress(asyncio.TimeoutError):
            for _ in range(5):
                seen.append((await ws.receive(timeout=0.5)).data)
        await ws.close()
        health = json.loads(seen[0])
        assert secret not in health["bus"] and "***" in health["bus"]
    finally:
        runtime.events.close()  # type: ignore[attr-defined]
        runtime.store.destroy()
        runtime.close()
    for text in seen:
        assert secret not in str(text)
    leaked = [r.getMessage() for r in caplog.records if secret in r.getMessage() or secret in (r.exc_text or "")]
    assert leaked == []


# ---------------------------------------------------------------- identity and integrity


async def test_an_explicit_job_id_of_another_job_is_a_409(api: Any, runtime: Runtime) -> None:
    first = await api.post("/api/v1/jobs/noop", json={"job_id": "mine-1"})
    assert first.status == 202
    again = await api.post("/api/v1/jobs/noop", json={"job_id": "mine-1"})
    assert again.status == 200 and (await again.json())["deduplicated"] is True
    other = await api.post("/api/v1/jobs/echo", json={"job_id": "mine-1", "payload": {"text": "x"}})
    assert other.status == 409
    assert (await other.json())["error"]["code"] == "job_id_taken"
    bulk = await api.post("/api/v1/jobs/echo/bulk", json={"jobs": [{"payload": {"text": "a"}, "job_id": "mine-1"}]})
    assert bulk.status == 409
    assert runtime.get("mine-1").name == "noop" and jobs_of(runtime, "echo") == 0


@pytest.mark.parametrize(
    "job_id", ["every-minute.cron.1700000040", "parent.1", "x.0", "ok\n", "ok\r", "PETR٤", "é", ""]
)
async def test_reserved_and_non_ascii_ids_cannot_be_claimed(api: Any, runtime: Runtime, job_id: str) -> None:
    resp = await api.post("/api/v1/jobs/echo", json={"job_id": job_id, "payload": {"text": "x"}})
    assert resp.status == 422, job_id
    assert runtime.store.get(job_id) is None and jobs_of(runtime, "echo") == 0
    with pytest.raises(B3JobsError):
        runtime.enqueue("echo", {"text": "x"}, job_id=job_id)


def test_a_caller_cannot_keep_a_cron_tick_from_running(runtime: Runtime) -> None:
    # Given the id the next tick of a cron job will take
    now = time.time()
    minute = int(now // 60) * 60
    runner = runtime.cron_runner(now=minute - 1)
    tick_id = cron_job_id("every-minute", minute)
    # When a caller tries to occupy it with a delayed job of another name, through every caller door
    with pytest.raises(B3JobsError):
        runtime.enqueue("noop", {}, delay=3600, job_id=tick_id)
    with pytest.raises(B3JobsError):
        runtime.enqueue_many("noop", [{}], delay=3600) and runtime.enqueue("noop", {}, job_id=tick_id)
    # Then the tick runs as itself
    assert runner.tick(minute + 1) >= 1
    record = runtime.get(tick_id)
    assert (record.name, record.state) == ("every-minute", "waiting")


def test_the_executor_runs_what_the_record_says(runtime: Runtime) -> None:
    # Given a record of `noop` whose stored message names `echo` and another id (crafted store content)
    record = JobRecord(id="crafted-1", name="noop", state="waiting", payload={}, created_at=time.time())
    message = encode_message("someone-else", "echo", {"text": "hi"}, None, None)
    runtime.store.create_many([NewJob(record, message, "", "")])
    # When a consumer takes it
    with running_consumer(runtime):
        done = wait_state(runtime, "crafted-1", ("failed", "completed"))
    # Then it is failed as not run, under its record's name; nothing ran as `echo`
    assert done.state == "failed" and "not run" in (done.error or "")
    assert runtime.store.get("someone-else") is None and jobs_of(runtime, "echo") == 0


async def test_a_corrupt_record_is_listed_as_such_and_the_listing_goes_on(
    api: Any, runtime: Runtime, backend: str
) -> None:
    good, _ = runtime.enqueue("noop", {})
    bad, _ = runtime.enqueue("noop", {})
    if backend == "redis":
        client = runtime.store.r  # type: ignore[attr-defined]
        client.hset(runtime.store.keys.job(bad.id), mapping={"attempts": "many", "payload": b"{not json"})  # type: ignore[attr-defined]
    else:
        runtime.store.storage.sql(
            "update b3_jobs set payload = ?, attempts = ? where id = ?",  # type: ignore[attr-defined]
            ("{not json", "many", bad.id),
        )
    listing = await api.get("/api/v1/jobs")
    assert listing.status == 200
    by_id = {j["id"]: j for j in (await listing.json())["jobs"]}
    assert by_id[good.id]["error"] is None
    assert by_id[bad.id]["error"].startswith("corrupt record:") and by_id[bad.id]["name"] == "noop"
    one = await api.get("/api/v1/jobs/%s" % bad.id)
    assert one.status == 200 and (await one.json())["error"].startswith("corrupt record:")
    assert (await api.get("/api/v1/dashboard/search?q=noop")).status == 200


@pytest.mark.parametrize("ticker", ["PETR٤", "PETR４", "ıTUB4", "PETR4\n"])
async def test_tickers_are_ascii_only(ticker: str) -> None:
    from market.errors import InvalidTicker
    from market.tickers import is_valid_ticker, validate_ticker

    assert not is_valid_ticker(ticker)
    if ticker.strip().isascii():
        return
    with pytest.raises(InvalidTicker):
        validate_ticker(ticker)
