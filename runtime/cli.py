"""`python -m runtime ...`: check the manifest, run a consumer, enqueue and inspect jobs, and the app's commands.

The app's commands (`[app] commands` in the manifest) are listed with the runtime's own.

Exit codes: 0 ok, 1 the operation failed, 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.core.errors import (
    B3JobsError,
    InvalidArgument,
    InvalidState,
    JobNotFound,
    ManifestError,
    PayloadError,
    UnknownJob,
)
from runtime.core.manifest import Manifest, load_manifest
from runtime.core.records import STATES
from runtime.core.settings import Settings, SettingsError

OK, FAILURE, BAD_INPUT = 0, 1, 2


@dataclass(frozen=True)
class Command:
    """An app's own `python -m runtime NAME` command, listed by the manifest's `[app] commands`.

    `run(args, services)` gets its parsed arguments and the app's services (ctx.services) and
    returns the exit code; `on_local_start`, when set, are the arguments `local_runner.py` runs it
    with as it starts.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace, Any], int]
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    on_local_start: tuple[str, ...] | None = None


def run_command(command: Command, argv: Sequence[str], services: Any) -> int:
    """Run an app command with these arguments, outside the CLI (local_runner.py)."""
    parser = argparse.ArgumentParser(prog="python -m runtime %s" % command.name, description=command.help)
    command.arguments(parser)
    return command.run(parser.parse_args(list(argv)), services)


def _trigger(job: Any) -> str:
    spec = job.spec
    triggers = ["cron %s %s" % (spec.cron, spec.timezone)] if spec.cron else []
    if spec.http:
        triggers.append("%s %s" % (spec.http.method, spec.http.path))
    return ", ".join(triggers) or "on demand"


def _retries(job: Any) -> str:
    spec = job.spec
    if not spec.retries:
        return "none"
    if spec.backoff not in ("fixed", "exponential"):
        return "%d × %s" % (spec.retries, spec.backoff)
    cap = " ≤%gs" % spec.max_retry_delay if spec.backoff == "exponential" else ""
    jitter = " jitter %g" % spec.jitter if spec.jitter else ""
    return "%d × %s %gs%s%s" % (spec.retries, spec.backoff, spec.retry_delay, cap, jitter)


def _limits(job: Any) -> str:
    spec = job.spec
    parts = []
    if spec.priority:
        parts.append("priority %d" % spec.priority)
    if spec.expires:
        parts.append("expires %gs" % spec.expires)
    parts.append("keep %s/%s" % (spec.keep_completed.count, spec.keep_failed.count))
    if not spec.enabled:
        parts.append("DISABLED")
    return ", ".join(parts)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    manifest = load_manifest(settings.manifest)
    rows = [["JOB", "TRIGGER", "RETRIES/BACKOFF", "TIMEOUT", "LIMITS"]]
    for job in manifest.jobs.values():
        timeout = "%gs" % job.spec.timeout if job.spec.timeout else "none"
        rows.append([job.name, _trigger(job), _retries(job), timeout, _limits(job)])
    print(_table(rows))
    print("\n%d job(s) in %s: ok" % (len(manifest.jobs), manifest.path))
    return OK


def _runtime(settings: Settings, manifest: Manifest | None = None, bus: bool = False) -> Any:
    """A runtime; with bus=True its events go out on BUS_URL (else REDIS_URL, else memory://)."""
    from runtime.engine import Runtime

    events = None
    if bus:
        from bus.publisher import KombuPublisher
        from runtime.core.settings import bus_url

        url = bus_url(settings)
        if url.startswith("memory://"):
            logging.getLogger("b3jobs").warning(
                "BUS_URL is memory:// in a separate process: its events reach no web process. "
                "Set BUS_URL (or REDIS_URL) to publish them."
            )
        events = KombuPublisher(url, namespace=settings.namespace)
    return Runtime(settings, manifest, events=events)


def cmd_consumer(args: argparse.Namespace, settings: Settings) -> int:
    from runtime.worker.consumer import B3Consumer

    runtime = _runtime(settings, bus=True)
    consumer = B3Consumer(runtime, workers=args.workers, worker_type=args.worker_type, cron=not args.no_cron)
    logging.getLogger("b3jobs").info(
        "consumer: %d %s worker(s) on %s, jobs: %s",
        args.workers,
        args.worker_type,
        settings.backend,
        ", ".join(runtime.manifest.jobs),
    )
    consumer.run()
    return OK


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    if args.file is not None:
        return _enqueue_file(args, settings)
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        print("payload: not valid JSON: %s" % exc, file=sys.stderr)
        return BAD_INPUT
    runtime = _runtime(settings, bus=True)
    record, created = runtime.enqueue(args.job, payload, delay=args.delay, priority=args.priority, job_id=args.job_id)
    if not created:
        print("deduplicated: job %s already exists (%s)" % (record.id, record.state), file=sys.stderr)
    print(record.id)
    runtime.events.close()  # publish its job:waiting, which makes the job visible to workers
    return OK


def _enqueue_file(args: argparse.Namespace, settings: Settings) -> int:
    """`enqueue JOB --file payloads.jsonl`: one payload per line, enqueued in bulk; prints one id per line."""
    if args.job_id is not None:
        print("--job-id cannot be used with --file", file=sys.stderr)
        return BAD_INPUT
    payloads: list[Any] = []
    lines: list[int] = []  # the line number of each payload
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        print("--file: %s" % exc, file=sys.stderr)
        return BAD_INPUT
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            payloads.append(json.loads(line))
        except json.JSONDecodeError as exc:
            print("%s:%d: not valid JSON: %s" % (args.file, n, exc), file=sys.stderr)
            return BAD_INPUT
        lines.append(n)
    runtime = _runtime(settings, bus=True)
    try:
        # Every line is validated before any job is created (the store calls come after, in chunks).
        results = runtime.enqueue_many(args.job, payloads, delay=args.delay, priority=args.priority)
    except PayloadError as exc:
        print("invalid input for %s; nothing enqueued:" % exc.job, file=sys.stderr)
        for err in exc.errors:  # `3.payload.user_id`: item 3's field, shown at its line
            index, _, loc = err["loc"].partition(".")
            where = loc.removeprefix("payload.") if loc != "payload" else "payload"
            print("%s:%d: %s: %s" % (args.file, lines[int(index)], where, err["msg"]), file=sys.stderr)
        return BAD_INPUT
    created = 0
    for record, was_created in results:
        created += was_created
        print(record.id)
    print("%d job(s) enqueued, %d existed already" % (created, len(payloads) - created), file=sys.stderr)
    runtime.events.close()
    return OK


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    from runtime.web.serve import serve

    serve(settings)
    return OK


def cmd_job(args: argparse.Namespace, settings: Settings) -> int:
    record = _runtime(settings).get(args.id)
    print(json.dumps(record.to_dict(), indent=2, ensure_ascii=False))
    return OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    counts = _runtime(settings).counts()
    rows = [["JOB", *(s.upper() for s in STATES)]]
    for name, by_state in counts.items():
        rows.append([name, *(str(by_state[s]) for s in STATES)])
    print(_table(rows))
    return OK


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    runtime = _runtime(settings)
    if args.failed:
        print("%d failed %s job(s) queued again" % (runtime.retry_failed(args.failed), args.failed))
    elif args.id:
        record = runtime.retry(args.id)
        print("%s queued again (%s)" % (record.id, record.state))
    else:
        print("retry: give a job ID or --failed JOB", file=sys.stderr)
        return BAD_INPUT
    return OK


def cmd_control(args: argparse.Namespace, settings: Settings) -> int:
    """pause / resume / drain / obliterate a job name; promote / remove a job; clean old records."""
    runtime = _runtime(settings, bus=True)
    command = args.command
    if command == "pause":
        print("%s paused" % args.job if runtime.pause(args.job) else "%s was already paused" % args.job)
    elif command == "resume":
        print("%s resumed; %d job(s) waiting" % (args.job, runtime.resume(args.job)))
    elif command == "drain":
        print("%d waiting %s job(s) removed" % (runtime.drain(args.job), args.job))
    elif command == "obliterate":
        print("%d %s record(s) removed" % (runtime.obliterate(args.job, confirm=args.yes, force=args.force), args.job))
    elif command == "promote":
        print("%s now %s" % (args.id, runtime.promote(args.id).state))
    elif command == "remove":
        runtime.remove(args.id)
        print("%s removed" % args.id)
    elif command == "clean":
        print(
            "%d %s %s record(s) removed"
            % (runtime.clean(args.job, args.state, args.age, args.limit), args.state, args.job)
        )
    runtime.events.close()
    return OK


def cmd_schedules(args: argparse.Namespace, settings: Settings) -> int:
    runtime = _runtime(settings)
    now = dt.datetime.now(dt.UTC)
    rows = [["JOB", "CRON", "TIMEZONE", "NEXT RUN", "LAST RUN"]]
    for job in runtime.manifest.jobs.values():
        if job.cron is None:
            continue
        nxt = job.cron.next_after(now, job.tz).astimezone(job.tz).isoformat(timespec="minutes")
        last = runtime.store.last_tick(job.name)
        last_text = dt.datetime.fromtimestamp(last, job.tz).isoformat(timespec="minutes") if last else "never"
        rows.append(
            [job.name, job.spec.cron or "", job.spec.timezone, nxt if job.spec.enabled else "disabled", last_text]
        )
    print(_table(rows) if len(rows) > 1 else "no cron jobs in the manifest")
    return OK


def build_parser(app_commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime", description="b3-jobs: run and inspect jobs")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="validate the manifest and print the job table")
    p = sub.add_parser("consumer", help="run jobs")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--worker-type", choices=["thread", "process"], default="thread")
    p.add_argument("--no-cron", action="store_true", help="do not enqueue cron jobs from this consumer")
    sub.add_parser("web", help="serve the HTTP API and /ws on B3JOBS_HOST:B3JOBS_PORT")
    p = sub.add_parser("enqueue", help="enqueue a job; prints its id")
    p.add_argument("job")
    p.add_argument("payload", nargs="?", default="{}", help="the payload as JSON (default {})")
    p.add_argument("--delay", type=float, help="seconds to wait before it may run")
    p.add_argument("--priority", type=int, help="1 = most urgent")
    p.add_argument("--job-id", help="your own id; an existing id returns that job")
    p.add_argument("--file", help="enqueue in bulk: one JSON payload per line (JSON Lines; - reads stdin)")
    p = sub.add_parser("job", help="print a job's record as JSON")
    p.add_argument("id")
    sub.add_parser("status", help="counts per job and state")
    p = sub.add_parser("retry", help="run a failed job again")
    p.add_argument("id", nargs="?")
    p.add_argument("--failed", metavar="JOB", help="retry every failed job of this name")
    sub.add_parser("schedules", help="cron jobs with their next and last run")
    for name, text in (
        ("pause", "no consumer starts jobs of this name until resume"),
        ("resume", "let them start again"),
        ("drain", "remove every waiting job of this name"),
    ):
        sub.add_parser(name, help=text).add_argument("job")
    p = sub.add_parser("obliterate", help="remove a name's queue, records and totals")
    p.add_argument("job")
    p.add_argument("--yes", action="store_true", help="confirm: this deletes every job and record of the name")
    p.add_argument("--force", action="store_true", help="also while jobs of the name are running")
    sub.add_parser("promote", help="run a delayed job now").add_argument("id")
    sub.add_parser("remove", help="delete a job that is not running").add_argument("id")
    p = sub.add_parser("clean", help="delete old records of one state")
    p.add_argument("job")
    p.add_argument("--state", default="completed", choices=["completed", "failed", "waiting", "delayed"])
    p.add_argument("--age", type=float, default=0, help="only records older than this many seconds")
    p.add_argument("--limit", type=int, default=1000)
    for command in app_commands:
        command.arguments(sub.add_parser(command.name, help=command.help))
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "check": cmd_check,
    "consumer": cmd_consumer,
    "web": cmd_web,
    "enqueue": cmd_enqueue,
    "job": cmd_job,
    "status": cmd_status,
    "retry": cmd_retry,
    "schedules": cmd_schedules,
    **dict.fromkeys(["pause", "resume", "drain", "obliterate", "promote", "remove", "clean"], cmd_control),
}


def _manifest(settings: Settings, argv: Sequence[str]) -> Manifest | None:
    """The manifest, read before the arguments for its app's commands; None when it has problems and help is asked."""
    try:
        return load_manifest(settings.manifest)
    except ManifestError:
        if "-h" in argv or "--help" in argv:
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return BAD_INPUT
    try:
        manifest = _manifest(settings, argv)
        app_commands = {command.name: command for command in manifest.app.commands} if manifest else {}
        args = build_parser(list(app_commands.values())).parse_args(argv)
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        if args.command in app_commands:
            from runtime.engine import load_services

            assert manifest is not None
            return app_commands[args.command].run(args, load_services(settings, manifest))
        return COMMANDS[args.command](args, settings)
    except ManifestError as exc:
        print("manifest %s has %d problem(s):" % (settings.manifest, len(exc.problems)), file=sys.stderr)
        for problem in exc.problems:
            print("  " + problem, file=sys.stderr)
        return BAD_INPUT
    except PayloadError as exc:
        print("invalid input for %s:" % exc.job, file=sys.stderr)
        for err in exc.errors:
            print("  %s: %s" % (err["loc"] or "payload", err["msg"]), file=sys.stderr)
        return BAD_INPUT
    except (SettingsError, UnknownJob, InvalidArgument) as exc:
        print(str(exc), file=sys.stderr)
        return BAD_INPUT
    except (JobNotFound, InvalidState) as exc:
        print(str(exc), file=sys.stderr)
        return FAILURE
    except B3JobsError as exc:
        print(str(exc), file=sys.stderr)
        return FAILURE
