"""The Redis store's Lua files: they compile, read the arguments their headers declare, name keys as keys.py does."""

from __future__ import annotations

import inspect
import re
from importlib.resources import files

import pytest
import redis
from conftest import require_redis

from runtime.store.keys import Keys
from runtime.store.scripts import Script, ScriptError, Scripts, declared_args, source

SCRIPTS = sorted(p.name[:-4] for p in files("runtime.store").joinpath("lua").iterdir() if p.name.endswith(".lua"))
SCRIPTS.remove("common")

# Run with common.lua in front: the names of its `key` table, or one entry built with the given parts.
LIST_KEYS = "local names = {} for name in pairs(key) do names[#names + 1] = name end return names"
BUILD_KEY = "local k = key[ARGV[1]] if type(k) == 'function' then return k(unpack(ARGV, 2)) end return k"


@pytest.fixture
def client() -> redis.Redis:
    return redis.Redis.from_url(require_redis())


def lua(client: redis.Redis, body: str, *args: str) -> object:
    return client.eval(source("common") + "\n" + body, 1, "ns", *args)


@pytest.mark.redis
def test_every_script_compiles_with_common_in_front_and_the_store_registers_each(client: redis.Redis) -> None:
    for name in SCRIPTS:
        client.script_load(source("common") + "\n" + source(name))
    registered = {name for name, value in vars(Scripts(client, "t-lua-unused")).items() if isinstance(value, Script)}
    assert sorted(registered) == SCRIPTS


@pytest.mark.redis
def test_the_lua_key_names_are_the_ones_keys_py_builds(client: redis.Redis) -> None:
    # Given the key table common.lua builds, for the namespace "ns"
    names = sorted(n.decode() for n in lua(client, LIST_KEYS))  # type: ignore[union-attr]
    python = Keys("ns")
    for name in names:
        # When Lua and Python build the same key from the same parts
        member = getattr(python, name)
        parts = ["p%d" % i for i in range(len(inspect.signature(member).parameters))] if callable(member) else []
        expected = member(*parts) if callable(member) else member
        # Then they agree
        assert lua(client, BUILD_KEY, name, *parts).decode() == expected, name  # type: ignore[union-attr]
    # And every key a script uses is in the table
    used = {m for name in SCRIPTS for m in re.findall(r"\bkey\.(\w+)", source(name))}
    assert used <= set(names), used - set(names)


def test_every_script_reads_the_arguments_its_header_declares() -> None:
    for name in SCRIPTS:
        declared_args(name, source(name))  # raises ScriptError if not


def test_a_header_that_disagrees_with_the_reads_is_refused() -> None:
    # Given a header that says the second argument is `token`, and code that reads it as `attempt`
    text = "\n".join(
        [
            "-- ARGV: job_id, token, fields...",
            "local job_id = ARGV[1]",
            "local attempt = ARGV[2]",
            "local fields = argv_from(3)",
        ]
    )
    # When it is loaded, then it is refused, saying what it should read
    with pytest.raises(ScriptError, match=r"x\.lua: its header declares job_id, token, fields\.\.\."):
        declared_args("x", text)


@pytest.mark.redis
def test_a_call_must_name_exactly_the_declared_arguments(client: redis.Redis) -> None:
    remove = Script(client, "t-lua-unused", "remove")
    with pytest.raises(TypeError, match=r"remove.lua takes job_id, now; missing \['now'\], unexpected \['when'\]"):
        remove(job_id="a", when=1.0)
    assert remove(job_id="no-such-job", now=1.0) is None
