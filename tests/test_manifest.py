"""The manifest: a good one loads into frozen models; a bad one gets every problem, with its path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime.core.errors import ManifestError
from runtime.core.manifest import load_manifest

from conftest import ROOT, TEST_MANIFEST

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
        [PYTHON, "-m", "runtime", "check"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
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
        [PYTHON, "-m", "runtime", "check"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "B3JOBS_MANIFEST": str(path), "B3JOBS_DATA_DIR": str(tmp_path / "var")},
    )
    assert done.returncode == 2
    assert "2 problem(s)" in done.stderr
    assert "jobs.greet.retries:" in done.stderr and "jobs.greet.jitter:" in done.stderr
