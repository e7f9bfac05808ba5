"""The manifest: a good one loads into frozen models; a bad one gets every problem, with its path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, TEST_MANIFEST
from pydantic import ValidationError

from runtime.core.errors import ManifestError
from runtime.core.manifest import load_manifest

PYTHON = sys.executable


def write_project(tmp_path: Path, manifest: str, handlers: dict[str, str]) -> Path:
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "__init__.py").write_text("")
    for name, source in handlers.items():
        (tmp_path / "handlers" / ("%s.py" % name)).write_text(source)
    # Each test's project has its own `handlers` package: forget the one a previous test imported.
    for module in [m for m in sys.modules if m == "handlers" or m.startswith("handlers.")]:
        del sys.modules[module]
    path = tmp_path / "schedules.toml"
    path.write_text(textwrap.dedent(manifest))
    return path


HELLO = textwrap.dedent(
    """
    from pydantic import BaseModel
    from runtime import JobContext

    class Payload(BaseModel):
        name: str

    def handle(payload: Payload, ctx: JobContext) -> dict[str, str]:
        return {"greeting": "hello " + payload.name}
    """
)


def test_the_test_manifest_loads_into_frozen_models() -> None:
    manifest = load_manifest(TEST_MANIFEST)
    flaky = manifest.job("flaky")
    assert flaky.max_attempts == 3
    assert flaky.spec.backoff == "exponential"
    cron_job = manifest.job("every-minute")
    assert cron_job.cron is not None and str(cron_job.tz) == "America/Sao_Paulo"
    with pytest.raises(ValidationError):
        flaky.spec.retries = 9  # type: ignore[misc]


def test_the_shipped_manifest_is_valid() -> None:
    load_manifest(ROOT / "schedules.toml")


def test_every_problem_is_reported_with_its_path(tmp_path: Path) -> None:
    # Given a manifest with seven different mistakes
    path = write_project(
        tmp_path,
        """
        [defaults]
        retrys = 2

        [jobs.greet]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        retries = -1
        timout = 5
        input = { name = "x" }

        [jobs.nightly]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        cron = "0 25 * * *"
        timezone = "Mars/Olympus"
        input = { name = "x" }

        [jobs.missing]
        handler = "handlers.nowhere:handle"
        payload = "handlers.hello:Other"

        [jobs.Bad_Name]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        """,
        {"hello": HELLO + "\nclass Other(Payload):\n    pass\n"},
    )
    # When it is loaded
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    text = "\n".join(caught.value.problems)
    # Then each mistake is there, with its path
    assert "defaults.retrys: unknown key (did you mean 'retries'?)" in text
    assert "jobs.greet.retries: input should be greater than or equal to 0, got -1" in text
    assert "jobs.greet.timout: unknown key (did you mean 'timeout'?)" in text
    assert "jobs.nightly.cron: hour: 25 is outside 0-23" in text
    assert "jobs.nightly.timezone: unknown IANA timezone 'Mars/Olympus'" in text
    assert "jobs.missing.handler: cannot import 'handlers.nowhere:handle'" in text
    assert "jobs.Bad_Name: job names are kebab-case" in text
    # greet had schema errors, so its input check is not reached; nightly's input is fine


def test_semantic_problems(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """
        [jobs.greet]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Other"
        input = { name = "x" }
        backoff = "handlers.hello:nope"

        [jobs.cron-no-input]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        cron = "*/5 * * * *"

        [jobs.cron-bad-input]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        cron = "@daily"
        input = { nome = "typo" }

        [jobs.limited]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        rate_limit = { limit = 0, per = 1 }
        """,
        {"hello": HELLO + "\nclass Other(Payload):\n    pass\n"},
    )
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    text = "\n".join(caught.value.problems)
    assert "jobs.greet.payload: 'handlers.hello:Other' is not the handler's payload annotation (Payload)" in text
    assert "jobs.greet.input: only cron jobs take an input" in text
    assert "jobs.greet.backoff: cannot import 'handlers.hello:nope'" in text
    assert "jobs.cron-no-input.input: the payload model needs fields, so a cron job must set input" in text
    assert "jobs.cron-bad-input.input.name: Field required" in text
    assert "jobs.limited.rate_limit.limit: input should be greater than or equal to 1, got 0" in text


def test_not_valid_toml(tmp_path: Path) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text("[jobs.x\nhandler = 1\n")
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifest(path)


def test_check_prints_the_job_table_and_exits_0(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """
        [jobs.greet]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        retries = 4
        backoff = "exponential"
        timeout = 30
        """,
        {"hello": HELLO},
    )
    done = subprocess.run(
        [PYTHON, "-m", "runtime", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "B3JOBS_MANIFEST": str(path), "B3JOBS_DATA_DIR": str(tmp_path / "var")},
    )
    assert done.returncode == 0, done.stderr
    assert "greet" in done.stdout and "4 × exponential 1s" in done.stdout and "30s" in done.stdout


def test_check_with_problems_exits_2_and_lists_them(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """
        [jobs.greet]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        retries = "many"
        jitter = 3
        """,
        {"hello": HELLO},
    )
    done = subprocess.run(
        [PYTHON, "-m", "runtime", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "B3JOBS_MANIFEST": str(path), "B3JOBS_DATA_DIR": str(tmp_path / "var")},
    )
    assert done.returncode == 2
    assert "2 problem(s)" in done.stderr
    assert "jobs.greet.retries:" in done.stderr and "jobs.greet.jitter:" in done.stderr


# -- [app] and http triggers --------------------------------------------------------------------------

APP = textwrap.dedent(
    """
    from pydantic import BaseModel
    from runtime.cli import Command
    from runtime.web.api import Route

    async def nothing(request):
        raise NotImplementedError

    def build(settings):
        return {"built": True}

    ROUTES = [Route("GET", "/api/v1/hello", nothing, "Hello"), Route("POST", "/api/v1/greet", nothing, "Taken")]
    COMMANDS = [Command("wave", "wave", lambda args, services: 0),
                Command("status", "clashes", lambda args, services: 0)]
    NOT_A_LIST = 3

    class Status(BaseModel):
        status: str
    """
)


def test_the_shipped_manifest_plugs_in_the_b3_app() -> None:
    manifest = load_manifest(ROOT / "schedules.toml")
    assert manifest.app.services is not None and manifest.app.services.__module__ == "b3app.services"
    assert {route.path for route in manifest.app.routes} >= {"/api/v1/assets", "/api/v1/analysis"}
    assert [command.name for command in manifest.app.commands] == ["seed"]
    http = manifest.job("update-asset-prices").spec.http
    assert http is not None and (http.method, http.path) == ("POST", "/api/v1/assets/update/{ticker}")
    assert http.params == ["ticker"]


def test_without_an_app_table_the_app_has_nothing() -> None:
    app = load_manifest(TEST_MANIFEST).app
    assert (app.services, app.routes, app.commands) == (None, (), ())


def test_a_good_app_table_and_trigger_load(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """
        [app]
        services = "handlers.app:build"
        routes = "handlers.app:ROUTES"

        [jobs.greet]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        http = { path = "/api/v1/greet/{name}" }
        """,
        {"hello": HELLO, "app": APP},
    )
    manifest = load_manifest(path)
    assert manifest.app.services is not None and manifest.app.services(None) == {"built": True}
    assert [route.path for route in manifest.app.routes] == ["/api/v1/hello", "/api/v1/greet"]
    greet = manifest.job("greet")
    assert greet.spec.http is not None and greet.spec.http.method == "POST"
    assert greet.request_model is greet.payload_model  # no http.request: the payload model


def test_app_and_trigger_problems_are_reported_with_their_paths(tmp_path: Path) -> None:
    # Given an [app] table and http triggers with a mistake each
    path = write_project(
        tmp_path,
        """
        [ap]
        services = "x:y"

        [app]
        service = "handlers.app:build"
        routes = "handlers.app:NOT_A_LIST"
        commands = "handlers.app:COMMANDS"

        [jobs.greet]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        http = { method = "POST", path = "/api/v1/greet", metod = "GET" }

        [jobs.greet-by-path]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        http = { path = "/api/v1/greet/{who}" }

        [jobs.greet-twice]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        http = { method = "POST", path = "/api/v1/greet/{name}" }

        [jobs.greet-again]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        http = { method = "POST", path = "/api/v1/greet/{name}", request = "handlers.app:Nowhere" }

        [jobs.greet-status]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        http = { method = "GET", path = "no-slash", request = "handlers.app:Status" }
        """,
        {"hello": HELLO, "app": APP},
    )
    # When it is loaded
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    text = "\n".join(caught.value.problems)
    # Then each mistake is there, with its path and, for a typo, a hint
    assert "ap: unknown top-level key (did you mean 'app'?)" in text
    assert "app.service: unknown key (did you mean 'services'?); allowed keys: commands, routes, services" in text
    assert "jobs.greet.http.metod: unknown key (did you mean 'method'?); allowed keys: method, path, request" in text
    assert "jobs.greet-by-path.http.path: {who} is not a field of the request model; fields: name" in text
    assert "jobs.greet-again.http.request: cannot import 'handlers.app:Nowhere'" in text
    assert "jobs.greet-status.http.method: input should be 'POST' or 'PUT', got 'GET'" in text
    assert "jobs.greet-status.http.path: string should match pattern" in text


def test_app_parts_are_checked_once_imported(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """
        [app]
        services = "handlers.app:NOT_A_LIST"
        routes = "handlers.app:NOT_A_LIST"
        commands = "handlers.app:COMMANDS"

        [jobs.greet]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        http = { path = "/api/v1/greet/{name}" }

        [jobs.greet-too]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        http = { path = "/api/v1/greet/{name}" }

        [jobs.status]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        http = { path = "/api/v1/status", request = "handlers.app:Status" }
        """,
        {"hello": HELLO, "app": APP},
    )
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    text = "\n".join(caught.value.problems)
    assert "app.services: 'handlers.app:NOT_A_LIST' is not callable" in text
    assert "app.routes: 'handlers.app:NOT_A_LIST' must be a list of runtime.web.api.Route, got 3" in text
    assert "app.commands: 'status' is already a command" in text
    assert "jobs.greet-too.http: POST /api/v1/greet/{name} is also jobs.greet.http's route" in text
    assert "jobs.status.http: the request model's status would hide the answer's own jobId and status" in text
    assert "jobs.status.http.request: status not in the payload; payload fields: name" in text


def test_an_http_trigger_clashing_with_an_app_route_is_a_problem(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """
        [app]
        routes = "handlers.app:ROUTES"

        [jobs.greet]
        handler = "handlers.hello:handle"
        payload = "handlers.hello:Payload"
        http = { path = "/api/v1/greet" }
        """,
        {"hello": HELLO, "app": APP},
    )
    with pytest.raises(ManifestError, match=r"jobs.greet.http: POST /api/v1/greet is also app.routes's route"):
        load_manifest(path)
