"""The manifest (`schedules.toml`): what runs, loaded into frozen models, every problem reported at once."""

from __future__ import annotations

import datetime as dt
import difflib
import importlib
import inspect
import re
import sys
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.core.cron import Cron, CronError
from runtime.core.errors import ManifestError

JOB_NAME = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
MAX_PRIORITY = 2_097_152  # BullMQ's range: 1 (most urgent) .. 2**21


class Keep(BaseModel):
    """How many finished records of one kind to keep, and for how long (seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    count: int | None = Field(default=None, ge=0)
    age: float | None = Field(default=None, gt=0)


class RateLimit(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    limit: int = Field(ge=1)
    per: float = Field(gt=0)
    key: str | None = None


class JobSpec(BaseModel):
    """One `[jobs.<name>]` table merged over `[defaults]`, as written, validated field by field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    handler: str = Field(pattern=r"^[\w.]+:\w+$")
    payload: str = Field(pattern=r"^[\w.]+:\w+$")
    description: str = ""
    cron: str | None = None
    timezone: str = "UTC"
    input: dict[str, Any] | None = None
    misfire: Literal["run_once", "skip"] = "run_once"
    enabled: bool = True
    retries: int = Field(default=0, ge=0, le=1000)
    backoff: str = "fixed"
    retry_delay: float = Field(default=1.0, ge=0)
    max_retry_delay: float = Field(default=3600.0, gt=0)
    jitter: float = Field(default=0.0, ge=0, le=1)
    timeout: float | None = Field(default=None, gt=0)
    expires: float | None = Field(default=None, gt=0)
    priority: int | None = Field(default=None, ge=1, le=MAX_PRIORITY)
    rate_limit: RateLimit | None = None
    concurrency: int | None = Field(default=None, ge=1)
    dedupe: tuple[str, ...] = ()
    children_fail: Literal["continue", "fail_parent"] = "fail_parent"
    max_stalls: int = Field(default=3, ge=1)
    keep_completed: Keep = Keep(count=100)
    keep_failed: Keep = Keep(count=1000)

    @field_validator("backoff")
    @classmethod
    def _backoff(cls, value: str) -> str:
        if value in ("fixed", "exponential") or ":" in value:
            return value
        raise ValueError('must be "fixed", "exponential" or "module:function", got %r' % value)


@dataclass(frozen=True)
class Job:
    """A manifest job, resolved: its handler, payload model, backoff and schedule ready to use."""

    name: str
    spec: JobSpec
    handler: Callable[..., Any]
    payload_model: type[BaseModel]
    backoff: Callable[[int], float] | None  # custom backoff, else None
    cron: Cron | None
    tz: ZoneInfo
    is_async: bool

    @property
    def max_attempts(self) -> int:
        return self.spec.retries + 1


@dataclass(frozen=True)
class Manifest:
    path: Path
    jobs: dict[str, Job]

    def job(self, name: str) -> Job:
        from runtime.core.errors import UnknownJob

        try:
            return self.jobs[name]
        except KeyError:
            raise UnknownJob(name, sorted(self.jobs)) from None


def _fmt_loc(prefix: str, loc: tuple[Any, ...]) -> str:
    return ".".join([prefix, *(str(p) for p in loc)]) if loc else prefix


def _pydantic_problems(prefix: str, exc: ValidationError, allowed: list[str]) -> list[str]:
    problems = []
    for err in exc.errors():
        path = _fmt_loc(prefix, err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = " (did you mean %r?)" % close[0] if close else ""
            problems.append("%s: unknown key%s; allowed keys: %s" % (path, hint, ", ".join(allowed)))
        elif err["type"] == "missing":
            problems.append("%s: required key is missing" % path)
        else:
            problems.append("%s: %s, got %r" % (path, err["msg"][0].lower() + err["msg"][1:], err.get("input")))
    return problems


def import_object(ref: str) -> Any:
    """Import `"package.module:attribute"`."""
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError("module %r has no attribute %r" % (module_name, attr)) from None


def _resolve(name: str, spec: JobSpec, problems: list[str]) -> Job | None:
    at = "jobs.%s" % name
    before = len(problems)
    handler = payload_model = backoff = None
    try:
        handler = import_object(spec.handler)
        if not callable(handler):
            problems.append("%s.handler: %r is not callable" % (at, spec.handler))
    except Exception as exc:  # any import-time failure is a manifest problem, reported with its path
        problems.append("%s.handler: cannot import %r: %s" % (at, spec.handler, exc))
    try:
        payload_model = import_object(spec.payload)
        if not (isinstance(payload_model, type) and issubclass(payload_model, BaseModel)):
            problems.append("%s.payload: %r is not a pydantic model" % (at, spec.payload))
            payload_model = None
    except Exception as exc:
        problems.append("%s.payload: cannot import %r: %s" % (at, spec.payload, exc))
    if callable(handler) and payload_model is not None:
        try:
            hints = typing.get_type_hints(handler)
            params = list(inspect.signature(handler).parameters)
        except Exception as exc:
            problems.append("%s.handler: cannot read the signature of %r: %s" % (at, spec.handler, exc))
        else:
            annotation = hints.get(params[0]) if params else None
            if len(params) != 2:
                problems.append("%s.handler: must take (payload, ctx), %r takes %d argument(s)" % (at, spec.handler, len(params)))
            elif annotation is not payload_model:
                problems.append(
                    "%s.payload: %r is not the handler's payload annotation (%s)"
                    % (at, spec.payload, getattr(annotation, "__qualname__", annotation))
                )
    if spec.backoff not in ("fixed", "exponential"):
        try:
            backoff = import_object(spec.backoff)
            if not callable(backoff):
                problems.append("%s.backoff: %r is not callable" % (at, spec.backoff))
        except Exception as exc:
            problems.append("%s.backoff: cannot import %r: %s" % (at, spec.backoff, exc))
    try:
        tz = ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append("%s.timezone: unknown IANA timezone %r" % (at, spec.timezone))
        tz = ZoneInfo("UTC")
    cron = None
    if spec.cron is not None:
        try:
            cron = Cron.parse(spec.cron)
            cron.next_after(dt.datetime.now(tz), tz)
        except CronError as exc:
            problems.append("%s.cron: %s" % (at, exc))
    if spec.input is not None and spec.cron is None:
        problems.append("%s.input: only cron jobs take an input (set cron, or remove input)" % at)
    if spec.input is not None and payload_model is not None:
        try:
            payload_model.model_validate(spec.input)
        except ValidationError as exc:
            for err in exc.errors():
                problems.append("%s: %s" % (_fmt_loc(at + ".input", err["loc"]), err["msg"]))
    if spec.cron is not None and spec.input is None and payload_model is not None:
        try:
            payload_model.model_validate({})
        except ValidationError:
            problems.append("%s.input: the payload model needs fields, so a cron job must set input" % at)
    if spec.retry_delay > spec.max_retry_delay:
        problems.append("%s.retry_delay: must be <= max_retry_delay (%s), got %s" % (at, spec.max_retry_delay, spec.retry_delay))
    if payload_model is not None:
        fields = sorted(payload_model.model_fields)
        for field in spec.dedupe:
            if field not in fields:
                problems.append("%s.dedupe: %r is not a payload field; fields: %s" % (at, field, ", ".join(fields)))
        if spec.rate_limit is not None and spec.rate_limit.key is not None and spec.rate_limit.key not in fields:
            problems.append("%s.rate_limit.key: %r is not a payload field; fields: %s" % (at, spec.rate_limit.key, ", ".join(fields)))
    if len(problems) > before:
        return None
    assert handler is not None and payload_model is not None
    return Job(
        name=name,
        spec=spec,
        handler=handler,
        payload_model=payload_model,
        backoff=backoff,
        cron=cron,
        tz=tz,
        is_async=inspect.iscoroutinefunction(handler),
    )


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate the manifest; raise ManifestError listing every problem."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(["%s: file not found" % path]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(["%s: not valid TOML: %s" % (path, exc)]) from None
    # Handlers are found next to the manifest, as `handlers.<module>`.
    root = str(path.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    problems: list[str] = []
    for key in sorted(set(raw) - {"defaults", "jobs"}):
        problems.append("%s: unknown top-level key; expected [defaults] and [jobs.<name>] tables" % key)
    allowed = sorted(JobSpec.model_fields)
    defaults = raw.get("defaults", {})
    jobs_raw = raw.get("jobs", {})
    if not isinstance(defaults, dict):
        problems.append("defaults: must be a table")
        defaults = {}
    for key in sorted(set(defaults) - set(allowed)):
        close = difflib.get_close_matches(key, allowed, n=1)
        problems.append("defaults.%s: unknown key%s; allowed keys: %s" % (key, " (did you mean %r?)" % close[0] if close else "", ", ".join(allowed)))
    defaults = {k: v for k, v in defaults.items() if k in allowed}
    if not isinstance(jobs_raw, dict):
        problems.append("jobs: must be a table of [jobs.<name>] tables")
        jobs_raw = {}
    jobs: dict[str, Job] = {}
    for name, table in jobs_raw.items():
        if not re.match(JOB_NAME, name):
            problems.append("jobs.%s: job names are kebab-case (like update-asset-prices), got %r" % (name, name))
            continue
        if not isinstance(table, dict):
            problems.append("jobs.%s: must be a table" % name)
            continue
        try:
            spec = JobSpec.model_validate({**defaults, **table})
        except ValidationError as exc:
            problems.extend(_pydantic_problems("jobs.%s" % name, exc, allowed))
            continue
        job = _resolve(name, spec, problems)
        if job is not None:
            jobs[name] = job
    if problems:
        raise ManifestError(problems)
    return Manifest(path=path, jobs=jobs)
