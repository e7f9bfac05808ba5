"""The bus's delivery promise, on real brokers (Redis and RabbitMQ): every subscriber sees every event
of every job exactly once and in lifecycle order, under concurrency, through narrow bindings, a
consumer's shutdown, a broker outage and a publisher that has fallen behind.

Subscribers are a `/ws` client of a web app bound to the bus, and raw Kombu queues of our own
(`Listener`), bound as a user's script would bind them. The brokers are shared with other tests:
every assertion looks at this test's own jobs and events only (by id), except "only X arrives",
which holds whoever published.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from conftest import CI, REDIS_URL, TEST_MANIFEST, require_redis, running_consumer, wait_for
from faults import PrivateRedis, consumer_env, start_consumer, stop
from kombu import Connection, Queue
from test_events_e2e import require_amqp, subscribe

from bus.envelope import Envelope, decode_batch
from bus.publisher import KombuPublisher, exchange, transport_options
from runtime.core.manifest import load_manifest
from runtime.core.settings import Settings
from runtime.engine import Runtime
from runtime.web.app import build_web

LIFECYCLE = ["job:waiting", "job:active", "job:completed"]  # what a noop job goes through


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "amqp"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """A real broker: the shared Redis (its own database for the bus) or RabbitMQ."""
    if request.param == "redis":
        return require_redis().rsplit("/", 1)[0] + "/13"
    return require_amqp()


def redis_bus_url() -> str:
    return require_redis().rsplit("/", 1)[0] + "/13"


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if CI:
            pytest.fail("CI=true but redis-server is not installed")
        pytest.skip("redis-server not installed")


def forget_bus_keys(url: str, namespace: str) -> None:
    """Remove what a Redis bus holds under this test's namespace (bindings, queues)."""
    if url.startswith("redis://"):
        r = redis.Redis.from_url(url)
        keys = list(r.scan_iter(match="%s:bus:*" % namespace))
        if keys:
            r.delete(*keys)


class Listener:
    """A raw Kombu consumer, as a user's script would write one: its own queue bound to `binding`.

    It decodes each message with `decode_batch` and keeps (routing key, envelope) in arrival order.
    Its queue outlives a broker restart (not auto-deleted; RabbitMQ drops it 2 minutes after the
    test in any case) and its thread reconnects until it is closed.
    """

    def __init__(self, url: str, binding: str, namespace: str):
        self.url = url
        self.namespace = namespace
        self.queue = Queue(
            "test.listener.%s" % uuid.uuid4().hex[:12],
            exchange=exchange(),
            routing_key=binding,
            durable=False,
            auto_delete=False,
            expires=120,
        )
        self.received: list[tuple[str, Envelope]] = []
        self.undecodable = 0
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-listener", daemon=True)

    def __enter__(self) -> Listener:
        self._thread.start()
        assert self._ready.wait(10), "listener on %s never bound its queue" % self.url
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closing.set()
        self._thread.join(5)
        try:
            with self._connect() as conn:
                self.queue.bind(conn.default_channel).delete()
        except Exception:  # the broker may be gone (outage tests); its queue goes with it
            pass

    def _connect(self) -> Connection:
        return Connection(self.url, transport_options=transport_options(self.url, self.namespace), connect_timeout=2)

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                with self._connect() as conn:
                    conn.ensure_connection(max_retries=1)
                    with conn.Consumer(
                        [self.queue], on_message=self._on_message, accept=["application/json"], no_ack=True
                    ):
                        self._ready.set()
                        while not self._closing.is_set():
                            with contextlib.suppress(TimeoutError):
                                conn.drain_events(timeout=0.1)
            except Exception:  # the broker is down: try again shortly
                time.sleep(0.1)

    def _on_message(self, message: Any) -> None:
        body = message.body
        key = message.delivery_info.get("routing_key", "")
        try:
            envelopes = decode_batch(body.encode() if isinstance(body, str) else body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.undecodable += 1
            return
        self.received.extend((key, e) for e in envelopes)

    def of(self, job_ids: set[str]) -> dict[str, list[str]]:
        """The event names received per job, in arrival order, for these jobs only."""
        seen: dict[str, list[str]] = defaultdict(list)
        for _, e in list(self.received):
            if e.job is not None and e.job.id in job_ids:
                seen[e.job.id].append(e.event)
        return seen


def completed_all(seen: dict[str, list[str]], job_ids: Iterable[str], last: str = "job:completed") -> bool:
    return all(last in seen.get(job_id, ()) for job_id in job_ids)


def out_of_order(
    seen: dict[str, list[str]], job_ids: Iterable[str], expected: list[str] = LIFECYCLE
) -> dict[str, list[str]]:
    """Jobs whose events are not exactly `expected`, in that order, each once."""
    return {job_id: seen.get(job_id, []) for job_id in job_ids if seen.get(job_id, []) != expected}


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        await asyncio.sleep(0.02)


class WsSeen:
    """What a /ws client received, per job id, in arrival order; reads frames in the background."""

    def __init__(self, ws: Any):
        self.ws = ws
        self.by_job: dict[str, list[str]] = defaultdict(list)
        self.probes: set[str] = set()
        self.closed_with: Any = None
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type.name != "TEXT":
                break
            frame = msg.json()
            for event in frame if isinstance(frame, list) else [frame]:
                if "op" in event:
                    continue
                if event["event"] == "test:probe":
                    self.probes.add(event["data"]["probe"])
                elif event["job"] is not None:
                    self.by_job[event["job"]["id"]].append(event["event"])
        self.closed_with = self.ws.close_code

    async def wait_bound(self, publisher: KombuPublisher) -> None:
        """Until the web app's bridge receives from the bus: a probe event published and seen."""
        probe = uuid.uuid4().hex
        deadline = time.monotonic() + 10
        while probe not in self.probes:
            assert time.monotonic() < deadline, "the web app's bridge never received from the bus"
            publisher.emit("test:probe", None, {"probe": probe})
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# -- 1. lifecycle order under concurrency ----------------------------------------------------------


PRODUCERS = 4
JOBS_PER_PRODUCER = 250


def produce(runtime: Runtime, start: threading.Barrier) -> list[str]:
    """One API process's share: half enqueued one by one, half in bulk batches of 25."""
    start.wait()
    ids = []
    half = JOBS_PER_PRODUCER // 2
    for _ in range(half):
        ids.append(runtime.enqueue("noop", {})[0].id)
    for _ in range(0, JOBS_PER_PRODUCER - half, 25):
        ids.extend(r.id for r, _ in runtime.enqueue_many("noop", [{}] * 25))
    return ids


async def test_under_concurrency_every_subscriber_sees_each_job_waiting_active_completed_once(
    broker_url: str, settings_for: Callable[..., Settings], aiohttp_client: Callable[..., Any]
) -> None:
    require_redis()
    settings = settings_for("redis")
    manifest = load_manifest(TEST_MANIFEST)
    runtimes: list[Runtime] = []

    def process() -> Runtime:
        """A runtime as a separate process has it: its own store connection and its own publisher."""
        runtime = Runtime(settings, manifest, events=KombuPublisher(broker_url, namespace=settings.namespace))
        runtimes.append(runtime)
        return runtime

    # Given a web app and a raw Kombu queue bound to `job.#`, both subscribed to the bus
    web_runtime = process()
    client = await aiohttp_client(build_web(settings, web_runtime, url=broker_url))
    ws = await client.ws_connect("/ws")
    await subscribe(ws, events=["job:*"], where={"job": "noop"})
    await subscribe(ws, events=["test:probe"])
    seen = WsSeen(ws)
    try:
        await seen.wait_bound(web_runtime.events)  # type: ignore[arg-type]
        with Listener(broker_url, "job.#", settings.namespace) as listener:
            # And two consumers running, each publishing on its own
            with running_consumer(process(), workers=4), running_consumer(process(), workers=4):
                # When 4 producers, as 4 API processes would, enqueue 1,000 jobs at once
                producers = [process() for _ in range(PRODUCERS)]
                barrier = threading.Barrier(PRODUCERS)
                with ThreadPoolExecutor(PRODUCERS) as pool:
                    futures = [asyncio.wrap_future(pool.submit(produce, p, barrier)) for p in producers]
                    job_ids = {i for ids in await asyncio.gather(*futures) for i in ids}
                assert len(job_ids) == PRODUCERS * JOBS_PER_PRODUCER
                # Then both subscribers see every one of them complete
                await until(lambda: completed_all(seen.by_job, job_ids), 30, "job:completed of every job on /ws")
                await until(
                    lambda: completed_all(listener.of(job_ids), job_ids), 10, "job:completed of every job on job.#"
                )
                await asyncio.sleep(0.3)  # room for a late duplicate to show up
            # And each saw, for every job, waiting before active before completed, each exactly once
            assert out_of_order(seen.by_job, job_ids) == {}
            assert out_of_order(listener.of(job_ids), job_ids) == {}
            assert listener.undecodable == 0
            assert all(key.startswith("job.") for key, _ in listener.received)
        assert seen.closed_with is None, "the relay closed the socket: %s" % seen.closed_with
        # And no publisher dropped anything
        for runtime in runtimes:
            assert runtime.events.flush(5)
            assert runtime.events.dropped == 0
    finally:
        await seen.stop()
        await ws.close()
        for runtime in runtimes:
            runtime.events.close()
        web_runtime.store.destroy()
        for runtime in runtimes:
            runtime.close()
        forget_bus_keys(broker_url, settings.namespace)


# -- 2. narrow bindings ----------------------------------------------------------------------------


TICKERS = ["PETR4", "VALE3", "ITUB4", "BBDC4", "BOVA11"]


def test_a_narrow_binding_receives_exactly_the_events_it_names(broker_url: str) -> None:
    namespace = "t%s" % uuid.uuid4().hex[:12]
    publisher = KombuPublisher(broker_url, namespace=namespace)
    try:
        with (
            Listener(broker_url, "asset.updated.#", namespace) as assets,
            Listener(broker_url, "job.completed.echo", namespace) as echo_done,
            Listener(broker_url, "*.*.PETR4", namespace) as petr4,
        ):
            # When one publisher emits the events of jobs of two names, mixed with domain events of several tickers
            asset_marks, echo_ids, petr4_marks = set(), set(), set()

            def domain(event: str, job: tuple[str, str] | None, ticker: str) -> None:
                mark = uuid.uuid4().hex
                publisher.emit(event, job, {"ticker": ticker, "price": 10.0, "mark": mark})
                if event == "asset:updated":
                    asset_marks.add(mark)
                if ticker == "PETR4":
                    petr4_marks.add(mark)

            for n in range(60):
                job = (uuid.uuid4().hex, "echo" if n % 2 else "noop")
                ticker = TICKERS[n % len(TICKERS)]
                publisher.emit("job:waiting", job, {})
                publisher.emit("job:active", job, {"attempt": 1})
                publisher.emit("job:progress", job, {"progress": 50, "ticker": ticker})
                domain("asset:updated", job, ticker)
                domain("analysis:completed", job, ticker)
                publisher.emit("job:completed", job, {"result": None, "ticker": ticker})
                if n % 3 == 0:
                    domain("asset:updated", None, ticker)  # an event of no job
                if job[1] == "echo":
                    echo_ids.add(job[0])
            assert publisher.flush(10)

            def marks(listener: Listener) -> list[str]:
                return [e.data["mark"] for _, e in list(listener.received) if "mark" in e.data]

            wait_for(lambda: set(marks(assets)) >= asset_marks, 10, what="every asset:updated on asset.updated.#")
            wait_for(lambda: set(echo_done.of(echo_ids)) == echo_ids, 10, what="every completion on job.completed.echo")
            wait_for(lambda: set(marks(petr4)) >= petr4_marks, 10, what="every PETR4 event on *.*.PETR4")
            time.sleep(0.3)  # room for anything that should not come
        # Then `asset.updated.#` received asset:updated events only, each of ours exactly once
        assert {e.event for _, e in assets.received} == {"asset:updated"}
        assert all(key.startswith("asset.updated.") for key, _ in assets.received)
        assert sorted(m for m in marks(assets) if m in asset_marks) == sorted(asset_marks)
        # And `job.completed.echo` received echo's completions only, each exactly once
        assert {(e.event, e.job.name if e.job else None) for _, e in echo_done.received} == {("job:completed", "echo")}
        assert echo_done.of(echo_ids) == {job_id: ["job:completed"] for job_id in echo_ids}
        # And `*.*.PETR4` received PETR4's domain events, each once: not job events, whose keys end in the job name
        assert all(key.endswith(".PETR4") and not key.startswith("job.") for key, _ in petr4.received)
        assert sorted(m for m in marks(petr4) if m in petr4_marks) == sorted(petr4_marks)
        assert publisher.dropped == 0
    finally:
        publisher.close()
        forget_bus_keys(broker_url, namespace)


# -- 3. a consumer stopped right after its last job ------------------------------------------------


CHATTER = (
    3_000  # events, each its own bus message, that the job emits just before it completes: a backlog at the signal
)


@pytest.mark.redis
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_consumer_stopped_right_after_its_last_job_has_published_all_its_events(
    sig: signal.Signals, settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    bus = redis_bus_url()
    settings = settings_for("redis")
    producer = Runtime(settings, load_manifest(TEST_MANIFEST), events=KombuPublisher(bus, namespace=settings.namespace))
    env = consumer_env(settings.namespace, tmp_path / "var", REDIS_URL, lease_s=5)
    env["BUS_URL"] = bus
    log = tmp_path / "consumer.log"
    consumer = None
    try:
        with Listener(bus, "#", settings.namespace) as listener:
            # Given a consumer process publishing on the Redis bus, and a job that ends with a burst of events
            consumer = start_consumer(env, workers=2, log=log)
            job_id = producer.enqueue("chatty", {"events": CHATTER, "keys": CHATTER})[0].id
            # When the consumer is stopped the moment that job is completed in the store
            deadline = time.monotonic() + 30
            while producer.store.get(job_id).state != "completed":  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the job did not complete: %s" % log.read_text()
                time.sleep(0.001)
            consumer.send_signal(sig)
            assert consumer.wait(20) == 0, log.read_text()
            # Then every event of the job reaches the listener, in order, once: it published them before it exited
            wait_for(
                lambda: "job:completed" in listener.of({job_id}).get(job_id, ()),
                10,
                what="job:completed at the listener; consumer log:\n%s" % log.read_text(),
            )
            time.sleep(0.2)
            events = listener.of({job_id})[job_id]
            assert events == ["job:waiting", "job:active", *["test:chatter"] * CHATTER, "job:completed"]
            chatter = [e.data["i"] for _, e in listener.received if e.event == "test:chatter"]
            assert chatter == list(range(CHATTER))
    finally:
        if consumer is not None:
            stop(consumer)
        producer.events.close()
        producer.store.destroy()
        producer.close()
        forget_bus_keys(bus, settings.namespace)


# -- 4. a broker outage with many jobs -------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "api-and-consumer-processes"])
def test_events_of_jobs_run_while_the_broker_is_down_all_arrive_once_it_is_back(
    processes: int, settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    require_redis_server()
    require_redis()
    # Given a bus broker that keeps its queues and bindings across a restart (AOF), as a production one would
    broker = PrivateRedis(tmp_path / "broker", aof=True).start()
    settings = settings_for("redis")
    manifest = load_manifest(TEST_MANIFEST)
    # And jobs enqueued and run in one process (one publisher), or in two (an API's and a consumer's)
    publishers = [KombuPublisher(broker.url, namespace=settings.namespace) for _ in range(processes)]
    api = Runtime(settings, manifest, events=publishers[0])
    worker = Runtime(settings, manifest, events=publishers[-1])
    try:
        with Listener(broker.url, "job.#", settings.namespace) as listener, running_consumer(worker, workers=4):
            # When the broker goes down for at least 3 s and 1,000 jobs are enqueued and run meanwhile
            broker.stop()
            stopped_at = time.monotonic()
            job_ids = [api.enqueue("noop", {})[0].id for _ in range(50)]
            job_ids += [r.id for r, _ in api.enqueue_many("noop", [{}] * 950)]
            # Then they all complete
            wait_for(
                lambda: api.counts()["noop"]["completed"] == len(job_ids),
                30,
                interval=0.1,
                what="the jobs to complete while the broker is down",
            )
            # And their events are kept (the last job:completed is emitted just after its record says so), none dropped
            wait_for(lambda: sum(p.buffered for p in publishers) == 3 * len(job_ids), 5, what="every event kept")
            assert [p.dropped for p in publishers] == [0] * processes
            # And once the broker is back every event of every one of them arrives, once
            time.sleep(max(0.0, 3.0 - (time.monotonic() - stopped_at)))
            broker.start()
            wait_for(
                lambda: (
                    all(len(events) == 3 for events in listener.of(set(job_ids)).values())
                    and len(listener.of(set(job_ids))) == len(job_ids)
                ),
                30,
                interval=0.1,
                what="every event after the broker came back",
            )
            time.sleep(0.3)
            seen = listener.of(set(job_ids))
            assert {job_id: sorted(seen[job_id]) for job_id in job_ids} == {
                job_id: sorted(LIFECYCLE) for job_id in job_ids
            }
            # And each process's events in the order it emitted them: with one process, the whole lifecycle.
            # Across processes the order is not promised after an outage: each kept its own events and
            # publishes them when it reconnects, so a consumer's job:active may come before the API's job:waiting.
            if processes == 1:
                assert out_of_order(seen, job_ids) == {}
            else:
                assert [j for j in job_ids if seen[j].index("job:active") > seen[j].index("job:completed")] == []
            assert [p.dropped for p in publishers] == [0] * processes
    finally:
        for publisher in publishers:
            publisher.close(1)
        broker.stop()
        api.store.destroy()
        api.close()
        worker.close()


# -- 6. back-pressure ------------------------------------------------------------------------------


def test_a_publisher_that_falls_behind_makes_emitters_wait_and_drops_nothing(broker_url: str) -> None:
    namespace = "t%s" % uuid.uuid4().hex[:12]
    # Given a publisher whose buffer holds 10 events
    publisher = KombuPublisher(broker_url, namespace=namespace, max_buffer=10)
    run = uuid.uuid4().hex
    threads, per_thread = 6, 500
    try:
        with Listener(broker_url, "job.progress.#", namespace) as listener:
            # When 6 threads emit 500 events each as fast as they can
            def emit(t: int) -> None:
                job = ("%s-%d" % (run, t), "bp-%d" % (t % 3))
                for n in range(per_thread):
                    publisher.emit("job:progress", job, {"progress": n})

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(emit, range(threads)))
            assert publisher.flush(10)
            # Then every event was published, none dropped
            assert (publisher.published, publisher.dropped, publisher.buffered) == (threads * per_thread, 0, 0)
            # And each thread's events arrive, all of them, in the order they were emitted
            ours = {"%s-%d" % (run, t) for t in range(threads)}

            def progress_by_job() -> dict[str, list[int]]:
                out: dict[str, list[int]] = defaultdict(list)
                for _, e in list(listener.received):
                    if e.job is not None and e.job.id in ours:
                        out[e.job.id].append(e.data["progress"])
                return out

            wait_for(
                lambda: sum(map(len, progress_by_job().values())) >= threads * per_thread,
                15,
                what="every event at the listener",
            )
            assert progress_by_job() == {job_id: list(range(per_thread)) for job_id in ours}
    finally:
        publisher.close()
        forget_bus_keys(broker_url, namespace)
