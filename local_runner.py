"""Everything in one process on the embedded defaults, for development.

python local_runner.py                                  consumer threads + cron scheduler (SQLite under ./var)
python local_runner.py invoke JOB --data '{"k": "v"}'   run one handler once, here, and print its result
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid

from bus.publisher import KombuPublisher
from bus.urls import redact
from runtime.cli import run_command
from runtime.core.context import JobContext
from runtime.core.errors import B3JobsError, InvalidArgument, ManifestError, UnknownJob
from runtime.core.events import ImmediateSink
from runtime.core.manifest import load_manifest
from runtime.core.records import encode_json
from runtime.core.settings import Settings, SettingsError, bus_url
from runtime.engine import Runtime, load_services
from runtime.web.app import build_web
from runtime.web.serve import WebThread, require_safe_bind, tune_gc
from runtime.worker.consumer import B3Consumer
from runtime.worker.executor import call_handler

log = logging.getLogger("b3jobs.local")


class PrintSink(ImmediateSink):
    """Shows the events an invoked handler emits, one JSON line each, on stderr."""

    label = "stderr"

    def emit(self, event: str, job: tuple[str, str] | None, data: dict[str, object]) -> None:
        self.published += 1
        print("event %s %s" % (event, encode_json(data).decode()), file=sys.stderr)


def invoke(settings: Settings, job_name: str, data: str) -> int:
    """Run one handler once in this process, like `serverless invoke local`."""
    manifest = load_manifest(settings.manifest)
    job = manifest.job(job_name)
    try:
        payload = job.payload_model.model_validate_json(data)
    except ValueError as exc:
        print("invalid --data for %s:\n%s" % (job_name, exc), file=sys.stderr)
        return 2
    ctx = JobContext(
        job_id="invoke-%s" % uuid.uuid4().hex[:8],
        job=job_name,
        attempt=1,
        max_attempts=1,
        timeout_s=job.spec.timeout,
        services=load_services(settings, manifest),
        events=PrintSink(),
    )
    try:
        result = call_handler(job, payload, ctx)
    except Exception as exc:
        log.exception("%s failed", job_name)
        print("%s failed: %s: %s" % (job_name, type(exc).__name__, exc), file=sys.stderr)
        return 1
    print(json.dumps(json.loads(encode_json(result)), indent=2, ensure_ascii=False))
    return 0


def run_start_commands(runtime: Runtime) -> None:
    """The app's commands that ask to run as the runner starts (the B3 app's: `seed --if-empty`, data to play with)."""
    for command in runtime.manifest.app.commands:
        if command.on_local_start is not None:
            argv = " ".join((command.name, *command.on_local_start))
            log.info("on start: python -m runtime %s", argv)
            code = run_command(command, command.on_local_start, runtime.services)
            if code != 0:
                log.warning("python -m runtime %s exited %d; starting anyway", argv, code)


def serve(settings: Settings, workers: int) -> int:
    """Consumer threads + cron in the main thread, the API and /ws on a web thread, events on memory://."""
    require_safe_bind(settings)
    tune_gc()
    url = bus_url(settings)
    events = KombuPublisher(url, namespace=settings.namespace)
    runtime = Runtime(settings, events=events)
    run_start_commands(runtime)
    web_thread = WebThread(build_web(settings, runtime, url=url), settings.host, settings.port).start()
    consumer = B3Consumer(runtime, workers=workers, worker_type="thread")
    log.info(
        "b3-jobs local runner: %d worker(s), %s at %s, API and /ws on http://%s:%d, jobs: %s. Ctrl-C stops.",
        workers,
        settings.backend,
        redact(settings.redis_url) if settings.redis_url else settings.sqlite_path,
        settings.host,
        web_thread.port,
        ", ".join(runtime.manifest.jobs) or "none",
    )
    try:
        consumer.run()
    finally:
        web_thread.stop()
        events.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="b3-jobs in one process")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("invoke", help="run one handler once and print its result")
    p.add_argument("job")
    p.add_argument("--data", default="{}", help="the payload as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        if args.command == "invoke":
            return invoke(settings, args.job, args.data)
        return serve(settings, args.workers)
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (UnknownJob, InvalidArgument, SettingsError) as exc:
        print(exc, file=sys.stderr)
        return 2
    except B3JobsError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
