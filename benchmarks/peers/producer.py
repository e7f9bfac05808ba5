"""One producer process of the peer benchmark, for the Python systems; prints one JSON line.

    python producer.py SYSTEM --mode single|bulk|latency --n N [--chunk K] [--gap-ms G]

SYSTEM is `huey-plain`, `huey-priority`, `huey-sqlite` (with --name, --redis / --sqlite),
`celery` (run with .venv-celery's python; PEERS_REDIS_URL), `b3-jobs` (settings from the
B3JOBS_* / REDIS_URL / BUS_URL environment, events on the bus as `python -m runtime enqueue`
publishes them) or `b3-jobs-http` (bulk only: POST /api/v1/jobs/noop/bulk to --web HOST:PORT).

- single: N calls of the library's one-job call; call 0 is untimed (connections), rate over 1..N-1.
- bulk: N jobs in calls of --chunk jobs with the library's bulk call, or a loop where it has none.
- latency: N jobs one at a time, --gap-ms apart, each carrying `t` = time.time() just before its
  enqueue call; the handler's probe notes its start minus `t`.

b3-jobs with the bus holds a new job back (staged) until its `job:waiting` is on the bus; its
single and bulk rates are measured until the last job is visible to workers (`events.flush()`
returned), and `calls_rate` is the rate of the calls alone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from collections.abc import Callable
from typing import Any


def timed(call: Callable[[], Any], n: int) -> tuple[float, float]:
    """Call 0 untimed, then calls 1..n-1; (t0, t1) around them."""
    call()
    t0 = time.perf_counter()
    for _ in range(n - 1):
        call()
    return t0, time.perf_counter()


def paced(call: Callable[[dict[str, Any]], Any], n: int, gap_s: float) -> None:
    for _ in range(n):
        call({"t": time.time()})
        time.sleep(gap_s)


def huey_side(args: argparse.Namespace) -> dict[str, Any]:
    import huey
    from huey_app import make_huey

    _, task = make_huey(args.system.split("-", 1)[1], args.name, args.redis, args.sqlite)
    out: dict[str, Any] = {"version": huey.__version__}
    if args.mode == "single":
        t0, t1 = timed(lambda: task({}), args.n)
        out["rate"] = (args.n - 1) / (t1 - t0)
    elif args.mode == "bulk":  # Huey has no bulk enqueue (task.map is this loop)
        t0 = time.perf_counter()
        for _ in range(args.n):
            task({})
        out.update(rate=args.n / (time.perf_counter() - t0), api="loop of task()")
    else:
        paced(task, args.n, args.gap_ms / 1000)
    return out


def celery_side(args: argparse.Namespace) -> dict[str, Any]:
    import celery
    from celery import group
    from celery_app import noop

    out: dict[str, Any] = {"version": celery.__version__}
    if args.mode == "single":
        t0, t1 = timed(lambda: noop.delay({}), args.n)
        out["rate"] = (args.n - 1) / (t1 - t0)
    elif args.mode == "bulk":
        t0 = time.perf_counter()
        for done in range(0, args.n, args.chunk):
            group(noop.s({}) for _ in range(min(args.chunk, args.n - done))).apply_async()
        out.update(rate=args.n / (time.perf_counter() - t0), api="group(...).apply_async()")
    else:
        paced(noop.delay, args.n, args.gap_ms / 1000)
    return out


def b3_side(args: argparse.Namespace) -> dict[str, Any]:
    from bus.publisher import KombuPublisher
    from runtime.core.settings import Settings, bus_url
    from runtime.engine import Runtime

    settings = Settings.from_env()
    # What `python -m runtime enqueue` builds (runtime/cli.py _runtime(bus=True)).
    runtime = Runtime(settings, events=KombuPublisher(bus_url(settings), namespace=settings.namespace))
    out: dict[str, Any] = {"bus": bus_url(settings)}
    try:
        if args.mode == "single":
            t0, t1 = timed(lambda: runtime.enqueue("noop", {}), args.n)
            runtime.events.flush(300)
            out.update(rate=(args.n - 1) / (time.perf_counter() - t0), calls_rate=(args.n - 1) / (t1 - t0))
        elif args.mode == "bulk":
            t0 = time.perf_counter()
            for done in range(0, args.n, args.chunk):
                runtime.enqueue_many("noop", [{}] * min(args.chunk, args.n - done))
            t1 = time.perf_counter()
            runtime.events.flush(300)
            out.update(
                rate=args.n / (time.perf_counter() - t0), calls_rate=args.n / (t1 - t0), api="Runtime.enqueue_many"
            )
        else:
            paced(lambda payload: runtime.enqueue("noop", payload), args.n, args.gap_ms / 1000)
    finally:
        runtime.events.close()
        runtime.close()
    return out


def b3_http_side(args: argparse.Namespace) -> dict[str, Any]:
    if args.mode != "bulk":
        raise SystemExit("b3-jobs-http: only --mode bulk")
    host, port = args.web.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    t0 = time.perf_counter()
    for done in range(0, args.n, args.chunk):
        body = json.dumps({"jobs": [{"payload": {}}] * min(args.chunk, args.n - done)})
        conn.request("POST", "/api/v1/jobs/noop/bulk", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read()
        if response.status != 202:
            raise SystemExit("POST bulk: HTTP %d: %.300s" % (response.status, text))
    conn.close()
    return {"rate": args.n / (time.perf_counter() - t0), "api": "POST /api/v1/jobs/noop/bulk"}


SIDES = {
    "huey-plain": huey_side,
    "huey-priority": huey_side,
    "huey-sqlite": huey_side,
    "celery": celery_side,
    "b3-jobs": b3_side,
    "b3-jobs-http": b3_http_side,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(SIDES))
    parser.add_argument("--mode", choices=["single", "bulk", "latency"], required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--gap-ms", type=float, default=10)
    parser.add_argument("--name", default="peers", help="Huey: the app name (its key prefix)")
    parser.add_argument("--redis", help="Huey: the Redis URL")
    parser.add_argument("--sqlite", help="SqliteHuey: the database file")
    parser.add_argument("--web", help="b3-jobs-http: HOST:PORT of the web process")
    args = parser.parse_args()
    out = SIDES[args.system](args)
    print(json.dumps({"jobs": args.n, "mode": args.mode, **out}), flush=True)


if __name__ == "__main__":
    main()
