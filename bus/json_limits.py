"""JSON from outside (HTTP bodies, `/ws` messages), decoded with a bound on its nesting.

Decoders and validators recurse: a body of 100,000 `[` raised RecursionError deep inside them, a
500 for the caller. Here a document nested deeper than `MAX_DEPTH` is refused as such, before any
other code sees it.
"""

from __future__ import annotations

from typing import Any

import msgspec

MAX_DEPTH = 32


class BadJson(ValueError):
    """Not JSON, or nested deeper than the bound; the message says which."""


def decode(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """The decoded document, or BadJson."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadJson(str(exc)) from None
    except RecursionError:
        raise BadJson("nested deeper than %d levels" % max_depth) from None
    if not within_depth(value, max_depth, raw):
        raise BadJson("nested deeper than %d levels" % max_depth)
    return value


def within_depth(value: Any, max_depth: int, raw: bytes | str | None = None) -> bool:
    """Whether no array or object in `value` sits deeper than `max_depth` (the top one is level 1)."""
    if raw is not None:
        opening = (b"[", b"{") if isinstance(raw, bytes) else ("[", "{")
        if raw.count(opening[0]) + raw.count(opening[1]) <= max_depth:  # type: ignore[arg-type]
            return True  # fewer containers than levels: no need to walk
    if not isinstance(value, (dict, list)):
        return True
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                if depth >= max_depth:
                    return False
                stack.append((child, depth + 1))
    return True
