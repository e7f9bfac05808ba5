#!/usr/bin/env python3
"""The two quick-start commands, with nothing but Python 3.11+ installed:

python3 dev.py run     create .venv if needed, then run b3-jobs on the embedded defaults
python3 dev.py test    create .venv if needed, then lint (ruff), type-check (mypy) and run the test suite;
                       with extra args, only pytest runs, with those args
python3 dev.py lint    ruff check, ruff format --check and mypy only
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
INPUTS = ("pyproject.toml", "constraints.txt")


def ensure_venv() -> None:
    """Install the pinned dependencies into .venv, again only when pyproject or constraints change."""
    if sys.version_info < (3, 11):  # noqa: UP036 (dev.py runs on whatever python3 the machine has)
        sys.exit("b3-jobs needs Python 3.11 or newer; this is %s" % sys.version.split()[0])
    digest = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in INPUTS)).hexdigest()
    stamp = VENV / ".b3jobs-installed"
    if stamp.exists() and stamp.read_text() == digest and PY.exists():
        return
    if not PY.exists():
        print("creating %s" % VENV, flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), "-e", "%s[test]" % ROOT], check=True)
    stamp.write_text(digest)


def main() -> int:
    command, *rest = sys.argv[1:] or ["help"]
    if command not in ("run", "test", "lint"):
        print(__doc__)
        return 0 if command == "help" else 2
    ensure_venv()
    os.chdir(ROOT)
    if command == "run":
        return subprocess.call([str(PY), "local_runner.py", *rest])
    if command == "lint" or not rest:
        status = lint()
        if status or command == "lint":
            return status
    return subprocess.call([str(PY), "-m", "pytest", *rest])


def lint() -> int:
    """ruff (lint and format) and mypy (strict on runtime/, bus/, market/, handlers/); 0 when all are clean."""
    for step in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
        print("$ %s" % " ".join(step), flush=True)
        status = subprocess.call([str(PY), "-m", *step])
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
