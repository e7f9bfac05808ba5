"""Helpers for fault tests and the fault run: consumer subprocesses and a private redis-server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_MANIFEST = ROOT / "tests" / "schedules.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def consumer_env(namespace: str, data_dir: Path, redis_url: str | None, lease_s: float) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "B3JOBS_MANIFEST": str(TEST_MANIFEST),
        "B3JOBS_DATA_DIR": str(data_dir),
        "B3JOBS_NAMESPACE": namespace,
        "B3JOBS_LEASE_S": str(lease_s),
        "BUS_URL": "memory://",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def start_consumer(
    env: dict[str, str], workers: int = 2, worker_type: str = "thread", log: Path | None = None
) -> subprocess.Popen[bytes]:
    """A `python -m runtime consumer` in its own process group (so a kill takes its workers too)."""
    # The child keeps its own copy of the log's descriptor; ours is closed once it has started.
    with open(log, "ab") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime",
                "--log-level",
                "WARNING",
                "consumer",
                "--workers",
                str(workers),
                "--worker-type",
                worker_type,
                "--no-cron",
            ],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a consumer and everything it forked, like the OOM killer or a lost host."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            kill(proc)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far, from /proc."""
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class PrivateRedis:
    """A redis-server of our own on a free port, stopped by its pid: the shared one is never touched."""

    def __init__(self, directory: Path, aof: bool = False):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.dir = directory
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self) -> PrivateRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes" if self.aof else "no",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                time.sleep(0.1)  # let it finish loading the AOF
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start on %d" % self.port)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


def most_in_any_window(times: list[float], window_s: float) -> int:
    """The largest number of `times` inside any half-open window of `window_s` seconds."""
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def report(result: dict[str, object], json_path: Path | None) -> int:
    """Print a run's figures one per line (and append them as JSON); exit 0 when its promise held."""
    import json

    for key, value in result.items():
        print("%-30s %s" % (key, value))
    if json_path:
        with json_path.open("a") as out:
            out.write(json.dumps(result) + "\n")
    return 0 if result["promise_kept"] else 1
