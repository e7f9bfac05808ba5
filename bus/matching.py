"""Which subscriptions an event matches, at a cost that does not grow with what others subscribed.

A filter is one event-name pattern with its `where` (field → allowed values). The relay asks, once
per event, which filters match. Matching every filter of every client against every event let a
few clients with many patterns and long `where` lists cost milliseconds per event for everyone, so:

- per event name, the filters whose pattern matches it are worked out once and remembered;
- a filter with a `where` is found by its fields' values: `where` {a: [1, 2], b: "x"} is entered
  in a table for the fields (a, b) under (1, "x") and (2, "x"), and an event looks up its own
  (a, b) values there, so filters that want other values are never looked at.

An event then costs one lookup per distinct set of `where` fields (shared by every filter and
client that uses it; the relay bounds how many one connection may add), plus the filters that
really match it.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from bus.envelope import Envelope

Scalar = str | int | float | bool | None
WhereKey = tuple[tuple[str, frozenset[Scalar]], ...]
FilterKey = tuple[str, WhereKey]

MAX_NAMES_REMEMBERED = 4096

_MISSING = object()


def where_key(where: dict[str, Any] | None) -> WhereKey:
    """A hashable, order-free form of `where`: a scalar becomes a one-value "any of"."""
    if not where:
        return ()
    return tuple(sorted((k, frozenset(v) if isinstance(v, list) else frozenset((v,))) for k, v in where.items()))


@functools.lru_cache(maxsize=4096)
def name_matches(event: str, pattern: str) -> bool:
    """fnmatch on event names, remembered: there are few names and patterns, and many flushes."""
    return fnmatch.fnmatchcase(event, pattern)


def field_value(envelope: Envelope, name: str) -> Any:
    """The value a `where` key is compared with: the job name for `job`, else the data field."""
    if name == "job" and envelope.job is not None:
        return envelope.job.name
    return envelope.data.get(name, _MISSING)


def _allows(allowed: frozenset[Scalar], value: Any) -> bool:
    try:
        return value in allowed
    except TypeError:  # a list or an object: never equal to a JSON scalar
        return False


def filter_matches(key: FilterKey, envelope: Envelope) -> bool:
    pattern, where = key
    if not name_matches(envelope.event, pattern):
        return False
    return all(_allows(allowed, field_value(envelope, name)) for name, allowed in where)


def any_matches(keys: Iterable[FilterKey], envelope: Envelope) -> bool:
    return any(filter_matches(key, envelope) for key in keys)


class Filter:
    """One filter and the subscribers (any hashable: the relay's groups) that hold it."""

    __slots__ = ("combinations", "fields", "holders", "key", "pattern")

    def __init__(self, key: FilterKey) -> None:
        self.key = key
        self.pattern, where = key
        # `where` {a: [1, 2], b: ["x"]} is the value tuples (1, "x") and (2, "x") of the fields (a, b).
        self.fields = tuple(name for name, _ in where)
        self.combinations = frozenset(itertools.product(*(allowed for _, allowed in where))) if where else frozenset()
        self.holders: set[Any] = set()


def combinations(where: WhereKey) -> int:
    """How many value tuples a `where` stands for (what its filter puts in the index)."""
    count = 1
    for _, allowed in where:
        count *= len(allowed)
    return count


class NameIndex:
    """The filters whose pattern matches one event name: those without `where`, and the others by their
    fields' value tuple, one table per set of fields."""

    __slots__ = ("always", "by_fields")

    def __init__(self) -> None:
        self.always: list[Filter] = []
        self.by_fields: dict[tuple[str, ...], dict[tuple[Any, ...], list[Filter]]] = {}

    def add(self, f: Filter) -> None:
        if not f.fields:
            self.always.append(f)
            return
        table = self.by_fields.setdefault(f.fields, {})
        for values in f.combinations:
            table.setdefault(values, []).append(f)

    def discard(self, f: Filter) -> None:
        if not f.fields:
            if f in self.always:
                self.always.remove(f)
            return
        table = self.by_fields.get(f.fields, {})
        for values in f.combinations:
            found = table.get(values)
            if found is not None and f in found:
                found.remove(f)
                if not found:
                    del table[values]
        if not table:
            self.by_fields.pop(f.fields, None)

    def matching(self, envelope: Envelope) -> Iterator[Filter]:
        yield from self.always
        for fields, table in self.by_fields.items():
            values = tuple([field_value(envelope, name) for name in fields])
            try:
                found = table.get(values)
            except TypeError:  # a list or an object: never equal to a JSON scalar
                continue
            if found:
                yield from found


class Matcher:
    """The filters of every subscriber, indexed by event name and field value."""

    def __init__(self) -> None:
        self._filters: dict[FilterKey, Filter] = {}
        self._names: dict[str, NameIndex] = {}

    def __len__(self) -> int:
        return len(self._filters)

    def add(self, key: FilterKey, holder: Any) -> None:
        f = self._filters.get(key)
        if f is None:
            f = self._filters[key] = Filter(key)
            for name, index in self._names.items():
                if name_matches(name, f.pattern):
                    index.add(f)
        f.holders.add(holder)

    def discard(self, key: FilterKey, holder: Any) -> None:
        f = self._filters.get(key)
        if f is None:
            return
        f.holders.discard(holder)
        if not f.holders:
            del self._filters[key]
            for index in self._names.values():
                index.discard(f)

    def holders(self, envelope: Envelope) -> set[Any]:
        """Everyone holding a filter that matches the event (each once)."""
        index = self._names.get(envelope.event)
        if index is None:
            index = self._index(envelope.event)
        out: set[Any] = set()
        for f in index.matching(envelope):
            out |= f.holders
        return out

    def _index(self, name: str) -> NameIndex:
        if len(self._names) >= MAX_NAMES_REMEMBERED:
            self._names.clear()
        index = self._names[name] = NameIndex()
        for f in self._filters.values():
            if name_matches(name, f.pattern):
                index.add(f)
        return index
