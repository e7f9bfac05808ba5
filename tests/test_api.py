"""Every HTTP route, its success and its errors, on SQLite and on Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import take
from openapi_spec_validator import validate

from runtime.core import enqueue
from runtime.core.errors import InvalidArgument, PayloadError
from runtime.core.settings import Settings
from runtime.engine import Runtime
from runtime.web.app import create_app
from runtime.web.serve import require_safe_bind


async def make_failed(runtime: Runtime) -> str:
    record, _ = runtime.enqueue("echo", {"text": "x"})
    lease = take(runtime, record.id)
    runtime.store.fail(
        record.id,
        lease,
        "ValueError: boom",
        "Traceback ...",
        time.time(),
        runtime.manifest.job("echo").spec.keep_failed,
    )
    return record.id


async def test_enqueue_returns_202_with_the_record(api: Any) -> None:
    resp = await api.post("/api/v1/jobs/echo", json={"payload": {"text": "PETR4"}, "priority": 2})
    assert resp.status == 202
    body = await resp.json()
    assert (body["name"], body["state"], body["payload"], body["priority"], body["deduplicated"]) == (
        "echo",
        "waiting",
        {"text": "PETR4", "times": 1},
        2,
        False,
    )


async def test_enqueue_with_an_existing_job_id_returns_200_deduplicated(api: Any) -> None:
    first = await api.post("/api/v1/jobs/echo", json={"payload": {"text": "a"}, "job_id": "nightly-2026-11-28"})
    again = await api.post("/api/v1/jobs/echo", json={"payload": {"text": "b"}, "job_id": "nightly-2026-11-28"})
    assert (first.status, again.status) == (202, 200)
    body = await again.json()
    assert body["deduplicated"] is True and body["payload"]["text"] == "a"


async def test_enqueue_delayed(api: Any) -> None:
    resp = await api.post("/api/v1/jobs/noop", json={"delay": 60})
    body = await resp.json()
    assert resp.status == 202 and body["state"] == "delayed" and body["run_at"] > time.time() + 50


async def test_invalid_payload_is_422_with_every_field_and_nothing_enqueued(api: Any, runtime: Runtime) -> None:
    resp = await api.post("/api/v1/jobs/echo", json={"payload": {"text": "", "times": 50}, "priority": 0})
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_payload"
    assert {d["loc"] for d in error["details"]} == {"text", "times", "priority"}
    assert sum(runtime.counts()["echo"].values()) == 0


async def test_unknown_body_keys_and_bad_json(api: Any) -> None:
    resp = await api.post("/api/v1/jobs/echo", json={"payload": {"text": "a"}, "delay_s": 5})
    assert resp.status == 422
    assert (await resp.json())["error"]["details"][0]["loc"] == "delay_s"
    resp = await api.post("/api/v1/jobs/echo", data=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert "not valid JSON" in (await resp.json())["error"]["message"]


async def test_unknown_job_is_404(api: Any) -> None:
    resp = await api.post("/api/v1/jobs/no-such-job", json={})
    assert resp.status == 404
    assert "unknown job 'no-such-job'" in (await resp.json())["error"]["message"]


async def test_a_2mb_body_is_413_before_parsing(api: Any, runtime: Runtime) -> None:
    resp = await api.post(
        "/api/v1/jobs/echo", data=b"{" + b" " * (2 * 1024 * 1024) + b"}", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "body_too_large"
    assert sum(runtime.counts()["echo"].values()) == 0


async def test_get_and_list_jobs(api: Any, runtime: Runtime) -> None:
    ids = [runtime.enqueue("noop", {})[0].id for _ in range(5)]
    runtime.enqueue("echo", {"text": "x"})
    resp = await api.get("/api/v1/jobs/%s" % ids[0])
    assert resp.status == 200 and (await resp.json())["id"] == ids[0]
    assert (await api.get("/api/v1/jobs/missing")).status == 404
    page = await (
        await api.get("/api/v1/jobs", params={"state": "waiting", "name": "noop", "limit": "2", "offset": "1"})
    ).json()
    assert [j["id"] for j in page["jobs"]] == [ids[3], ids[2]]
    assert (page["offset"], page["limit"]) == (1, 2)
    everything = await (await api.get("/api/v1/jobs")).json()
    assert len(everything["jobs"]) == 6


async def test_list_rejects_bad_filters(api: Any) -> None:
    resp = await api.get("/api/v1/jobs", params={"state": "running", "limit": "9999"})
    assert resp.status == 422
    assert {d["loc"] for d in (await resp.json())["error"]["details"]} == {"state", "limit"}
    assert (await api.get("/api/v1/jobs", params={"name": "nope"})).status == 404


async def test_remove(api: Any, runtime: Runtime) -> None:
    active = runtime.enqueue("noop", {})[0].id
    take(runtime, active)
    waiting = runtime.enqueue("noop", {})[0].id
    resp = await api.delete("/api/v1/jobs/%s" % waiting)
    assert resp.status == 200 and (await resp.json()) == {"id": waiting, "removed": True}
    assert (await api.delete("/api/v1/jobs/%s" % waiting)).status == 404
    conflict = await api.delete("/api/v1/jobs/%s" % active)
    assert conflict.status == 409 and (await conflict.json())["error"]["details"] == {"state": "active"}


async def test_retry_one_and_all(api: Any, runtime: Runtime) -> None:
    failed = await make_failed(runtime)
    resp = await api.post("/api/v1/jobs/%s/retry" % failed)
    assert resp.status == 200 and (await resp.json())["state"] == "waiting"
    assert (await api.post("/api/v1/jobs/%s/retry" % failed)).status == 409
    assert (await api.post("/api/v1/jobs/missing/retry")).status == 404
    runtime.remove(failed)
    await make_failed(runtime)
    await make_failed(runtime)
    resp = await api.post("/api/v1/queues/echo/retry")
    assert resp.status == 200 and (await resp.json()) == {"name": "echo", "retried": 2}
    assert (await api.post("/api/v1/queues/nope/retry")).status == 404


async def test_promote(api: Any, runtime: Runtime) -> None:
    delayed = runtime.enqueue("noop", {}, delay=3600)[0].id
    resp = await api.post("/api/v1/jobs/%s/promote" % delayed)
    assert resp.status == 200 and (await resp.json())["state"] == "waiting"
    assert (await api.post("/api/v1/jobs/%s/promote" % delayed)).status == 409
    assert (await api.post("/api/v1/jobs/missing/promote")).status == 404


async def test_queues_counts_and_pause_resume(api: Any, runtime: Runtime) -> None:
    runtime.enqueue("noop", {})
    runtime.enqueue("noop", {}, delay=60)
    resp = await api.post("/api/v1/queues/noop/pause")
    assert resp.status == 200 and (await resp.json()) == {
        "name": "noop",
        "paused": True,
        "changed": True,
        "released": None,
    }
    queues = {q["name"]: q for q in (await (await api.get("/api/v1/queues")).json())["queues"]}
    assert queues["noop"]["paused"] is True and queues["echo"]["paused"] is False
    assert queues["noop"]["counts"] == {
        "waiting": 1,
        "delayed": 1,
        "active": 0,
        "waiting-children": 0,
        "completed": 0,
        "failed": 0,
    }
    resp = await api.post("/api/v1/queues/noop/resume")
    assert resp.status == 200 and (await resp.json())["changed"] is True
    assert (await api.post("/api/v1/queues/nope/pause")).status == 404
    assert (await api.post("/api/v1/queues/nope/resume")).status == 404


async def test_clean(api: Any, runtime: Runtime) -> None:
    for _ in range(3):
        await make_failed(runtime)
    resp = await api.post("/api/v1/queues/echo/clean", json={"state": "failed", "limit": 2})
    assert resp.status == 200 and (await resp.json()) == {"name": "echo", "state": "failed", "removed": 2}
    bad = await api.post("/api/v1/queues/echo/clean", json={"state": "active"})
    assert bad.status == 422
    assert (await api.post("/api/v1/queues/nope/clean", json={})).status == 404


async def test_healthz_and_unknown_routes(api: Any) -> None:
    resp = await api.get("/healthz")
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "ok" and body["store"] == "ok"
    missing = await api.get("/api/v1/nothing")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
    wrong = await api.put("/api/v1/queues")
    assert wrong.status == 405 and (await wrong.json())["error"]["code"] == "method_not_allowed"


async def test_openapi_document_validates_and_matches_the_routes(api: Any) -> None:
    resp = await api.get("/api/openapi.json")
    doc = await resp.json()
    validate(doc)
    served = {
        (r.method, r.resource.canonical)
        for r in api.server.app.router.routes()
        if r.method != "HEAD" and r.resource is not None and r.resource.canonical.startswith(("/api/v1", "/healthz"))
    }
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == served
    enqueue = doc["paths"]["/api/v1/jobs/{name}"]["post"]
    assert set(enqueue["responses"]) >= {"202", "200", "404", "413", "422"}


async def test_with_a_token_every_api_call_needs_it(runtime: Runtime, aiohttp_client: Callable[..., Any]) -> None:
    api = await aiohttp_client(create_app(runtime, token="s3cret"))
    assert (await api.get("/api/v1/queues")).status == 401
    assert (await api.get("/api/v1/queues", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await api.post("/api/v1/jobs/noop", json={})).status == 401
    assert sum(runtime.counts()["noop"].values()) == 0
    ok = await api.get("/api/v1/queues", headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200
    assert (await api.get("/healthz")).status == 200


def test_without_a_token_only_loopback_may_be_served() -> None:
    require_safe_bind(Settings(host="127.0.0.1"))
    require_safe_bind(Settings(host="0.0.0.0", token="t"))
    with pytest.raises(InvalidArgument, match=r"refusing to serve 0\.0\.0\.0 without B3JOBS_TOKEN"):
        require_safe_bind(Settings(host="0.0.0.0"))


async def test_drain_and_obliterate(api: Any, runtime: Runtime) -> None:
    await make_failed(runtime)
    for _ in range(3):
        runtime.enqueue("noop", {})
    resp = await api.post("/api/v1/queues/noop/drain")
    assert resp.status == 200 and (await resp.json()) == {"name": "noop", "removed": 3}
    assert (await api.post("/api/v1/queues/nope/drain")).status == 404
    refused = await api.delete("/api/v1/queues/echo")
    assert refused.status == 400 and "confirm=true" in (await refused.json())["error"]["message"]
    runtime.enqueue("echo", {"text": "running"})
    take(runtime, runtime.list("waiting", "echo", 0, 1)[0].id)
    busy = await api.delete("/api/v1/queues/echo", params={"confirm": "true"})
    assert busy.status == 409
    gone = await api.delete("/api/v1/queues/echo", params={"confirm": "true", "force": "true"})
    assert gone.status == 200 and (await gone.json()) == {"name": "echo", "removed": 2}
    assert runtime.counts()["echo"] == dict.fromkeys(
        ["waiting", "delayed", "active", "waiting-children", "completed", "failed"], 0
    )


# -- bulk enqueue ----------------------------------------------------------------------------------


async def test_bulk_enqueue_creates_every_job_in_order(api: Any, runtime: Runtime) -> None:
    # When four jobs are enqueued in one request, one of them delayed and with an id of its own
    jobs = [{"payload": {"text": t}} for t in ("a", "b", "c")]
    jobs.append({"payload": {"text": "d", "times": 2}, "delay": 60, "priority": 3, "job_id": "mine-1"})
    resp = await api.post("/api/v1/jobs/echo/bulk", json={"jobs": jobs})
    # Then they are all created, reported in the order given
    assert resp.status == 202
    body = await resp.json()
    assert body["created"] == 4
    assert [(j["state"], j["deduplicated"]) for j in body["jobs"]] == [("waiting", False)] * 3 + [("delayed", False)]
    ids = [j["id"] for j in body["jobs"]]
    assert ids[3] == "mine-1" and len(set(ids)) == 4
    records = [runtime.get(i) for i in ids]
    assert [r.payload for r in records] == [
        {"text": "a", "times": 1},
        {"text": "b", "times": 1},
        {"text": "c", "times": 1},
        {"text": "d", "times": 2},
    ]
    assert (records[3].priority, records[3].run_at is not None and records[3].run_at > time.time() + 50) == (3, True)
    # And each announced once, in order
    events = [(event, job[0]) for event, job, _ in runtime.events.events if job]  # type: ignore[attr-defined]
    assert events == [
        ("job:waiting", ids[0]),
        ("job:waiting", ids[1]),
        ("job:waiting", ids[2]),
        ("job:delayed", ids[3]),
    ]


async def test_bulk_enqueue_422_lists_every_problem_by_index_and_enqueues_nothing(api: Any, runtime: Runtime) -> None:
    # When some items are invalid, in their payload, in their options or both
    resp = await api.post(
        "/api/v1/jobs/echo/bulk",
        json={
            "jobs": [
                {"payload": {"text": "fine"}},
                {"payload": {"text": ""}},
                {"payload": {"text": "ok"}, "delay_s": 5},
                {"payload": {"times": 50}, "priority": 0},
            ]
        },
    )
    # Then one 422 names every problem of every item by its place in the body
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_payload"
    assert sorted(d["loc"] for d in error["details"]) == [
        "jobs.1.payload.text",
        "jobs.2.delay_s",
        "jobs.3.payload.text",
        "jobs.3.payload.times",
        "jobs.3.priority",
    ]
    # And nothing is enqueued, not even the valid items
    assert sum(runtime.counts()["echo"].values()) == 0
    assert runtime.events.events == []  # type: ignore[attr-defined]


async def test_bulk_enqueue_422_for_problems_found_past_the_body_shape(api: Any, runtime: Runtime) -> None:
    # Items well formed, but a payload and options the job refuses
    resp = await api.post(
        "/api/v1/jobs/echo/bulk",
        json={
            "jobs": [
                {"payload": {"text": "a"}},
                {"payload": {"text": ""}},
                {"payload": {"text": "late"}, "delay": 10**9, "job_id": "not an id"},
            ]
        },
    )
    assert resp.status == 422
    assert sorted(d["loc"] for d in (await resp.json())["error"]["details"]) == [
        "jobs.1.payload.text",
        "jobs.2.delay",
        "jobs.2.job_id",
    ]
    assert sum(runtime.counts()["echo"].values()) == 0


async def test_bulk_enqueue_of_no_jobs_or_an_unknown_job(api: Any) -> None:
    empty = await api.post("/api/v1/jobs/echo/bulk", json={"jobs": []})
    assert empty.status == 422 and (await empty.json())["error"]["details"][0]["loc"] == "jobs"
    assert (await api.post("/api/v1/jobs/no-such-job/bulk", json={"jobs": [{}]})).status == 404


async def test_bulk_enqueue_reports_existing_ids_and_dedupe_duplicates_as_deduplicated(
    api: Any, runtime: Runtime
) -> None:
    # Given a job with an id of its own, and a live job of a name that dedupes by `text`
    runtime.enqueue("echo", {"text": "first"}, job_id="nightly")
    live = runtime.enqueue("deduped", {"text": "PETR4"})[0]
    # When a bulk repeats the id, along with a new job
    resp = await api.post(
        "/api/v1/jobs/echo/bulk",
        json={"jobs": [{"payload": {"text": "second"}, "job_id": "nightly"}, {"payload": {"text": "new"}}]},
    )
    # Then the existing job is returned deduplicated and unchanged, the new one created
    assert resp.status == 202
    body = await resp.json()
    assert body["created"] == 1
    assert (body["jobs"][0]["id"], body["jobs"][0]["deduplicated"], body["jobs"][1]["deduplicated"]) == (
        "nightly",
        True,
        False,
    )
    assert runtime.get("nightly").payload["text"] == "first"
    # When a bulk holds a duplicate of a live job, and two equal new jobs
    resp = await api.post(
        "/api/v1/jobs/deduped/bulk",
        json={"jobs": [{"payload": {"text": "PETR4"}}, {"payload": {"text": "VALE3"}}, {"payload": {"text": "VALE3"}}]},
    )
    # Then the live job stands for the first, and the first VALE3 for the second
    body = await resp.json()
    assert resp.status == 202 and body["created"] == 1
    first, vale, again = body["jobs"]
    assert (first["id"], first["deduplicated"]) == (live.id, True)
    assert (vale["deduplicated"], again["deduplicated"], again["id"]) == (False, True, vale["id"])
    assert runtime.counts()["deduped"]["waiting"] == 2
    # And a bulk where every job exists already creates nothing: 200
    resp = await api.post("/api/v1/jobs/deduped/bulk", json={"jobs": [{"payload": {"text": "PETR4"}}]})
    assert resp.status == 200 and (await resp.json()) == {
        "created": 0,
        "jobs": [{"id": live.id, "state": "waiting", "deduplicated": True}],
    }


async def test_the_bulk_route_is_in_the_openapi_document(api: Any) -> None:
    doc = await (await api.get("/api/openapi.json")).json()
    bulk = doc["paths"]["/api/v1/jobs/{name}/bulk"]["post"]
    assert set(bulk["responses"]) >= {"202", "200", "404", "413", "422"}
    schema = bulk["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/BulkBody"}
    assert "jobs" in doc["components"]["schemas"]["BulkBody"]["properties"]
    assert set(doc["components"]["schemas"]["BulkResult"]["properties"]) == {"created", "jobs"}


def test_a_bulk_past_one_store_call_is_validated_whole_before_any_job_is_created(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given bulks created two jobs per store call
    monkeypatch.setattr(enqueue, "MAX_CREATE", 2)
    # When the last item, in the third store call's share, is invalid, nothing is created
    with pytest.raises(PayloadError) as caught:
        runtime.enqueue_many("deduped", [{"text": t} for t in "abcd"] + [{"text": ""}])
    assert [e["loc"] for e in caught.value.errors] == ["4.payload.text"]
    assert sum(runtime.counts()["deduped"].values()) == 0
    # When all are valid, all are created in order, a duplicate in a later call deduplicated
    results = runtime.enqueue_many("deduped", [{"text": t} for t in "abcda"])
    assert [(r.payload["text"], created) for r, created in results] == [
        ("a", True),
        ("b", True),
        ("c", True),
        ("d", True),
        ("a", False),
    ]
    assert results[4][0].id == results[0][0].id
