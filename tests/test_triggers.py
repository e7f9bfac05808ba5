"""HTTP triggers (`http` in a job's manifest table): the runtime builds the route, validates, enqueues, answers 202."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from runtime.engine import Runtime
from runtime.web.app import create_app

MANIFEST = """
[jobs.echo]
handler = "testjobs.basic:echo"
payload = "testjobs.basic:Echo"
http = { path = "/api/v1/echo/{text}" }

[jobs.shout]
handler = "testjobs.basic:echo"
payload = "testjobs.basic:Echo"
http = { method = "PUT", path = "/api/v1/shout", request = "shout_request:Shout" }

[jobs.noop]
handler = "testjobs.basic:noop"
payload = "testjobs.basic:Empty"
http = { path = "/api/v1/noop" }
"""

# A request model that normalises its input and adds a computed field to the answer.
SHOUT = """
from pydantic import BaseModel, ConfigDict, computed_field, field_validator

class Shout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str

    @field_validator("text")
    @classmethod
    def _upper(cls, text: str) -> str:
        return text.upper()

    @computed_field
    @property
    def length(self) -> int:
        return len(self.text)
"""


@pytest.fixture
def runtime(tmp_path: Path, make_runtime: Callable[..., Runtime]) -> Runtime:
    """A runtime on a manifest of jobs with HTTP triggers (SQLite or Redis, per `backend`)."""
    (tmp_path / "schedules.toml").write_text(textwrap.dedent(MANIFEST))
    (tmp_path / "shout_request.py").write_text(textwrap.dedent(SHOUT))
    return make_runtime(manifest=tmp_path / "schedules.toml")


@pytest.fixture
async def api(runtime: Runtime, aiohttp_client: Callable[..., Any]) -> Any:
    return await aiohttp_client(create_app(runtime))


async def test_path_and_body_are_the_payload_and_the_answer_echoes_it(api: Any, runtime: Runtime) -> None:
    # When a trigger is called with a path parameter and a body field
    resp = await api.post("/api/v1/echo/oi", json={"times": 2})
    # Then the job is queued with both, and the answer says so
    assert resp.status == 202
    body = await resp.json()
    assert body == {"jobId": body["jobId"], "status": "queued", "text": "oi", "times": 2}
    record = runtime.get(body["jobId"])
    assert (record.name, record.state, record.payload) == ("echo", "waiting", {"text": "oi", "times": 2})
    # And a default fills what the body leaves out
    assert (await (await api.post("/api/v1/echo/oi")).json())["times"] == 1


async def test_every_field_problem_is_a_422_and_nothing_is_queued(api: Any, runtime: Runtime) -> None:
    resp = await api.post("/api/v1/echo/oi", json={"times": 0})
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_payload" and [d["loc"] for d in error["details"]] == ["times"]
    assert "invalid payload for echo" in error["message"]
    bad_json = await api.post("/api/v1/echo/oi", data=b"{x", headers={"Content-Type": "application/json"})
    assert bad_json.status == 400
    assert sum(runtime.counts()["echo"].values()) == 0


async def test_a_request_model_normalises_and_its_computed_fields_are_only_answered(api: Any, runtime: Runtime) -> None:
    resp = await api.put("/api/v1/shout", json={"text": "oi"})
    assert resp.status == 202
    body = await resp.json()
    assert body == {"jobId": body["jobId"], "status": "queued", "text": "OI", "length": 2}
    assert runtime.get(body["jobId"]).payload == {"text": "OI", "times": 1}
    refused = await api.put("/api/v1/shout", json={"text": "oi", "length": 9})
    assert refused.status == 422 and [d["loc"] for d in (await refused.json())["error"]["details"]] == ["length"]


async def test_a_payload_without_fields_takes_no_body(api: Any) -> None:
    # (declared JSON: without a token a body of another type is refused before any route; SECURITY.md)
    resp = await api.post("/api/v1/noop", data=b"ignored, not JSON", headers={"Content-Type": "application/json"})
    assert resp.status == 202
    body = await resp.json()
    assert body == {"jobId": body["jobId"], "status": "queued"}


async def test_triggers_are_in_the_openapi_document(api: Any) -> None:
    doc = await (await api.get("/api/openapi.json")).json()
    validate(doc)
    echo = doc["paths"]["/api/v1/echo/{text}"]["post"]
    assert [p["name"] for p in echo["parameters"]] == ["text"]
    body = echo["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(doc["components"]["schemas"][body]["properties"]) == {"times"}
    shout = doc["paths"]["/api/v1/shout"]["put"]["responses"]["202"]["content"]["application/json"]["schema"]["$ref"]
    answer = doc["components"]["schemas"][shout.rsplit("/", 1)[1]]
    assert set(answer["properties"]) == {"jobId", "status", "text", "length"}
    assert "requestBody" not in doc["paths"]["/api/v1/noop"]["post"]
