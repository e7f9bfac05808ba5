"""The code a benchmark measures, pinned: a copy of the project taken at start, run from there.

Others edit runtime/, bus/ and tests/ while a benchmark runs, so a benchmark script calls
`pin_code(__file__)` before importing any of them: it copies the project's packages (every
top-level directory with an __init__.py), benchmarks/ (without what benchmarks/peers installs),
tests/schedules.toml, tests/testjobs/ and tests/faults.py to a temporary directory and re-runs
the script from there (PYTHONPATH, cwd). Every run of one invocation then measures the same code. `code_version()` names the commit it was copied from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the pinned copy, once pin_code() has re-run the script
ORIGIN = Path(os.environ.get("BENCH_ORIGIN", ROOT))  # the work tree the copy was taken from
COPY_PREFIX = "b3bench-code-"
PINNED_PARTS = (
    *sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()),
    "benchmarks",
    "tests/schedules.toml",
    "tests/testjobs",
    "tests/faults.py",
)
# Not code: what a benchmark installs for its peers (benchmarks/peers: node_modules, .venv-celery).
NOT_PINNED = ("__pycache__", "*.pyc", "*.jsonl", "fanout", "node_modules", ".venv*")


def pin_code(script: str) -> None:
    """Copy the code under test to a temporary directory and re-run `script` from there (once)."""
    if "BENCH_ORIGIN" in os.environ or "--table-from" in sys.argv:
        return
    copy = Path(tempfile.mkdtemp(prefix=COPY_PREFIX))
    skip = shutil.ignore_patterns(*NOT_PINNED)
    for part in PINNED_PARTS:
        (copy / part).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, copy / part, ignore=skip)
        else:
            shutil.copy2(ROOT / part, copy / part)
    env = dict(os.environ, BENCH_ORIGIN=str(ROOT), PYTHONPATH=str(copy))
    os.chdir(copy)
    pinned_script = copy / Path(script).resolve().relative_to(ROOT)  # benchmarks/x.py or benchmarks/peers/x.py
    os.execve(sys.executable, [sys.executable, str(pinned_script), *sys.argv[1:]], env)


def remove_copy() -> None:
    """Delete the pinned copy this process runs from (at the end of main)."""
    if ROOT != ORIGIN and ROOT.name.startswith(COPY_PREFIX):
        shutil.rmtree(ROOT, ignore_errors=True)


def code_version() -> str:
    """The commit measured, and the files of the pinned parts that had uncommitted changes."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ORIGIN, capture_output=True, text=True).stdout.strip()  # noqa: E731
    dirty = git("status", "--short", "--", *PINNED_PARTS).replace("\n", ", ")
    return "%s%s" % (git("rev-parse", "--short", "HEAD"), " + uncommitted: %s" % dirty if dirty else " (clean)")
