"""The markdown report of a peer run: medians per cell, and b3-jobs' ratios against the issue's targets."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Run = dict[str, Any]

# The "done means" (issue 12): (b3-jobs cell, peer cell, figure, goal, how to compare).
# A cell is (system, config); the Huey rows take the faster of RedisHuey and PriorityRedisHuey.
TARGETS = [
    ("drain, 1 worker ≥ 1.0× BullMQ concurrency 1", ("b3-jobs", "1"), ("bullmq", "1"), "drain_rate", 1.0),
    ("drain, 1 worker ≥ 1.0× bare Huey 1 worker", ("b3-jobs", "1"), ("huey", "1"), "drain_rate", 1.0),
    ("drain, 8 workers ≥ 1.0× bare Huey 8 workers", ("b3-jobs", "8"), ("huey", "8"), "drain_rate", 1.0),
    ("drain, 2 processes × 8 ≥ 0.8× BullMQ concurrency 8", ("b3-jobs", "2x8"), ("bullmq", "8"), "drain_rate", 0.8),
    ("drain, 1 worker ≥ 3× Celery 1", ("b3-jobs", "1"), ("celery", "1"), "drain_rate", 3.0),
    ("drain, 8 workers ≥ 3× Celery 8", ("b3-jobs", "8"), ("celery", "8"), "drain_rate", 3.0),
    ("start latency p99, 1 worker ≤ BullMQ concurrency 1", ("b3-jobs", "1"), ("bullmq", "1"), "lat_p99_ms", -1.0),
    ("start latency p99, 8 workers ≤ BullMQ concurrency 8", ("b3-jobs", "8"), ("bullmq", "8"), "lat_p99_ms", -1.0),
    ("SQLite drain, 1 worker ≥ 1.0× SqliteHuey 1", ("b3-jobs-sqlite", "1"), ("huey-sqlite", "1"), "drain_rate", 1.0),
    ("SQLite drain, 8 workers ≥ 1.0× SqliteHuey 8", ("b3-jobs-sqlite", "8"), ("huey-sqlite", "8"), "drain_rate", 1.0),
]


ORDER = ["bullmq", "huey-plain", "huey-priority", "celery", "b3-jobs", "huey-sqlite", "b3-jobs-sqlite"]


def clean(run: Run, max_foreign: float) -> bool:
    return run["ok"] and max(run["foreign"].values(), default=0) <= max_foreign


def median(runs: list[Run], key: Callable[[Run], float | None], max_foreign: float) -> tuple[float | None, str]:
    """Median over clean runs; with fewer than 3 clean, over the 3 least disturbed (marked *)."""
    good = [r for r in runs if r["ok"] and key(r) is not None]
    tidy = [r for r in good if clean(r, max_foreign)]
    if len(tidy) >= 3:
        return statistics.median(key(r) for r in tidy), ""  # type: ignore[type-var]
    least = sorted(good, key=lambda r: max(r["foreign"].values(), default=0))[:3]
    return (statistics.median(key(r) for r in least), "*") if least else (None, "")  # type: ignore[type-var]


def us_per_job(runs: list[Run], role: str) -> float | None:
    """Median CPU µs per job of one role over the runs that measured it (disturbed runs too: CPU is CPU)."""
    values = [r["us_per_job"][role] for r in runs if role in r["us_per_job"]]
    return statistics.median(values) if values else None


def fmt(value: float | None, mark: str = "", digits: int = 0) -> str:
    return "–" if value is None else "{:,.{}f}{}".format(value, digits, mark)


class Report:
    def __init__(self, runs: list[Run], max_foreign: float, labels: dict[str, str]):
        self.runs, self.max_foreign, self.labels = runs, max_foreign, labels

    def cell(self, system: str, config: str, kind: str = "drain") -> list[Run]:
        return [r for r in self.runs if r["system"] == system and r["config"] == config and r["kind"] == kind]

    def med(self, system: str, config: str, key: str, kind: str = "drain") -> tuple[float | None, str]:
        return median(self.cell(system, config, kind), lambda r: r.get(key), self.max_foreign)

    def systems(self, backend: str) -> list[str]:
        names = {r["system"] for r in self.runs if r["backend"] == backend}
        return sorted(names, key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s))

    def configs(self, system: str) -> list[str]:
        return sorted(
            {r["config"] for r in self.runs if r["system"] == system and r["kind"] == "drain"},
            key=lambda c: (len(c), c),
        )

    # -- tables

    def drain_table(self, backend: str) -> str:
        lines = [
            "| system | workers | drain (jobs/s) | start latency p50 / p99 (ms) | consumer CPU µs/job "
            "| redis-server CPU µs/job | web + listener CPU µs/job | Redis commands/job (commandstats) "
            "| events (listener) | foreign cores | runs clean/all |",
            "|---|--:|--:|--:|--:|--:|--:|---|---|--:|--:|",
        ]
        for system in self.systems(backend):
            for config in self.configs(system):
                runs = self.cell(system, config)
                ok = [r for r in runs if r["ok"]]
                if not ok:
                    note = runs[-1]["note"][:120].replace("|", "/") if runs else ""
                    lines.append(
                        "| %s | %s | FAILED: %s | | | | | | | | 0/%d |" % (self.labels[system], config, note, len(runs))
                    )
                    continue
                drain, m = self.med(system, config, "drain_rate")
                p50, m50 = self.med(system, config, "lat_p50_ms")
                p99, m99 = self.med(system, config, "lat_p99_ms")
                cpu = {role: us_per_job(ok, role) for role in ("consumer", "redis", "web", "listener")}
                side = [v for v in (cpu["web"], cpu["listener"]) if v is not None]
                cmds = ok[0].get("cmds_per_job") or {}
                cmd_text = ", ".join("%s %s" % (k, v) for k, v in list(cmds.items())[:5]) if cmds else "–"
                events = self._events(ok)
                foreign = statistics.median(max(r["foreign"].values(), default=0) for r in ok)
                n_clean = sum(1 for r in ok if clean(r, self.max_foreign))
                lat = "–" if p50 is None else "%s / %s" % (fmt(p50, m50, 2), fmt(p99, m99, 2))
                lines.append(
                    "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f | %d/%d |"
                    % (
                        self.labels[system],
                        config.replace("x", " × "),
                        fmt(drain, m),
                        lat,
                        fmt(cpu["consumer"]),
                        fmt(cpu["redis"]),
                        fmt(sum(side)) if side else "–",
                        cmd_text,
                        events,
                        foreign,
                        n_clean,
                        len(runs),
                    )
                )
        return "\n".join(lines)

    @staticmethod
    def _events(runs: list[Run]) -> str:
        checked = [r for r in runs if r.get("events")]
        if not checked:
            return "–"
        bad = [r for r in checked if not r["events"]["events_ok"]]
        if not bad:
            return "all, in order (%d runs)" % len(checked)
        worst = min(bad, key=lambda r: r["events"]["listener"]["lifecycle_complete"])
        listener = worst["events"]["listener"]
        web = worst["events"].get("web_received", {})
        return (
            "MISSING in %d/%d runs: worst %d of %d jobs complete at the listener, %d out of order, %d duplicates; "
            "web process got %s"
            % (
                len(bad),
                len(checked),
                listener["lifecycle_complete"],
                worst["events"]["events_expected_jobs"],
                listener["out_of_order"],
                listener["duplicates"],
                ", ".join("%s %s" % kv for kv in sorted(web.items())),
            )
        )

    def enqueue_table(self, backend: str) -> str:
        lines = [
            "| system | single call (jobs/s) | bulk (jobs/s) | bulk API | b3-jobs: calls alone single / bulk (jobs/s) |",
            "|---|--:|--:|---|--:|",
        ]
        for system in self.systems(backend):
            single = median(
                [r for r in self.runs if r["system"] == system and r["kind"] == "drain"],
                lambda r: r.get("enqueue_rate"),
                self.max_foreign,
            )
            calls = median(
                [r for r in self.runs if r["system"] == system and r["kind"] == "drain"],
                lambda r: r.get("enqueue_calls_rate"),
                self.max_foreign,
            )
            variants = sorted({r["config"] for r in self.runs if r["system"] == system and r["kind"] == "bulk"})
            for i, variant in enumerate(variants or ["–"]):
                bulk = self.med(system, variant, "enqueue_rate", "bulk")
                bulk_calls = self.med(system, variant, "enqueue_calls_rate", "bulk")
                api = next((r.get("api", "") for r in self.cell(system, variant, "bulk") if r.get("api")), "")
                calls_text = "–" if calls[0] is None else "%s / %s" % (fmt(*calls), fmt(*bulk_calls))
                lines.append(
                    "| %s | %s | %s | %s | %s |"
                    % (
                        self.labels[system] if i == 0 else "",
                        fmt(*single) if i == 0 else "",
                        fmt(*bulk),
                        api,
                        calls_text if i == 0 or bulk_calls[0] is not None else "–",
                    )
                )
        return "\n".join(lines)

    def targets(self) -> str:
        lines = ["| target | b3-jobs | peer | ratio | goal | result |", "|---|--:|--:|--:|--:|---|"]
        for text, (b3, b3_config), (peer, peer_config), key, goal in TARGETS:
            ours, m1 = self.med(b3, b3_config, key)
            if peer == "huey":  # the faster bare Huey
                options = [(self.med(s, peer_config, key), s) for s in ("huey-plain", "huey-priority")]
                options = [(v, s) for v, s in options if v[0] is not None]
                (theirs, m2), peer_name = max(options, key=lambda o: o[0][0]) if options else ((None, ""), "huey")
            else:
                (theirs, m2), peer_name = self.med(peer, peer_config, key), peer
            if ours is None or theirs is None:
                lines.append("| %s | %s | %s | – | – | not measured |" % (text, fmt(ours, m1, 1), fmt(theirs, m2, 1)))
                continue
            if goal > 0:  # a rate: higher is better
                ratio, passed, goal_text = ours / theirs, ours / theirs >= goal, "≥ %.1f×" % goal
            else:  # a latency: lower is better
                ratio, passed, goal_text = ours / theirs, ours <= theirs, "≤ 1.0×"
            digits = 2 if key.endswith("_ms") else 0
            lines.append(
                "| %s | %s | %s (%s) | %.2f× | %s | **%s**%s |"
                % (
                    text,
                    fmt(ours, m1, digits),
                    fmt(theirs, m2, digits),
                    self.labels.get(peer_name, peer_name),
                    ratio,
                    goal_text,
                    "PASS" if passed else "FAIL",
                    " (fewer than 3 clean runs)" if m1 or m2 else "",
                )
            )
        return "\n".join(lines)
