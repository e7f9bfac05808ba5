"""The Redis store's Lua scripts (`lua/*.lua`), loaded with `common.lua` in front and called by argument name.

Every script gets the store's namespace as its one key, and its arguments in the order its header
declares them on one line:

    -- ARGV: job_id, token, attempt, fields...

(a last name ending in `...` takes the rest, a list). Its first lines read each argument into a
local of that name (`local job_id = ARGV[1]`, `local fields = argv_from(4)`); loading a script
checks the two agree, and calling it checks it got exactly the declared names.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from typing import Any, Sequence

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
    reads = ["%s = ARGV[%s]" % r for r in _READ.findall(text)] + ["%s = argv_from(%s)" % r for r in _READ_REST.findall(text)]
    expected = ["%s = ARGV[%d]" % (n, i) for i, n in enumerate(names, 1)] + (["%s = argv_from(%d)" % (rest, len(names) + 1)] if rest else [])
    if reads != expected:
        raise ScriptError("%s.lua: its header declares %s, so it should read %s; it reads %s"
                          % (name, header.group(1), "; ".join(expected), "; ".join(reads) or "nothing"))
    return names, rest


class Script:
    """One script of `lua/`, registered on a Redis client for one namespace."""

    def __init__(self, client: Any, ns: str, name: str) -> None:
        text = source(name)
        self.name = name
        self.ns = ns
        self.args, self.rest = declared_args(name, text)
        self._run = client.register_script(source("common") + "\n" + text)

    def __call__(self, **args: Any) -> Any:
        """Run the script with its arguments by name (the variable tail, if any, as a sequence)."""
        expected = [*self.args, *([self.rest] if self.rest else [])]
        if set(args) != set(expected):
            raise TypeError(
                "%s.lua takes %s; missing %s, unexpected %s"
                % (self.name, ", ".join(expected), sorted(set(expected) - set(args)) or "none",
                   sorted(set(args) - set(expected)) or "none")
            )
        values = [args[n] for n in self.args]
        if self.rest:
            tail: Sequence[Any] = args[self.rest]
            values.extend(tail)
        return self._run(keys=[self.ns], args=values)
