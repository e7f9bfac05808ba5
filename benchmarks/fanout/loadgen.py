"""A load-generator process: N websocket subscribers that count events and their latency.

    python benchmarks/fanout/loadgen.py --url http://127.0.0.1:8765/ws --connections 500
    python benchmarks/fanout/loadgen.py --url http://127.0.0.1:8765/socket.io/ --transport sio --connections 500

`--transport sio` speaks Socket.IO over engine.io's websocket transport (what socket.io-client 4
does with `transports: ["websocket"]`): the handshake `40{auth}` with the same filter, then one
`42["event",data,meta]` frame per event, pings answered.

Driven over stdin/stdout, one JSON line per answer:
    (start)  -> {"ready": N}            once every connection is open and subscribed
    RESET    -> {"reset": true}         zero the counters
    COUNT    -> {"received": n}
    REPORT   -> {"received", "per_conn_min", "per_conn_max", "frames", "closed", "hist", "cpu_s"}
    QUIT     -> exits

Latency = this process's time.time() at frame arrival minus the envelope's `ts` (its publish
time), in 0.1 ms buckets (`hist`: bucket -> count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from typing import Any

import aiohttp
import msgspec

BUCKET_S = 0.0001


class Stamp(msgspec.Struct):
    """The two envelope fields the load generator needs; control messages decode with ts == 0."""

    seq: int = 0
    ts: float = 0.0


decode_many = msgspec.json.Decoder(list[Stamp]).decode
decode_one = msgspec.json.Decoder(Stamp).decode
decode_sio = msgspec.json.Decoder(tuple[str, msgspec.Raw, Stamp]).decode
SUBSCRIPTION = {"events": ["asset:updated", "job:*"], "where": {"bench": "fanout"}}


class Counters:
    def __init__(self, connections: int) -> None:
        self.per_conn = [0] * connections
        self.hist: Counter[int] = Counter()
        self.frames = 0
        self.closed = 0

    def reset(self) -> None:
        self.per_conn = [0] * len(self.per_conn)
        self.hist = Counter()
        self.frames = 0


async def subscriber(
    session: aiohttp.ClientSession, url: str, index: int, counters: Counters, ready: asyncio.Queue[int]
) -> None:
    ws = await session.ws_connect(url, max_msg_size=0, decode_text=False, heartbeat=None)
    subscription = {"op": "subscribe", **SUBSCRIPTION}
    await ws.send_str(json.dumps(subscription))
    subscribed = False
    async for msg in ws:
        if msg.type is not aiohttp.WSMsgType.TEXT:
            continue
        now = time.time()
        data: bytes = msg.data
        stamps = decode_many(data) if data[:1] == b"[" else [decode_one(data)]
        if not subscribed:
            subscribed = True
            ready.put_nowait(index)
        counters.frames += 1
        hist = counters.hist
        for stamp in stamps:
            if stamp.ts:
                hist[int((now - stamp.ts) / BUCKET_S)] += 1
                counters.per_conn[index] += 1
    counters.closed += 1


async def sio_subscriber(
    session: aiohttp.ClientSession, url: str, index: int, counters: Counters, ready: asyncio.Queue[int]
) -> None:
    ws = await session.ws_connect(url + "?EIO=4&transport=websocket", max_msg_size=0, decode_text=False, heartbeat=None)
    subscribed = False
    async for msg in ws:
        if msg.type is not aiohttp.WSMsgType.TEXT:
            continue
        now = time.time()
        data: bytes = msg.data
        if data[:2] == b"42":
            counters.frames += 1
            stamp = decode_sio(data[2:])[2]
            counters.hist[int((now - stamp.ts) / BUCKET_S)] += 1
            counters.per_conn[index] += 1
        elif data[:1] == b"2":  # engine.io ping
            await ws.send_str("3")
        elif data[:1] == b"0":  # engine.io open: connect the default namespace with the filter
            await ws.send_str("40" + json.dumps(SUBSCRIPTION))
        elif data[:2] == b"40" and not subscribed:
            subscribed = True
            ready.put_nowait(index)
    counters.closed += 1


def report(counters: Counters) -> dict[str, Any]:
    times = os.times()
    return {
        "received": sum(counters.per_conn),
        "per_conn_min": min(counters.per_conn),
        "per_conn_max": max(counters.per_conn),
        "frames": counters.frames,
        "closed": counters.closed,
        "hist": dict(counters.hist),
        "cpu_s": times.user + times.system,
    }


def answer(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def read_commands(loop: asyncio.AbstractEventLoop, commands: asyncio.Queue[str]) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(commands.put_nowait, line.strip())
    loop.call_soon_threadsafe(commands.put_nowait, "QUIT")


async def main(url: str, connections: int, transport: str = "ws") -> None:
    connect = sio_subscriber if transport == "sio" else subscriber
    counters = Counters(connections)
    ready: asyncio.Queue[int] = asyncio.Queue()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    tasks = []
    for start in range(0, connections, 50):  # open in waves, not 500 SYNs at once
        wave = range(start, min(start + 50, connections))
        batch = [asyncio.create_task(connect(session, url, i, counters, ready)) for i in wave]
        tasks.extend(batch)
        for _ in batch:
            await asyncio.wait_for(ready.get(), 30)
    answer({"ready": connections})

    commands: asyncio.Queue[str] = asyncio.Queue()
    threading.Thread(target=read_commands, args=(asyncio.get_running_loop(), commands), daemon=True).start()
    while (command := await commands.get()) != "QUIT":
        if command == "RESET":
            counters.reset()
            answer({"reset": True})
        elif command == "COUNT":
            answer({"received": sum(counters.per_conn)})
        elif command == "REPORT":
            answer(report(counters))
    for task in tasks:
        task.cancel()
    await session.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--transport", choices=["ws", "sio"], default="ws")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.connections, args.transport))
