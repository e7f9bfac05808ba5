"""CPU from /proc: what each of our processes used over a window, and what everything else used.

"Ours" is this benchmark process and every process it started (descendants, the private
redis-server among them), counting processes that exited and were reaped (their CPU moves to
the parent's cutime/cstime). "Foreign" is the machine's busy time minus ours: other people's
work on the shared cores. A run whose foreign CPU passes a threshold is a noisy run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")


def busy_jiffies() -> int:
    """Jiffies the machine's CPUs were busy since boot (user, nice, system, irq, softirq)."""
    user, nice, system, _idle, _iowait, irq, softirq = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    )
    return user + nice + system + irq + softirq


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, own jiffies, reaped children's jiffies) of a process, None if it is gone."""
    try:
        rest = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


def process_jiffies(pid: int) -> int:
    """utime + stime of one process (all its threads)."""
    stat = _stat(pid)
    return stat[1] if stat else 0


def our_jiffies() -> int:
    """This process, its descendants and what they reaped: everything the benchmark runs."""
    me = os.getpid()
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat:
                stats[int(entry.name)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [me]
    while stack:
        pid = stack.pop()
        if pid in stats:
            total += stats[pid][1] + stats[pid][2]
            stack.extend(children.get(pid, ()))
    return total


@dataclass(frozen=True)
class Sample:
    t: float
    busy: int
    ours: int
    roles: dict[str, int]


def sample(roles: dict[str, list[int]] | None = None) -> Sample:
    """Now: the machine's busy jiffies, ours, and each role's (its processes' own, summed)."""
    by_role = {role: sum(process_jiffies(p) for p in pids) for role, pids in (roles or {}).items()}
    return Sample(time.monotonic(), busy_jiffies(), our_jiffies(), by_role)


def between(a: Sample, b: Sample) -> dict[str, float]:
    """Cores used from a to b: per role, "ours", "foreign", and the window's "seconds"."""
    secs = max(b.t - a.t, 1e-9)
    out = {role: (b.roles[role] - a.roles.get(role, 0)) / HZ / secs for role in b.roles}
    ours = (b.ours - a.ours) / HZ / secs
    out.update(ours=ours, foreign=max(0.0, (b.busy - a.busy) / HZ / secs - ours), seconds=secs)
    return {k: round(v, 4) for k, v in out.items()}


def cpu_seconds(a: Sample, b: Sample, role: str) -> float:
    return (b.roles[role] - a.roles.get(role, 0)) / HZ


def wait_quiet(max_foreign: float, timeout_s: float, window_s: float = 1.0) -> tuple[float, float]:
    """Wait until others use at most `max_foreign` cores over a `window_s` window (or timeout_s passes).

    Returns (foreign cores of the last window, seconds waited).
    """
    start = time.monotonic()
    while True:
        a = sample()
        time.sleep(window_s)
        foreign = between(a, sample())["foreign"]
        waited = time.monotonic() - start
        if foreign <= max_foreign or waited >= timeout_s:
            return foreign, round(waited, 1)
