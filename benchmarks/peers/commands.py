"""Redis commands per job: INFO commandstats deltas, and MONITOR with each command's process named.

commandstats counts every command Redis ran, those inside Lua scripts included, whoever sent them.
MONITOR shows who sent each one: a client address (`127.0.0.1:54321`), or `lua` for a command a
script ran. The address is mapped to the process that owns the socket (from /proc/<pid>/fd and
/proc/net/tcp), so a round trip is charged to the consumer, the web process, the listener or the
producer. Phases are marked in the stream with `ECHO <marker>:<phase>` (MONITOR keeps the
server's order, so the split is exact).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import redis


def commandstats(client: redis.Redis) -> Counter[str]:
    """Calls per command since the server started (`cmdstat_evalsha` → `evalsha`)."""
    stats = client.info("commandstats")
    return Counter({name.lower().removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()})


def per_job(before: Counter[str], after: Counter[str], jobs: int, top: int = 6) -> dict[str, float]:
    """Commands per job between two commandstats: the total and the commonest ones."""
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
    delta.pop("info", None)  # our own INFO calls
    out = {"total": round(sum(delta.values()) / jobs, 2)}
    for name, calls in sorted(delta.items(), key=lambda kv: -kv[1])[:top]:
        out[name] = round(calls / jobs, 2)
    return out


def socket_owners(pids: dict[str, list[int]], server_port: int) -> dict[str, str]:
    """`127.0.0.1:<port>` of each TCP connection to the server → the role of the process holding it."""
    inode_role = {}
    for role, role_pids in pids.items():
        for pid in role_pids:
            try:
                for fd in os.listdir("/proc/%d/fd" % pid):
                    try:
                        target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                    except OSError:
                        continue
                    if target.startswith("socket:["):
                        inode_role[target[8:-1]] = role
            except OSError:
                continue
    owners = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(remote.split(":")[1], 16) == server_port and inode in inode_role:
            owners["127.0.0.1:%d" % int(local.split(":")[1], 16)] = inode_role[inode]
    return owners


class Monitor(threading.Thread):
    """Counts (phase, sender, command) from MONITOR until the `end` mark."""

    def __init__(self, url: str, marker: str):
        super().__init__(daemon=True)
        self.marker = marker.encode()
        self.client = redis.Redis.from_url(url)
        self.conn = self.client.connection_pool.get_connection()
        self.conn.send_command("MONITOR")
        self.conn.read_response()
        self.counts: Counter[tuple[str, str, str]] = Counter()  # (phase, client address or "lua", command)
        self.done = threading.Event()

    def mark(self, phase: str) -> None:
        self.client.echo(self.marker + b":" + phase.encode())

    def run(self) -> None:
        phase = None
        while True:
            line = self.conn.read_response()
            _ts, rest = line.split(b" ", 1)
            sender, command = rest[rest.index(b" ") + 1 :].split(b"]", 1)
            name = command.split(b'"', 2)[1].lower().decode()
            if name == "echo" and self.marker in command:
                phase = command.split(b":")[-1].rstrip(b'"').decode()
                if phase == "end":
                    break
            elif phase is not None:
                self.counts[(phase, sender.decode(), name)] += 1
        self.conn.disconnect()
        self.done.set()

    def by_role(self, phase: str, owners: dict[str, str], jobs: int) -> dict[str, dict[str, float]]:
        """Per job in `phase`: each role's round trips by command, and "lua" for commands inside scripts."""
        table: dict[str, Counter[str]] = {}
        for (p, sender, name), calls in self.counts.items():
            if p == phase:
                role = "lua" if sender == "lua" else owners.get(sender, "other")
                table.setdefault(role, Counter())[name] += calls
        out = {}
        for role, counter in table.items():
            out[role] = {
                "total": round(sum(counter.values()) / jobs, 2),
                **{k: round(v / jobs, 3) for k, v in counter.most_common(8)},
            }
        return out
