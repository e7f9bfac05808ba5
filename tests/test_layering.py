"""The layers, read from the source: the runtime knows jobs, not B3; market knows no queue; handlers stand alone.

Imports are parsed with `ast`, nothing is imported, and every breach is reported at once with its
file, line and import (`runtime/web/app.py:17: from b3app.routes import MARKET_ROUTES`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The B3 app's words, and their plurals; the runtime's source names none of them, in code, comments,
# strings or static files. Whole words, any case (regex `\b`): `asset:updated`, `b3app.routes`,
# `update-asset-prices` count; an identifier such as `_set_signal_handlers` (Huey's, which the
# consumer overrides) is one word of its own. "handler(s)" is the runtime's own word for the function a
# job runs, so it may appear in prose; importing the app's `handlers` package is what the import check forbids.
B3_WORDS = ("market", "b3app", "ticker", "brapi", "asset", "analysis", "seed")
PLURALS = ("markets", "tickers", "assets", "analyses", "seeds")
_B3_WORD = re.compile(r"\b(%s)\b" % "|".join(B3_WORDS + PLURALS), re.IGNORECASE)


@dataclass(frozen=True)
class Import:
    """One imported module as written in a file: `module` is absolute, `names` what a `from` takes."""

    where: str
    line: int
    module: str
    names: tuple[str, ...]
    text: str

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        return "%s:%d: %s" % (self.where, self.line, self.text)


def imports(package: str, root: Path = ROOT) -> Iterator[Import]:
    """Every import statement of every module under `package`, at any depth of the code."""
    for path in sorted((root / package).rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        where = path.relative_to(root)
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(str(where), node.lineno, alias.name, (), _text(source, node))
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                names = tuple(alias.name for alias in node.names)
                yield Import(str(where), node.lineno, _absolute(where, node), names, _text(source, node))


def _text(source: str, node: ast.stmt) -> str:
    return " ".join((ast.get_source_segment(source, node) or "").split())


def _absolute(where: Path, node: ast.ImportFrom) -> str:
    # `from .x import y` in handlers/a.py (or handlers/__init__.py) is handlers.x; `from . import y` is handlers.
    if node.level == 0:
        return node.module or ""
    package = where.parts[:-1]
    base = list(package[: len(package) - (node.level - 1)])
    return ".".join(base + ([node.module] if node.module else []))


def breaches(package: str, forbidden: set[str], root: Path = ROOT) -> list[str]:
    return [str(imp) for imp in imports(package, root) if imp.top in forbidden]


def report(rule: str, found: list[str]) -> str:
    return "%s; found %d:\n  %s" % (rule, len(found), "\n  ".join(found))


def public_runtime_api() -> set[str]:
    """The names runtime/__init__.py lists in `__all__`: the runtime's handler API."""
    tree = ast.parse((ROOT / "runtime" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("runtime/__init__.py: no __all__ listing the handler API")


def b3_words(text: str) -> list[str]:
    return [word.lower() for word in _B3_WORD.findall(text)]


# -- the rules ---------------------------------------------------------------------------------


def test_the_runtime_imports_nothing_of_the_b3_app() -> None:
    found = breaches("runtime", {"market", "handlers", "b3app"})
    assert not found, report("runtime/ imports nothing from market, handlers or b3app", found)


def test_market_imports_nothing_of_the_job_system() -> None:
    found = breaches("market", {"runtime", "bus", "handlers", "b3app"})
    assert not found, report("market/ imports nothing from runtime, bus, handlers or b3app", found)


def test_no_handler_imports_another_handler_or_a_queue_library() -> None:
    found = breaches("handlers", {"handlers", "huey", "kombu", "redis", "aiohttp", "bus", "b3app"})
    assert not found, report(
        "a handler imports no other handler (shared code lives in market/) and none of huey, kombu, redis,"
        " aiohttp, bus, b3app",
        found,
    )


def test_handlers_reach_the_runtime_through_its_public_api_only() -> None:
    public = public_runtime_api()
    found = [
        str(imp)
        for imp in imports("handlers")
        if imp.top == "runtime" and (imp.module != "runtime" or not set(imp.names) <= public)
    ]
    assert not found, report(
        "a handler takes from the runtime only `from runtime import %s`" % ", ".join(sorted(public)), found
    )


def test_the_runtime_source_names_no_b3_word() -> None:
    found = []
    for path in sorted(p for p in (ROOT / "runtime").rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        where = path.relative_to(ROOT)
        if words := b3_words(str(where)):
            found.append("%s: its path says %s" % (where, ", ".join(words)))
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            found.append("%s: not UTF-8 text, so not checked" % where)
            continue
        for number, line in enumerate(lines, 1):
            if words := b3_words(line):
                found.append("%s:%d: %s: %s" % (where, number, ", ".join(words), line.strip()))
    assert not found, report(
        "runtime/ knows jobs, not B3: no %s (plurals too) in any file" % ", ".join(sorted(B3_WORDS)), found
    )


# -- the reader ---------------------------------------------------------------------------------


def test_a_breach_is_told_with_its_file_line_and_import_wherever_it_hides(tmp_path: Path) -> None:
    # Given handlers that import another handler relatively, from a package's __init__, and a queue
    # library inside a function
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "__init__.py").write_text("from . import b\n")
    (tmp_path / "handlers" / "a.py").write_text(
        "from __future__ import annotations\nimport os\n\nfrom .b import (\n    helper,\n)\n\n\n"
        "def handle() -> None:\n    import kombu.messaging\n"
    )
    (tmp_path / "handlers" / "b.py").write_text("from market.events import asset_updated\n")
    # When the handler rule reads them
    found = breaches("handlers", {"handlers", "kombu"}, root=tmp_path)
    # Then each breach is named with its file, line and the import as written, and nothing else is
    assert found == [
        "handlers/__init__.py:1: from . import b",
        "handlers/a.py:4: from .b import ( helper, )",
        "handlers/a.py:10: import kombu.messaging",
    ]


def test_the_word_check_finds_whole_words_in_any_case() -> None:
    assert b3_words("(e.g. `asset:updated`) Update-Asset-Prices from b3app.routes; B3 Tickers; SEED") == [
        "asset",
        "asset",
        "b3app",
        "tickers",
        "seed",
    ]
    assert b3_words("the handler, marketing, seeded, _set_signal_handlers") == []
