"""The CLI and local_runner as a newcomer uses them, in subprocesses, on a project of their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REDIS_URL, ROOT, require_redis, wait_for

PYTHON = sys.executable

NEW_JOB = textwrap.dedent(
    """
    from pydantic import BaseModel, Field
    from runtime import JobContext

    class Payload(BaseModel):
        ticker: str = Field(pattern=r"^[A-Z]{4}\\d{1,2}$")

    def handle(payload: Payload, ctx: JobContext) -> dict[str, str]:
        ctx.progress(100)
        return {"ticker": payload.ticker, "status": "priced"}
    """
)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """A fresh project: the real manifest's defaults, plus one job added the documented way."""
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "__init__.py").write_text("")
    # The real manifest's [defaults] only: the B3 app and its jobs' handlers live in the real project, not this one.
    defaults = "[defaults]" + (ROOT / "schedules.toml").read_text().split("\n[defaults]", 1)[1].split("\n[jobs.", 1)[0]
    (tmp_path / "schedules.toml").write_text(defaults)
    env = {
        "PATH": os.environ["PATH"],
        "B3JOBS_MANIFEST": str(tmp_path / "schedules.toml"),
        "B3JOBS_DATA_DIR": str(tmp_path / "var"),
        "B3JOBS_NAMESPACE": "cli%d" % os.getpid(),
        "PYTHONPATH": str(ROOT),
    }
    if request.param == "redis":
        env["REDIS_URL"] = require_redis()
    yield env
    if request.param == "redis":
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        for pattern in ("%s:*" % env["B3JOBS_NAMESPACE"], "huey.*.%s" % env["B3JOBS_NAMESPACE"]):
            keys = list(r.scan_iter(match=pattern))
            if keys:
                r.delete(*keys)


def cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "runtime", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_a_new_job_is_one_file_and_one_table(project: dict[str, str]) -> None:
    root = Path(project["B3JOBS_MANIFEST"]).parent
    # Given a handler file and a manifest table, and nothing else
    (root / "handlers" / "price_check.py").write_text(NEW_JOB)
    with open(root / "schedules.toml", "a") as manifest:
        manifest.write(
            '\n[jobs.price-check]\nhandler = "handlers.price_check:handle"\n'
            'payload = "handlers.price_check:Payload"\nretries = 1\n'
        )
    # Then check lists it
    checked = cli(project, "check", cwd=root)
    assert checked.returncode == 0, checked.stderr
    assert "price-check" in checked.stdout
    # And enqueue prints an id, the consumer runs it, and `job` shows it completed with its value
    enqueued = cli(project, "enqueue", "price-check", '{"ticker": "PETR4"}', cwd=root)
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip()
    consumer = subprocess.Popen(
        [PYTHON, "-m", "runtime", "consumer", "--workers", "2"],
        env=project,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def completed() -> dict[str, object] | None:
            shown = cli(project, "job", job_id, cwd=root)
            record = json.loads(shown.stdout) if shown.returncode == 0 else {}
            return record if record.get("state") == "completed" else None

        record = wait_for(completed, timeout=30, interval=0.3, what="price-check to complete")
    finally:
        consumer.send_signal(signal.SIGINT)
        _, err = consumer.communicate(timeout=20)
    assert consumer.returncode == 0, err
    assert record["result"] == {"ticker": "PETR4", "status": "priced"}
    assert (record["attempts"], record["progress"], record["name"]) == (1, 100, "price-check")
    status = cli(project, "status", cwd=root)
    assert status.returncode == 0 and "price-check" in status.stdout


def test_bad_input_exits_2_and_unknown_ids_exit_1(project: dict[str, str]) -> None:
    root = Path(project["B3JOBS_MANIFEST"]).parent
    (root / "handlers" / "price_check.py").write_text(NEW_JOB)
    with open(root / "schedules.toml", "a") as manifest:
        manifest.write(
            '\n[jobs.price-check]\nhandler = "handlers.price_check:handle"\npayload = "handlers.price_check:Payload"\n'
        )
    bad = cli(project, "enqueue", "price-check", '{"ticker": "petrobras"}', cwd=root)
    assert bad.returncode == 2
    assert "ticker: String should match pattern" in bad.stderr
    assert cli(project, "enqueue", "price-check", "{not json", cwd=root).returncode == 2
    assert cli(project, "enqueue", "no-such-job", cwd=root).returncode == 2
    missing = cli(project, "job", "does-not-exist", cwd=root)
    assert missing.returncode == 1 and "no job with id 'does-not-exist'" in missing.stderr
    assert cli(project, "retry", "does-not-exist", cwd=root).returncode == 1
    assert "no status" not in cli(project, "status", cwd=root).stderr


def test_local_runner_invoke_runs_one_handler_here(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "B3JOBS_MANIFEST": str(ROOT / "tests" / "schedules.toml"),
        "B3JOBS_DATA_DIR": str(tmp_path / "var"),
    }
    done = subprocess.run(
        [PYTHON, str(ROOT / "local_runner.py"), "invoke", "echo", "--data", '{"text": "oi"}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"echo": "oi", "attempt": 1}
    assert 'event test:echoed {"text":"oi"}' in done.stderr
    bad = subprocess.run(
        [PYTHON, str(ROOT / "local_runner.py"), "invoke", "echo", "--data", '{"text": ""}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "text" in bad.stderr


def test_local_runner_starts_on_defaults_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "B3JOBS_DATA_DIR": str(tmp_path / "var"),
        "B3JOBS_PORT": str(port),
    }
    runner = subprocess.Popen(
        [PYTHON, str(ROOT / "local_runner.py")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def call(path: str, method: str = "GET", body: object = None) -> dict[str, object]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            "http://127.0.0.1:%d%s" % (port, path),
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.load(resp)

    wait_for(healthy, timeout=15, interval=0.2, what="the local runner's /healthz")
    # The B3 jobs are there, and the first start seeded the usual tickers with sample history
    queues = call("/api/v1/queues")["queues"]
    assert [q["name"] for q in queues] == [
        "batch-update",
        "daily-update",
        "process-pending-analysis",
        "update-asset-prices",
    ]
    assets = call("/api/v1/assets")["assets"]
    assert len(assets) >= 15 and all(a["latest"]["source"] == "sample" for a in assets)
    # Offline, a price update and an analysis complete
    job_id = call("/api/v1/assets/update/PETR4", "POST")["jobId"]
    wait_for(
        lambda: call("/api/v1/jobs/%s" % job_id)["state"] == "completed",
        timeout=15,
        interval=0.2,
        what="the PETR4 update",
    )
    analysis_id = call("/api/v1/analysis", "POST", {"ticker": "PETR4"})["id"]
    analysis = wait_for(
        lambda: (a := call("/api/v1/analysis/%s" % analysis_id))["status"] == "completed" and a,
        timeout=15,
        interval=0.2,
        what="the PETR4 analysis",
    )
    assert analysis["result"]["signal"] in ("buy", "hold", "sell")
    assert runner.poll() is None
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=20)
    assert runner.returncode == 0, out
    assert "b3-jobs local runner" in out and "Consumer exiting" in out
    assert (tmp_path / "var" / "b3jobs.sqlite3").exists()
    assert (tmp_path / "var" / "market.sqlite3").exists()


def test_the_apps_commands_and_services_come_from_the_manifest(project: dict[str, str]) -> None:
    root = Path(project["B3JOBS_MANIFEST"]).parent
    # Given a project without an [app] table, seed is no command
    assert "invalid choice: 'seed'" in cli(project, "seed", cwd=root).stderr
    # When the manifest plugs the B3 app in
    manifest = root / "schedules.toml"
    manifest.write_text(
        '[app]\nservices = "b3app.services:build_services"\ncommands = "b3app.cli:COMMANDS"\n\n' + manifest.read_text()
    )
    # Then seed is listed, tracks the usual tickers once, and says so the second time with --if-empty
    assert "seed" in cli(project, "--help", cwd=root).stdout
    seeded = cli(project, "seed", "--history-days", "3", cwd=root)
    assert seeded.returncode == 0, seeded.stderr
    assert (
        "16 ticker(s) newly tracked, 16 given 3 sessions of sample history (48 daily bars, labelled sample)"
        in seeded.stdout
    )
    again = cli(project, "seed", "--if-empty", cwd=root)
    assert again.returncode == 0 and "nothing seeded" in again.stdout
    # And a bad setting of the app exits 2 with its line
    bad = cli({**project, "BRAPI_RATE_LIMIT": "lots"}, "seed", cwd=root)
    assert bad.returncode == 2
    assert "bad settings: BRAPI_RATE_LIMIT: expected LIMIT/SECONDS" in bad.stderr and "got 'lots'" in bad.stderr
    # And B3JOBS_SERVICES overrides the manifest's factory: one without a market store cannot seed
    other = cli({**project, "B3JOBS_SERVICES": "builtins:dict"}, "seed", cwd=root)
    assert other.returncode == 2 and "has no market store" in other.stderr
    missing = cli({**project, "B3JOBS_SERVICES": "nowhere:build"}, "seed", cwd=root)
    assert missing.returncode == 2 and "bad settings: B3JOBS_SERVICES: cannot import 'nowhere:build'" in missing.stderr


def test_bad_settings_exit_2_naming_the_variable(project: dict[str, str]) -> None:
    done = cli({**project, "B3JOBS_PORT": "eighty", "B3JOBS_LEASE_S": "0"}, "check")
    assert done.returncode == 2
    assert (
        "B3JOBS_PORT: Input should be a valid integer, unable to parse string as an integer, got 'eighty'"
        in done.stderr
    )
    assert "B3JOBS_LEASE_S: Input should be greater than or equal to 1, got '0'" in done.stderr


def with_price_check(project: dict[str, str]) -> Path:
    """The project's root, with the price-check job added the documented way."""
    root = Path(project["B3JOBS_MANIFEST"]).parent
    (root / "handlers" / "price_check.py").write_text(NEW_JOB)
    with open(root / "schedules.toml", "a") as manifest:
        manifest.write(
            '\n[jobs.price-check]\nhandler = "handlers.price_check:handle"\npayload = "handlers.price_check:Payload"\n'
        )
    return root


def price_check_count(project: dict[str, str], root: Path) -> int:
    status = cli(project, "status", cwd=root)
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if line.startswith("price-check"))
    return sum(int(n) for n in row.split()[1:])


def test_enqueue_file_enqueues_one_job_per_line_and_prints_their_ids_in_order(project: dict[str, str]) -> None:
    root = with_price_check(project)
    # Given a JSON Lines file, blank lines included
    (root / "payloads.jsonl").write_text('{"ticker": "PETR4"}\n\n{"ticker": "VALE3"}\n{"ticker": "ITUB4"}\n')
    # When it is enqueued in bulk
    done = cli(project, "enqueue", "price-check", "--file", "payloads.jsonl", "--priority", "2", cwd=root)
    # Then one id per payload is printed, in the file's order
    assert done.returncode == 0, done.stderr
    ids = done.stdout.splitlines()
    assert len(ids) == 3 and len(set(ids)) == 3
    records = [json.loads(cli(project, "job", job_id, cwd=root).stdout) for job_id in ids]
    assert [r["payload"]["ticker"] for r in records] == ["PETR4", "VALE3", "ITUB4"]
    assert {(r["state"], r["priority"]) for r in records} == {("waiting", 2)}
    assert "3 job(s) enqueued, 0 existed already" in done.stderr
    # And `-` reads the payloads from stdin
    piped = subprocess.run(
        [PYTHON, "-m", "runtime", "enqueue", "price-check", "--file", "-"],
        env=project,
        cwd=root,
        input='{"ticker": "BBDC4"}\n',
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    assert len(piped.stdout.split()) == 1
    assert price_check_count(project, root) == 4


def test_enqueue_file_with_a_bad_line_exits_2_naming_the_line_and_enqueues_nothing(project: dict[str, str]) -> None:
    root = with_price_check(project)
    # A line that is not JSON
    (root / "broken.jsonl").write_text('{"ticker": "PETR4"}\n\n{"ticker": "VALE3"\n{"ticker": "ITUB4"}\n')
    broken = cli(project, "enqueue", "price-check", "--file", "broken.jsonl", cwd=root)
    assert broken.returncode == 2
    assert "broken.jsonl:3: not valid JSON" in broken.stderr
    assert broken.stdout == ""
    # Lines that are JSON but not a valid payload: every one named by its line, after a blank line
    (root / "invalid.jsonl").write_text('{"ticker": "PETR4"}\n\n{"ticker": "petrobras"}\n{"ticker": "VALE3"}\n{}\n')
    invalid = cli(project, "enqueue", "price-check", "--file", "invalid.jsonl", cwd=root)
    assert invalid.returncode == 2
    assert "nothing enqueued" in invalid.stderr
    assert "invalid.jsonl:3: ticker: String should match pattern" in invalid.stderr
    assert "invalid.jsonl:5: ticker: Field required" in invalid.stderr
    assert invalid.stdout == ""
    # And neither file enqueued anything
    assert price_check_count(project, root) == 0
    # And --job-id makes no sense with --file
    assert cli(project, "enqueue", "price-check", "--file", "invalid.jsonl", "--job-id", "x", cwd=root).returncode == 2
