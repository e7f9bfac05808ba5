"""The B3 routes, each one's success and errors, on SQLite and on Redis: the price updates are the jobs'
HTTP triggers (`http` in schedules.toml, built by runtime/web/triggers.py), the rest b3app/routes.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import ROOT
from openapi_spec_validator import validate

from market.analysis import analyze
from market.models import Quote
from runtime.engine import Runtime
from runtime.web.app import create_app

MANIFEST = ROOT / "schedules.toml"
LINEAR = [10.0 + i for i in range(60)]


@pytest.fixture
def b3(make_runtime: Callable[..., Runtime]) -> Runtime:
    """A runtime on the real manifest; its services are the real factory's (sample provider, store in the tmp dir)."""
    return make_runtime(manifest=MANIFEST)


@pytest.fixture
async def api(b3: Runtime, aiohttp_client: Callable[..., Any]) -> Any:
    yield await aiohttp_client(create_app(b3))
    b3.services.close()


async def test_update_queues_the_job_and_answers_like_the_original(api: Any, b3: Runtime) -> None:
    resp = await api.post("/api/v1/assets/update/petr4")
    assert resp.status == 202
    body = await resp.json()
    assert body == {"jobId": body["jobId"], "status": "queued", "ticker": "PETR4"}
    record = b3.get(body["jobId"])
    assert (record.name, record.state, record.payload) == ("update-asset-prices", "waiting", {"ticker": "PETR4"})


async def test_update_refuses_a_ticker_not_in_b3_form(api: Any, b3: Runtime) -> None:
    resp = await api.post("/api/v1/assets/update/PETROBRAS")
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_payload" and error["details"][0]["loc"] == "ticker"
    assert "not a B3 ticker" in error["message"]
    assert sum(b3.counts()["update-asset-prices"].values()) == 0


async def test_without_the_b3_app_in_the_manifest_there_are_no_b3_routes(
    runtime: Runtime, aiohttp_client: Callable[..., Any]
) -> None:
    # Given the test manifest: no [app] table, no job with an http trigger
    api = await aiohttp_client(create_app(runtime))
    # Then the B3 routes are not there, and ctx.services is an empty namespace
    for method, path in [
        ("POST", "/api/v1/assets/update/PETR4"),
        ("POST", "/api/v1/assets/batch-update"),
        ("GET", "/api/v1/assets"),
        ("POST", "/api/v1/analysis"),
    ]:
        resp = await api.request(method, path, json={})
        assert resp.status == 404, (method, path)
    assert vars(runtime.services) == {}
    doc = await (await api.get("/api/openapi.json")).json()
    assert not [path for path in doc["paths"] if "/assets" in path or "/analysis" in path]


async def test_batch_update_queues_the_tickers_once_each(api: Any, b3: Runtime) -> None:
    resp = await api.post("/api/v1/assets/batch-update", json={"tickers": ["PETR4", "vale3", "PETR4", "B3SA3"]})
    assert resp.status == 202
    body = await resp.json()
    assert body == {"jobId": body["jobId"], "status": "queued", "tickers": ["PETR4", "VALE3", "B3SA3"], "count": 3}
    assert b3.get(body["jobId"]).payload == {"tickers": ["PETR4", "VALE3", "B3SA3"]}


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"tickers": ["PETR4", "nope!"]}, "tickers.1"),
        ({"tickers": []}, "tickers"),
        ({}, "tickers"),
        ({"tickers": ["PETR4"], "priority": 1}, "priority"),
    ],
)
async def test_batch_update_refuses_bad_bodies(api: Any, b3: Runtime, body: dict[str, Any], loc: str) -> None:
    resp = await api.post("/api/v1/assets/batch-update", json=body)
    assert resp.status == 422
    assert [d["loc"] for d in (await resp.json())["error"]["details"]] == [loc]
    assert sum(b3.counts()["batch-update"].values()) == 0


async def test_analysis_request_is_stored_pending_and_its_job_queued(api: Any, b3: Runtime) -> None:
    resp = await api.post("/api/v1/analysis", json={"ticker": "vale3"})
    assert resp.status == 202
    body = await resp.json()
    assert (body["status"], body["ticker"]) == ("pending", "VALE3")
    assert b3.get(body["jobId"]).name == "process-pending-analysis"
    got = await api.get("/api/v1/analysis/%s" % body["id"])
    assert got.status == 200
    shown = await got.json()
    assert (shown["id"], shown["status"], shown["result"]) == (body["id"], "pending", None)


async def test_analysis_request_errors(api: Any) -> None:
    bad = await api.post("/api/v1/analysis", json={"ticker": "VALE"})
    assert bad.status == 422 and (await bad.json())["error"]["details"][0]["loc"] == "ticker"
    assert (await api.post("/api/v1/analysis", json={})).status == 422
    assert (await api.post("/api/v1/analysis", data=b"{x", headers={"Content-Type": "application/json"})).status == 400
    missing = await api.get("/api/v1/analysis/no-such-id")
    assert missing.status == 404
    assert (await missing.json())["error"] == {
        "code": "not_found",
        "message": "no analysis request with id 'no-such-id'",
        "details": None,
    }


async def test_a_completed_analysis_shows_its_result(api: Any, b3: Runtime) -> None:
    store = b3.services.store
    bars = store.seed_closes("PETR4", LINEAR, source="sample")
    request = store.request_analysis("PETR4")
    store.finish_analysis(request.id, analyze("PETR4", LINEAR, source="sample", last_session=bars[-1].session))
    body = await (await api.get("/api/v1/analysis/%s" % request.id)).json()
    assert body["status"] == "completed" and body["result"]["sma20"] == pytest.approx(59.5)
    assert (body["result"]["source"], body["result"]["last_session"]) == ("sample", bars[-1].session.isoformat())


def sample_quote(ticker: str, price: float, at: float, source: str = "sample") -> Quote:
    return Quote(ticker=ticker, price=price, time=at, source=source)


async def test_assets_list_with_latest_quotes_and_bars(api: Any, b3: Runtime) -> None:
    assert await (await api.get("/api/v1/assets")).json() == {"assets": []}
    store = b3.services.store
    bars = store.seed_closes("VALE3", [60.0, 61.5], source="sample")
    store.add_quote(sample_quote("VALE3", 61.7, bars[-1].time + 60))
    store.seed_closes("PETR4", [38.0], source="brapi")  # not the active provider's: kept apart
    store.track("MGLU3")
    store.untrack("MGLU3")
    body = await (await api.get("/api/v1/assets")).json()
    assert [
        (a["asset"]["ticker"], a["latest"] and a["latest"]["price"], a["last_bar"] and a["last_bar"]["close"])
        for a in body["assets"]
    ] == [("PETR4", None, None), ("VALE3", 61.7, 61.7)]
    everything = await (await api.get("/api/v1/assets", params={"all": "true"})).json()
    assert [a["asset"]["ticker"] for a in everything["assets"]] == ["MGLU3", "PETR4", "VALE3"]
    assert (await api.get("/api/v1/assets", params={"all": "maybe"})).status == 422
    assert (await api.get("/api/v1/assets", params={"active": "1"})).status == 422


async def test_one_asset_with_its_daily_bars_and_latest_quote_apart(api: Any, b3: Runtime) -> None:
    # Given three sample sessions of VALE3, two quotes in the last one, and a brapi bar kept apart
    store = b3.services.store
    bars = store.seed_closes("VALE3", [60.0, 61.5, 59.0], source="sample")
    store.add_quote(sample_quote("VALE3", 59.4, bars[-1].time + 60))
    store.add_quote(sample_quote("VALE3", 59.2, bars[-1].time + 120))
    store.seed_closes("VALE3", [99.0], source="brapi")
    # When the asset is read with days=2
    resp = await api.get("/api/v1/assets/vale3", params={"days": "2"})
    assert resp.status == 200
    body = await resp.json()
    # Then the two newest sample bars come oldest first, one per session, and the latest quote apart
    assert body["asset"]["ticker"] == "VALE3" and body["source"] == "sample"
    assert [(b["session"], b["close"], b["source"]) for b in body["bars"]] == [
        (bars[1].session.isoformat(), 61.5, "sample"),
        (bars[2].session.isoformat(), 59.2, "sample"),
    ]
    assert (body["latest"]["price"], body["latest"]["source"]) == (59.2, "sample")
    assert body["bars"][-1]["high"] == 59.4 and body["bars"][-1]["low"] == 59.0
    assert len((await (await api.get("/api/v1/assets/VALE3")).json())["bars"]) == 3


async def test_one_asset_errors(api: Any) -> None:
    missing = await api.get("/api/v1/assets/PETR4")
    assert missing.status == 404
    assert "ticker PETR4 is not tracked" in (await missing.json())["error"]["message"]
    assert (await api.get("/api/v1/assets/PETR")).status == 422
    for bad in ({"days": "0"}, {"days": "1001"}, {"limit": "5"}):
        assert (await api.get("/api/v1/assets/PETR4", params=bad)).status == 422, bad


async def test_the_b3_routes_are_in_the_openapi_document(api: Any) -> None:
    doc = await (await api.get("/api/openapi.json")).json()
    validate(doc)
    assert {path: sorted(ops) for path, ops in doc["paths"].items() if "/assets" in path or "/analysis" in path} == {
        "/api/v1/assets/update/{ticker}": ["post"],
        "/api/v1/assets/batch-update": ["post"],
        "/api/v1/assets": ["get"],
        "/api/v1/assets/{ticker}": ["get"],
        "/api/v1/analysis": ["post"],
        "/api/v1/analysis/{id}": ["get"],
    }

    def answer(path: str) -> dict[str, Any]:
        ref = doc["paths"][path]["post"]["responses"]["202"]["content"]["application/json"]["schema"]["$ref"]
        return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]

    assert set(answer("/api/v1/assets/update/{ticker}")["properties"]) == {"jobId", "status", "ticker"}
    assert set(answer("/api/v1/assets/batch-update")["properties"]) == {"jobId", "status", "tickers", "count"}
    update = doc["paths"]["/api/v1/assets/update/{ticker}"]["post"]
    assert [p["name"] for p in update["parameters"]] == ["ticker"] and "requestBody" not in update
    body = doc["paths"]["/api/v1/assets/batch-update"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]["properties"]) == {"tickers"}


async def test_with_a_token_the_b3_routes_need_it(b3: Runtime, aiohttp_client: Callable[..., Any]) -> None:
    api = await aiohttp_client(create_app(b3, token="s3cret"))
    assert (await api.post("/api/v1/assets/update/PETR4")).status == 401
    assert (await api.get("/api/v1/assets")).status == 401
    ok = await api.get("/api/v1/assets", headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200
    b3.services.close()


async def test_100_concurrent_updates_of_petr4_make_one_job(api: Any, b3: Runtime) -> None:
    import asyncio

    # update-asset-prices is deduplicated by ticker (dedupe = ["ticker"] in the manifest)
    replies = await asyncio.gather(
        *(api.post("/api/v1/jobs/update-asset-prices", json={"payload": {"ticker": "PETR4"}}) for _ in range(100))
    )
    bodies = [await r.json() for r in replies]
    assert sorted(r.status for r in replies) == [200] * 99 + [202]
    assert len({b["id"] for b in bodies}) == 1
    assert sum(b["deduplicated"] for b in bodies) == 99
    assert b3.counts()["update-asset-prices"]["waiting"] == 1
    # the original route answers with the same job
    again = await (await api.post("/api/v1/assets/update/PETR4")).json()
    assert again["jobId"] == bodies[0]["id"]
