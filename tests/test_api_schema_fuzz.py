"""Schema-driven fuzzing of the whole HTTP API with schemathesis, with and without a token.

A real web process (the manifest's runtime routes, the jobs' triggers, the app's routes, SQLite,
memory:// bus) is served on a free port; schemathesis reads its `/api/openapi.json` and sends
each operation generated requests, valid ones and ones that break the schema. Every answer must be
no server error, and agree with the document: a documented status, its content type, its schema.
`MAX_EXAMPLES` per operation and mode keeps the whole file to about a minute.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("hypothesis")
import hypothesis.errors  # noqa: E402
from conftest import ROOT  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bus.publisher import KombuPublisher  # noqa: E402
from runtime.core.manifest import load_manifest  # noqa: E402
from runtime.core.settings import Settings  # noqa: E402
from runtime.engine import Runtime  # noqa: E402
from runtime.web.app import build_web  # noqa: E402
from runtime.web.serve import WebThread  # noqa: E402

MAX_EXAMPLES = 15
# Invalid data may also be refused as 413: a generated body over the 1 MB limit (an array past its
# maxItems, say) is refused by its size before it is validated. Schemathesis's default list lacks 413.
CONFIG = SchemathesisConfig.from_str(
    """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5XX"]
"""
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


@contextlib.contextmanager
def serving(tmp_path: Path, token: str | None) -> Iterator[str]:
    namespace = "fuzz%s" % uuid.uuid4().hex[:10]
    manifest = ROOT / "schedules.toml"  # the B3 app's manifest: its triggers and routes are API too
    settings = Settings(data_dir=tmp_path / "var", manifest=manifest, namespace=namespace, token=token)
    runtime = Runtime(settings, load_manifest(manifest), events=KombuPublisher("memory://", namespace=namespace))
    web = WebThread(build_web(settings, runtime, url="memory://"), "127.0.0.1", 0).start()
    try:
        yield "http://127.0.0.1:%d" % web.port
    finally:
        web.stop()
        runtime.events.close()  # type: ignore[attr-defined]
        runtime.store.destroy()
        runtime.close()


def fuzz(base: str, headers: dict[str, str]) -> list[str]:
    """Every operation, both generation modes; the failures found, as text (empty: none)."""
    schema = schemathesis.openapi.from_url(base + "/api/openapi.json", headers=headers, config=CONFIG)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=10)

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                continue  # nothing breaks this operation's schema (a lone string path parameter): no negative case
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # one report per operation and mode: the reproduction is in the text
                failures.append("%s %s (%s): %s" % (operation.method.upper(), operation.path, mode.value, exc))
    return failures


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, "fuzz-token"], ids=["no token", "token"])
def test_every_answer_of_the_api_agrees_with_its_document(tmp_path: Path, token: str | None) -> None:
    headers = {"Authorization": "Bearer %s" % token} if token else {}
    with serving(tmp_path, token) as base:
        failures = fuzz(base, headers)
    assert failures == [], "\n\n".join(failures)


@pytest.mark.slow
def test_without_the_token_every_operation_answers_a_documented_401(tmp_path: Path) -> None:
    with serving(tmp_path, "fuzz-token") as base:
        failures = fuzz(base, {})
    assert failures == [], "\n\n".join(failures)
