"""Takes docs/dashboard.png: the dashboard of a b3-jobs running the real manifest on sample quotes.

    .venv/bin/python docs/screenshot.py [--out docs/dashboard.png] [--view overview|jobs|failures]

Runs everything in this process on a temporary directory (SQLite, memory:// bus, the offline
sample provider), enqueues a morning's worth of updates (some for tickers the provider does not
know, which fail), and photographs the page in the system Chromium (/usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from bus.publisher import KombuPublisher  # noqa: E402
from runtime.core.settings import Settings  # noqa: E402
from runtime.engine import Runtime  # noqa: E402
from runtime.web.app import build_web  # noqa: E402
from runtime.web.serve import WebThread  # noqa: E402
from runtime.worker.consumer import B3Consumer  # noqa: E402

TICKERS = ["PETR4", "VALE3", "ITUB4", "BBDC4", "BBAS3", "ABEV3", "WEGE3", "GGBR4", "RENT3", "SUZB3", "PRIO3", "ELET3"]
UNKNOWN = ["XXXX3", "ZZZZ4", "QQQQ11"]  # the sample provider does not know four-identical-letter tickers
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def populate(runtime: Runtime) -> None:
    for round_ in range(3):
        for ticker in TICKERS:
            runtime.enqueue("update-asset-prices", {"ticker": ticker})
        for ticker in UNKNOWN[: round_ + 1]:
            runtime.enqueue("update-asset-prices", {"ticker": ticker})
        time.sleep(0.4)
    runtime.enqueue("batch-update", {"tickers": TICKERS[:8]})
    runtime.enqueue("batch-update", {"tickers": TICKERS[4:]}, delay=900)
    runtime.enqueue("update-asset-prices", {"ticker": "TAEE11"}, delay=600)
    runtime.pause("daily-update")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--view", choices=["overview", "jobs", "failures"], default="overview")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), manifest=ROOT / "schedules.toml", namespace="screenshot")
        runtime = Runtime(settings, events=KombuPublisher("memory://", namespace=settings.namespace))
        web = WebThread(build_web(settings, runtime, url="memory://"), "127.0.0.1", 0).start()
        consumer = B3Consumer(runtime, workers=4, worker_type="thread", cron=False, signals=False)
        consumer.start()
        try:
            populate(runtime)
            time.sleep(3)
            path = {"overview": "/", "jobs": "/#/jobs?name=update-asset-prices", "failures": "/#/failures"}[args.view]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1440, "height": 460}, color_scheme="light")
                page.goto("http://127.0.0.1:%d%s" % (web.port, path))
                page.wait_for_selector("#conn[data-status=live]")
                page.wait_for_timeout(800)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            consumer.stop(graceful=True)
            web.stop()
            runtime.close()
    print("wrote %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
