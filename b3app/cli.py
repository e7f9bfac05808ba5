"""The B3 app's commands (`[app] commands` in schedules.toml): `python -m runtime seed`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runtime.cli import BAD_INPUT, OK, Command


def _seed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--history-days",
        type=int,
        default=120,
        help="B3 sessions of sample bars per new ticker, with the sample provider only (default 120)",
    )
    parser.add_argument("--if-empty", action="store_true", help="only when no asset was ever tracked (a first start)")


def seed(args: argparse.Namespace, services: Any) -> int:
    """Track the usual B3 tickers; with the sample provider, give those without bars sample history."""
    if not hasattr(services, "seed_if_empty"):
        print(
            "seed: ctx.services has no market store (%r); B3JOBS_SERVICES names another factory" % services,
            file=sys.stderr,
        )
        return BAD_INPUT
    report = services.seed_if_empty(args.history_days) if args.if_empty else services.seed(args.history_days)
    if report is None:
        print("seed: assets are tracked already; nothing seeded (without --if-empty it adds what is missing)")
        return OK
    if services.source != "sample":
        print(
            "%d ticker(s) newly tracked; their daily history comes from %s with each one's first update or"
            " analysis (no sample data is written while %s is the provider)"
            % (report.tracked, services.source, services.source)
        )
        return OK
    print(
        "%d ticker(s) newly tracked, %d given %d sessions of sample history (%d daily bars, labelled sample)"
        % (report.tracked, report.with_history, args.history_days, report.bars)
    )
    return OK


COMMANDS = [
    Command(
        "seed",
        "track the usual B3 tickers (with the sample provider: sample daily bars to analyse)",
        seed,
        _seed_arguments,
        on_local_start=("--if-empty",),
    ),
]
