"""No pickle anywhere: the project never imports it, and a queued message is msgspec JSON."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import msgspec
import pytest
from conftest import ROOT

from runtime.engine import Runtime
from runtime.worker.serializer import MsgspecSerializer

PROJECT_DIRS = ["runtime", "bus", "market", "handlers", "benchmarks", "tests"]


def python_files() -> list[Path]:
    files = [ROOT / "local_runner.py"]
    for name in PROJECT_DIRS:
        files.extend((ROOT / name).rglob("*.py") if (ROOT / name).exists() else [])
    # Not the project's code: a benchmark's own venv of a peer (benchmarks/peers/.venv-celery).
    return [f for f in files if not any(part.startswith(".") for part in f.relative_to(ROOT).parts)]


def test_no_module_imports_or_uses_pickle() -> None:
    offenders = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                names = [node.value.id]
            if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle") for n in names):
                offenders.append("%s:%d" % (path.relative_to(ROOT), node.lineno))
    assert len(python_files()) > 10
    assert offenders == []


def raw_queued_message(runtime: Runtime, job_id: str) -> bytes:
    storage = runtime.huey.storage
    if runtime.settings.redis_url:
        return bytes(storage.conn.hget("%s:job:%s" % (runtime.settings.namespace, job_id), "msg"))
    (row,) = storage.sql("select msg from b3_jobs where id = ?", (job_id,), results=True)
    return bytes(row[0])


def test_a_queued_message_is_msgspec_json(runtime: Runtime) -> None:
    record, _ = runtime.enqueue("echo", {"text": "PETR4"}, priority=3)
    raw = raw_queued_message(runtime, record.id)
    decoded = json.loads(raw)
    assert decoded[0] == "m" and decoded[1] == record.id
    assert {"text": "PETR4", "times": 1} in decoded[5]
    assert runtime.huey.deserialize_task(raw).id == record.id


def test_a_crafted_pickle_is_refused_not_run() -> None:
    crafted = b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94."
    with pytest.raises(msgspec.DecodeError):
        MsgspecSerializer().deserialize(crafted)
