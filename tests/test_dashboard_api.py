"""The dashboard's page and API routes: overview, search, failures by reason, job detail; SQLite and Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import take

from bus.envelope import make
from runtime.core.cron import cron_job_id
from runtime.core.records import JobRecord
from runtime.engine import Runtime
from runtime.web.app import create_app
from runtime.web.metrics import METRICS


def fail(runtime: Runtime, name: str, payload: dict[str, Any], error: str) -> str:
    """A job of `name` that failed with `error`, without running a handler."""
    record, _ = runtime.enqueue(name, payload)
    lease = take(runtime, record.id)
    runtime.store.fail(
        record.id,
        lease,
        error,
        "Traceback (most recent call last):\n  ...\n" + error,
        time.time(),
        runtime.manifest.job(name).spec.keep_failed,
    )
    return record.id


def complete(runtime: Runtime, name: str, payload: dict[str, Any]) -> str:
    record, _ = runtime.enqueue(name, payload)
    lease = take(runtime, record.id)
    runtime.store.complete(
        record.id, lease, b'{"ok": true}', time.time(), runtime.manifest.job(name).spec.keep_completed
    )
    return record.id


async def test_the_page_and_its_files_load_with_and_without_a_token(
    runtime: Runtime, aiohttp_client: Callable[..., Any]
) -> None:
    for token in (None, "s3cret"):
        client = await aiohttp_client(create_app(runtime, token=token))
        page = await client.get("/")
        html = await page.text()
        assert page.status == 200 and page.content_type == "text/html"
        assert '<script type="module" src="/dashboard/app.js"' in html and "http" not in html.replace("http-equiv", "")
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        for path, kind in (("/dashboard/app.js", "javascript"), ("/dashboard/style.css", "text/css")):
            resp = await client.get(path)
            assert resp.status == 200 and kind in resp.content_type, path
            assert "Content-Security-Policy" in resp.headers
        assert (await client.get("/dashboard/../web.py")).status in (403, 404)
        overview = await client.get("/api/v1/dashboard/overview")
        assert overview.status == (200 if token is None else 401)


async def test_overview_has_counts_paused_totals_cron_and_consumers(api: Any, runtime: Runtime) -> None:
    # Given jobs in several states, a paused name, a consumer heartbeat and a claimed cron tick
    runtime.pause("noop")
    runtime.enqueue("noop", {})
    runtime.enqueue("noop", {}, delay=60)
    complete(runtime, "echo", {"text": "a"})
    fail(runtime, "echo", {"text": "b"}, "ValueError: boom")
    runtime.store.renew("consumer-1", [], time.time(), 15)
    tick = (time.time() // 60) * 60 - 60
    runtime.store.claim_tick("every-minute", tick)
    runtime.enqueuer.enqueue(
        "every-minute", {"text": "tick"}, job_id=cron_job_id("every-minute", tick)
    )  # as the tick does

    # When the dashboard asks for the overview
    resp = await api.get("/api/v1/dashboard/overview")
    assert resp.status == 200
    body = await resp.json()

    # Then every job name is there with what the store knows
    jobs = {j["name"]: j for j in body["jobs"]}
    assert set(jobs) == set(runtime.manifest.jobs)
    assert jobs["noop"]["paused"] is True and jobs["echo"]["paused"] is False
    assert jobs["noop"]["counts"] == {
        "waiting": 1,
        "delayed": 1,
        "active": 0,
        "waiting-children": 0,
        "completed": 0,
        "failed": 0,
    }
    assert jobs["echo"]["totals"] == {"started": 2, "completed": 1, "failed": 1, "retried": 0, "stalled": 0}
    assert [c["id"] for c in body["consumers"]] == ["consumer-1"]
    cron = jobs["every-minute"]["cron"]
    assert cron["expression"] == "* * * * *" and cron["timezone"] == "America/Sao_Paulo"
    assert time.time() < cron["next_run"] <= time.time() + 61
    assert cron["last_run"] == tick and cron["last_run_state"] == "waiting"
    assert jobs["echo"]["cron"] is None
    # Without a bus feeding this app (create_app alone), throughput is unknown and says so.
    assert body["live"] is False and jobs["echo"]["throughput"]["failure_rate"] is None


async def test_throughput_and_failure_rate_come_from_the_events_seen(api: Any, runtime: Runtime) -> None:
    bus = api.server.app[METRICS].bus
    for i in range(3):
        bus.observe(make("job:completed", ("c%d" % i, "echo"), {"duration_s": 0.01}))
    bus.observe(make("job:failed", ("f1", "echo"), {"error": "x"}))
    body = await (await api.get("/api/v1/dashboard/overview")).json()
    echo = next(j for j in body["jobs"] if j["name"] == "echo")["throughput"]
    assert (echo["completed"], echo["failed"], echo["failure_rate"]) == (3, 1, 0.25)
    assert echo["series"][-1] == [3, 1] and len(echo["series"]) == 15
    assert echo["per_minute"] == pytest.approx(4 * 60 / echo["window_s"], rel=0.01)


async def test_search_by_id_by_payload_field_and_by_word(api: Any, runtime: Runtime) -> None:
    ids = {text: runtime.enqueue("echo", {"text": text})[0].id for text in ("PETR4", "VALE3", "ITUB4")}
    runtime.enqueue("noop", {})

    async def search(**params: Any) -> dict[str, Any]:
        resp = await api.get("/api/v1/dashboard/search", params=params)
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())

    # A payload field, case-insensitively
    found = await search(q="text=petr4")
    assert [j["id"] for j in found["jobs"]] == [ids["PETR4"]] and found["next_offset"] is None
    # A whole id, and a part of one
    assert [j["id"] for j in (await search(q=ids["VALE3"]))["jobs"]] == [ids["VALE3"]]
    assert ids["ITUB4"] in [j["id"] for j in (await search(q=ids["ITUB4"][3:12]))["jobs"]]
    # A bare word equal to a payload value; several terms must all match
    assert [j["id"] for j in (await search(q="vale3"))["jobs"]] == [ids["VALE3"]]
    assert (await search(q="text=VALE3 times=2"))["jobs"] == []
    # Filters narrow the scan; a small scan budget resumes where it stopped
    assert (await search(q="text=PETR4", name="noop"))["jobs"] == []
    first = await search(q="times=1", scan=2)
    assert first["scanned"] == 2 and first["next_offset"] == 2
    rest = await search(q="times=1", offset=first["next_offset"], scan=10)
    assert len(first["jobs"]) + len(rest["jobs"]) == 3 and rest["next_offset"] is None
    # Bad filters are refused like the core API's
    assert (await api.get("/api/v1/dashboard/search", params={"q": "x", "name": "nope"})).status == 404
    assert (await api.get("/api/v1/dashboard/search", params={"q": "x", "state": "lost"})).status == 422
    assert (await api.get("/api/v1/dashboard/search")).status == 422


async def test_failed_jobs_are_grouped_by_reason_and_a_group_can_be_retried(api: Any, runtime: Runtime) -> None:
    # Given one bad deploy failing many jobs (ids and timings differ), and one other failure
    for i in range(5):
        fail(
            runtime,
            "echo",
            {"text": "t%d" % i},
            "KeyError: asset %08x missing after %d ms" % (0x1A2B3C4D + 7919 * i, 1000 + i),
        )
    other = fail(runtime, "echo", {"text": "z"}, "HTTP 404 from provider")

    # Then they are two rows, the biggest first
    body = await (await api.get("/api/v1/dashboard/failures")).json()
    assert [(g["name"], g["count"]) for g in body["groups"]] == [("echo", 5), ("echo", 1)]
    big = body["groups"][0]
    assert big["reason"] == "KeyError: asset … missing after # ms" and big["example"].startswith("KeyError: asset ")
    assert body["groups"][1]["job_ids"] == [other] and body["truncated"] is False

    # When the big group is retried
    resp = await api.post("/api/v1/dashboard/failures/retry", json={"name": "echo", "reason": big["reason"]})
    assert resp.status == 200 and (await resp.json())["retried"] == 5

    # Then only the other failure is left
    assert runtime.counts()["echo"]["failed"] == 1 and runtime.counts()["echo"]["waiting"] == 5
    body = await (await api.get("/api/v1/dashboard/failures", params={"name": "echo"})).json()
    assert [g["count"] for g in body["groups"]] == [1]
    assert (await api.get("/api/v1/dashboard/failures", params={"name": "nope"})).status == 404


async def test_job_detail_has_stalls_worker_parent_and_children(api: Any, runtime: Runtime) -> None:
    now = time.time()
    kids = ["kid-%d" % i for i in range(3)]
    parent = JobRecord(
        id="parent-1", name="echo", state="waiting-children", payload={"text": "p"}, created_at=now, children=kids
    )
    runtime.store.create(parent, b"{}")
    for kid in kids:
        runtime.store.create(
            JobRecord(
                id=kid,
                name="echo",
                state="delayed",
                payload={"text": "k"},
                created_at=now,
                run_at=now + 600,
                parent_id="parent-1",
            ),
            b"{}",
        )

    body = await (await api.get("/api/v1/dashboard/jobs/parent-1")).json()
    assert body["state"] == "waiting-children" and body["stalls"] == 0 and body["max_stalls"] == 3
    assert body["children_total"] == 3 and [c["id"] for c in body["children_shown"]] == kids
    assert {c["state"] for c in body["children_shown"]} == {"delayed"}
    kid = await (await api.get("/api/v1/dashboard/jobs/kid-0")).json()
    assert kid["parent"] == {
        "id": "parent-1",
        "name": "echo",
        "state": "waiting-children",
        "progress": None,
        "error": None,
    }
    assert (await api.get("/api/v1/dashboard/jobs/nope")).status == 404
