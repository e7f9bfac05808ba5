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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.core.cron import Cron, CronError
from runtime.core.errors import ManifestError

if TYPE_CHECKING:  # the seam's types live where they are used: the web app and the CLI
    from runtime.cli import Command
    from runtime.web.api import Route

JOB_NAME = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
REF = r"^[\w.]+:\w+$"  # "package.module:attribute"
MAX_PRIORITY = 2_097_152  # BullMQ's range: 1 (most urgent) .. 2**21
PATH_PARAM = re.compile(r"\{(\w+)\}")
TOP_LEVEL = ("app", "defaults", "jobs")
QUEUED_FIELDS = ("jobId", "job_id", "status")  # what an HTTP trigger's 202 answer says besides the request


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


class Http(BaseModel):
    """A job's HTTP trigger: the request (path parameters, JSON body) validated into its payload, then enqueued."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: Literal["POST", "PUT"] = "POST"
    path: str = Field(pattern=r"^(/[\w.~-]+|/\{\w+\})+$")
    request: str | None = Field(default=None, pattern=REF)  # the request's model; default: the job's payload model

    @property
    def params(self) -> list[str]:
        return PATH_PARAM.findall(self.path)


class JobSpec(BaseModel):
    """One `[jobs.<name>]` table merged over `[defaults]`, as written, validated field by field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    handler: str = Field(pattern=REF)
    payload: str = Field(pattern=REF)
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
    http: Http | None = None

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
    request_model: type[BaseModel] | None = None  # validates the `http` trigger's requests

    @property
    def max_attempts(self) -> int:
        return self.spec.retries + 1


class AppSpec(BaseModel):
    """The `[app]` table: the plug-ins of the app that runs on the runtime, each `"module:attribute"`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    services: str | None = Field(default=None, pattern=REF)  # settings -> ctx.services
    routes: str | None = Field(default=None, pattern=REF)  # a list of runtime.web.api.Route
    commands: str | None = Field(default=None, pattern=REF)  # a list of runtime.cli.Command


@dataclass(frozen=True)
class App:
    """The `[app]` plug-ins, imported: the factory of ctx.services, HTTP routes, CLI commands (none by default)."""

    services: Callable[[Any], Any] | None = None
    routes: tuple[Route, ...] = ()
    commands: tuple[Command, ...] = ()


@dataclass(frozen=True)
class Manifest:
    path: Path
    jobs: dict[str, Job]
    app: App = App()

    def job(self, name: str) -> Job:
        from runtime.core.errors import UnknownJob

        try:
            return self.jobs[name]
        except KeyError:
            raise UnknownJob(name, sorted(self.jobs)) from None


def _fmt_loc(prefix: str, loc: tuple[Any, ...]) -> str:
    return ".".join([prefix, *(str(p) for p in loc)]) if loc else prefix


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys of the (nested) table at `loc`, so a hint names the keys that table takes."""
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        candidates = (*typing.get_args(annotation), annotation)
        nested = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)


def _pydantic_problems(prefix: str, exc: ValidationError, model: type[BaseModel]) -> list[str]:
    problems = []
    for err in exc.errors():
        path = _fmt_loc(prefix, err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            allowed = _allowed_keys(model, err["loc"][:-1])
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
                problems.append(
                    "%s.handler: must take (payload, ctx), %r takes %d argument(s)" % (at, spec.handler, len(params))
                )
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
        problems.append(
            "%s.retry_delay: must be <= max_retry_delay (%s), got %s" % (at, spec.max_retry_delay, spec.retry_delay)
        )
    if payload_model is not None:
        fields = sorted(payload_model.model_fields)
        for field in spec.dedupe:
            if field not in fields:
                problems.append("%s.dedupe: %r is not a payload field; fields: %s" % (at, field, ", ".join(fields)))
        if spec.rate_limit is not None and spec.rate_limit.key is not None and spec.rate_limit.key not in fields:
            problems.append(
                "%s.rate_limit.key: %r is not a payload field; fields: %s"
                % (at, spec.rate_limit.key, ", ".join(fields))
            )
    request_model = _resolve_http(at, spec.http, payload_model, problems) if spec.http is not None else None
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
        request_model=request_model,
    )


def _resolve_http(
    at: str, http: Http, payload_model: type[BaseModel] | None, problems: list[str]
) -> type[BaseModel] | None:
    """The model an HTTP trigger validates its requests with: `http.request`, else the payload model."""
    model = payload_model
    if http.request is not None:
        try:
            model = import_object(http.request)
        except Exception as exc:
            problems.append("%s.http.request: cannot import %r: %s" % (at, http.request, exc))
            return None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            problems.append("%s.http.request: %r is not a pydantic model" % (at, http.request))
            return None
    if model is None:
        return None
    fields = sorted(model.model_fields)
    if payload_model is not None and model is not payload_model:
        strays = sorted(set(fields) - set(payload_model.model_fields))
        if strays:
            problems.append(
                "%s.http.request: %s not in the payload; payload fields: %s"
                % (at, ", ".join(strays), ", ".join(sorted(payload_model.model_fields)))
            )
    for param in http.params:
        if param not in fields:
            problems.append(
                "%s.http.path: {%s} is not a field of the request model; fields: %s" % (at, param, ", ".join(fields))
            )
    hidden = sorted(set(QUEUED_FIELDS) & {*fields, *model.model_computed_fields})
    if hidden:
        problems.append(
            "%s.http: the request model's %s would hide the answer's own jobId and status" % (at, ", ".join(hidden))
        )
    return model


def _import_app_part(at: str, ref: str | None, problems: list[str], kind: type | None = None) -> Any:
    """The object `ref` names; for a list of `kind`, checked item by item. None (and a problem) when it is not."""
    if ref is None:
        return None
    try:
        value = import_object(ref)
    except Exception as exc:  # any import-time failure is a manifest problem, reported with its path
        problems.append("%s: cannot import %r: %s" % (at, ref, exc))
        return None
    if kind is None:
        if not callable(value):
            problems.append("%s: %r is not callable" % (at, ref))
            return None
        return value
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, kind) for item in value):
        problems.append("%s: %r must be a list of %s.%s, got %r" % (at, ref, kind.__module__, kind.__qualname__, value))
        return None
    return tuple(value)


def _resolve_app(raw: Any, problems: list[str]) -> App:
    """The `[app]` table, its plug-ins imported and checked."""
    if not isinstance(raw, dict):
        problems.append("app: must be a table")
        return App()
    try:
        spec = AppSpec.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_pydantic_problems("app", exc, AppSpec))
        return App()
    # Imported late: the CLI and the web app import this module.
    from runtime.cli import COMMANDS, Command
    from runtime.web.api import Route

    services = _import_app_part("app.services", spec.services, problems)
    routes = _import_app_part("app.routes", spec.routes, problems, Route) or ()
    commands = _import_app_part("app.commands", spec.commands, problems, Command) or ()
    seen: set[str] = set()
    for command in commands:
        if command.name in COMMANDS or command.name in seen:
            problems.append(
                "app.commands: %r is already a command; names taken: %s"
                % (command.name, ", ".join(sorted({*COMMANDS, *seen})))
            )
        seen.add(command.name)
    return App(services=services, routes=routes, commands=commands)


def _route_clashes(jobs: dict[str, Job], app: App, problems: list[str]) -> None:
    """Two HTTP triggers, or a trigger and an app route, on one method and path."""
    taken = {(route.method, route.path): "app.routes" for route in app.routes}
    for name, job in jobs.items():
        if job.spec.http is None:
            continue
        key = (job.spec.http.method, job.spec.http.path)
        if key in taken:
            problems.append("jobs.%s.http: %s %s is also %s's route" % (name, key[0], key[1], taken[key]))
        taken.setdefault(key, "jobs.%s.http" % name)


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate the manifest; raise ManifestError listing every problem."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(["%s: file not found" % path]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(["%s: not valid TOML: %s" % (path, exc)]) from None
    # The modules the manifest names (job functions, payload models, the app) are found next to it.
    root = str(path.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    problems: list[str] = []
    for key in sorted(set(raw) - set(TOP_LEVEL)):
        close = difflib.get_close_matches(key, TOP_LEVEL, n=1)
        problems.append(
            "%s: unknown top-level key%s; expected [app], [defaults] and [jobs.<name>] tables"
            % (key, " (did you mean %r?)" % close[0] if close else "")
        )
    app = _resolve_app(raw.get("app", {}), problems)
    allowed = sorted(JobSpec.model_fields)
    defaults = raw.get("defaults", {})
    jobs_raw = raw.get("jobs", {})
    if not isinstance(defaults, dict):
        problems.append("defaults: must be a table")
        defaults = {}
    for key in sorted(set(defaults) - set(allowed)):
        close = difflib.get_close_matches(key, allowed, n=1)
        problems.append(
            "defaults.%s: unknown key%s; allowed keys: %s"
            % (key, " (did you mean %r?)" % close[0] if close else "", ", ".join(allowed))
        )
    defaults = {k: v for k, v in defaults.items() if k in allowed}
    if not isinstance(jobs_raw, dict):
        problems.append("jobs: must be a table of [jobs.<name>] tables")
        jobs_raw = {}
    jobs: dict[str, Job] = {}
    for name, table in jobs_raw.items():
        if not re.match(JOB_NAME, name):
            problems.append("jobs.%s: job names are kebab-case (like nightly-report), got %r" % (name, name))
            continue
        if not isinstance(table, dict):
            problems.append("jobs.%s: must be a table" % name)
            continue
        try:
            spec = JobSpec.model_validate({**defaults, **table})
        except ValidationError as exc:
            problems.extend(_pydantic_problems("jobs.%s" % name, exc, JobSpec))
            continue
        job = _resolve(name, spec, problems)
        if job is not None:
            jobs[name] = job
    _route_clashes(jobs, app, problems)
    if problems:
        raise ManifestError(problems)
    return Manifest(path=path, jobs=jobs, app=app)
