"""The processes of a run: start them in their own process group, stop them by that id, read their probes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a process in a new session (its pgid is its pid), output appended to `log`."""
    with open(log, "ab") as out:
        out.write(("$ %s\n" % " ".join(cmd)).encode())
        out.flush()
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait_s: float = 10) -> None:
    """Stop a process we started, and whatever it forked, by its process group id; SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def run_json(cmd: list[str], env: dict[str, str], cwd: Path, timeout_s: float) -> dict[str, Any]:
    """Run a producer to the end; its last stdout line is a JSON object. Raises with its output if it fails."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            "%s exited %d: %s"
            % (Path(cmd[1]).name if len(cmd) > 1 else cmd[0], done.returncode, (done.stderr or done.stdout)[-800:])
        )
    return json.loads(lines[-1])


def wait_for(
    predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.02, alive: Callable[[], bool] = lambda: True
) -> T | None:
    """Poll predicate() until it returns something truthy; None on timeout or once alive() is False."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if not alive():
            return predicate() or None
        time.sleep(interval_s)
    return None


@dataclass
class ProbeTotals:
    """The noop calls of every worker process of a run (probe.py's files, or node/bullmq.js's)."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0
    lat_ms: list[float] = field(default_factory=list)
    processes: int = 0


def read_probes(directory: Path) -> ProbeTotals:
    totals = ProbeTotals()
    for path in directory.glob("*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):  # replaced while read: the next poll sees it
            continue
        totals.processes += 1
        totals.count += state["count"]
        totals.first = min(totals.first or state["first"], state["first"])
        totals.last = max(totals.last, state["last"])
        totals.lat_ms.extend(state["lat_ms"])
    return totals


def log_tail(log: Path, chars: int = 600) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""
