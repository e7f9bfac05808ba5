"""A publisher process for the fan-out benchmark: `bus.publisher.KombuPublisher` at a fixed rate.

    python benchmarks/fanout/publisher.py --bus redis://127.0.0.1:6379/15 --namespace N --rate 200 --duration 10

Emits `asset:updated` events (the same shape as the in-process source) on schedule, then flushes
and prints {"emitted", "published", "dropped", "seconds"} as one JSON line. Each envelope's `ts`
is stamped at emit(), so the latency measured by the load generators includes the bus.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bus.publisher import KombuPublisher

TICKERS = ["PETR4", "VALE3", "ITUB4", "BBDC4", "ABEV3", "WEGE3", "BBAS3", "RENT3", "SUZB3", "GGBR4"]


def emit_for(publisher: KombuPublisher, rate: float, duration_s: float) -> int:
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < duration_s:
        for _ in range(int(elapsed * rate) - sent):
            ticker = TICKERS[sent % len(TICKERS)]
            data = {"ticker": ticker, "price": 30.0 + sent % 700 / 100, "change": 0.42, "volume": 1_234_567 + sent}
            data["bench"] = "fanout"  # the subscribers' `where`: other people's events on a shared bus are not ours
            publisher.emit("asset:updated", ("%032x" % sent, "update-asset-prices"), data)
            sent += 1
        time.sleep(0.001)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bus", required=True)
    parser.add_argument("--namespace", default="benchfanout")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    publisher = KombuPublisher(args.bus, namespace=args.namespace)
    time.sleep(0.5)  # let the publisher thread connect before the clock starts
    started = time.monotonic()
    emitted = emit_for(publisher, args.rate, args.duration)
    publisher.close(30)
    seconds = time.monotonic() - started
    result = {"emitted": emitted, "published": publisher.published, "dropped": publisher.dropped, "seconds": seconds}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
