"""The Redis store's Lua scripts (`lua/*.lua`), loaded with `common.lua` in front and called by argument name.

Every script gets the store's namespace as its one key, and its arguments in the order its header
declares them on one line:

    -- ARGV: job_id, token, attempt, fields...

(a last name ending in `...` takes the rest, a list). Its first lines read each argument into a
local of that name (`local job_id = ARGV[1]`, `local fields = argv_from(4)`); loading a script
checks the two agree, and calling it checks it got exactly the declared names.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Sequence
from functools import cache, partial
from importlib.resources import files
from typing import Any

_DECLARED = re.compile(r"^-- ARGV: (.+)$", re.M)
_READ = re.compile(r"^local (\w+) = (?:\w+\()?ARGV\[(\d+)\]", re.M)
_READ_REST = re.compile(r"^local (\w+) = argv_from\((\d+)\)", re.M)


class ScriptError(Exception):
    """A Lua file that does not read the arguments its header declares (a bug in the file)."""


@cache
def source(name: str) -> str:
    """The text of `lua/<name>.lua`, read from the installed package."""
    return files("runtime.store").joinpath("lua", name + ".lua").read_text(encoding="utf-8")


def declared_args(name: str, text: str) -> tuple[list[str], str | None]:
    """A script's argument names in order, and the name of its variable tail (None without one)."""
    header = _DECLARED.search(text)
    if header is None:
        raise ScriptError("%s.lua: no '-- ARGV: name, ...' line in its header" % name)
    names = [n.strip() for n in header.group(1).split(",")]
    rest = names.pop().removesuffix("...") if names[-1].endswith("...") else None
    reads = ["%s = ARGV[%s]" % r for r in _READ.findall(text)]
    reads += ["%s = argv_from(%s)" % r for r in _READ_REST.findall(text)]
    expected = ["%s = ARGV[%d]" % (n, i) for i, n in enumerate(names, 1)]
    expected += ["%s = argv_from(%d)" % (rest, len(names) + 1)] if rest else []
    if reads != expected:
        raise ScriptError(
            "%s.lua: its header declares %s, so it should read %s; it reads %s"
            % (name, header.group(1), "; ".join(expected), "; ".join(reads) or "nothing")
        )
    return names, rest


class ThreadClients:
    """Dedicated connections for the threads that asked for one (`pin`): no pool checkout per call.

    redis-py's pool takes a lock and compares os.getpid() twice per command; on the hot path (a
    worker's one script call per job) that was a tenth of the consumer's CPU. Only long-lived
    threads pin one (a consumer's workers): a connection stays with its thread until the thread
    ends, so pinning from many short-lived threads would exhaust the pool. Other threads share
    the pool. A forked process starts with none of its parent's connections.
    """

    def __init__(self, client: Any) -> None:
        self._base = client
        self._local = threading.local()
        ref = weakref.ref(self)

        def forget_in_child() -> None:
            me = ref()
            if me is not None:
                me._forget()

        os.register_at_fork(after_in_child=forget_in_child)

    def _forget(self) -> None:
        self._local = threading.local()

    def pin(self) -> None:
        """Give the calling thread its own connection (once)."""
        if getattr(self._local, "client", None) is None:
            self._local.client = type(self._base)(
                connection_pool=self._base.connection_pool, single_connection_client=True
            )

    def get(self) -> Any:
        """The calling thread's own client, or None to use the pool."""
        return getattr(self._local, "client", None)


class Script:
    """One script of `lua/`, registered on a Redis client for one namespace."""

    def __init__(self, client: Any, ns: str, name: str, clients: ThreadClients | None = None) -> None:
        text = source(name)
        self.name = name
        self.ns = ns
        self._clients = clients
        self.args, self.rest = declared_args(name, text)
        self._names = {*self.args, *([self.rest] if self.rest else [])}
        self._run = client.register_script(source("common") + "\n" + text)

    def __call__(self, **args: Any) -> Any:
        """Run the script with its arguments by name (the variable tail, if any, as a sequence)."""
        if args.keys() != self._names:
            raise TypeError(
                "%s.lua takes %s; missing %s, unexpected %s"
                % (
                    self.name,
                    ", ".join([*self.args, *([self.rest + "..."] if self.rest else [])]),
                    sorted(self._names - args.keys()) or "none",
                    sorted(args.keys() - self._names) or "none",
                )
            )
        values = [args[n] for n in self.args]
        if self.rest:
            tail: Sequence[Any] = args[self.rest]
            values.extend(tail)
        return self._run(keys=[self.ns], args=values, client=self._clients.get() if self._clients else None)


class Scripts:
    """Every script of `lua/`, registered for one namespace: `scripts.finish(job_id=..., ...)`."""

    def __init__(self, client: Any, ns: str) -> None:
        self.clients = ThreadClients(client)
        script = partial(Script, client, ns, clients=self.clients)
        self.create = script("create")
        self.create_many = script("create_many")
        self.release_staged = script("release_staged")
        self.dequeue = script("dequeue")
        self.renew = script("renew")
        self.reap = script("reap")
        self.release = script("release")
        self.promote_due = script("promote_due")
        self.set_progress = script("set_progress")
        self.finish = script("finish")
        self.finish_take = script("finish_take")
        self.retry_later = script("retry_later")
        self.spawn = script("spawn")
        self.wait_children = script("wait_children")
        self.to_waiting = script("to_waiting")
        self.remove = script("remove")
        self.clean = script("clean")
        self.obliterate = script("obliterate")
