"""Cron expressions: Vixie semantics, timezones, DST, and clear errors."""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from runtime.core.cron import Cron, CronError, cron_job_id
from runtime.engine import Runtime

UTC = dt.UTC
SAO_PAULO = ZoneInfo("America/Sao_Paulo")
NEW_YORK = ZoneInfo("America/New_York")
MINUTE = dt.timedelta(minutes=1)
# New York in 2026: clocks jump 02:00 EST → 03:00 EDT on Mar 8 (07:00 UTC) and fall back
# 02:00 EDT → 01:00 EST on Nov 1 (06:00 UTC), so 01:00-01:59 happens twice that night.
SPRING_FORWARD = dt.datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
FALL_BACK = dt.datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


def test_nightly_update_runs_at_two_in_sao_paulo() -> None:
    cron = Cron.parse("0 2 * * *")
    after = dt.datetime(2026, 11, 28, 3, 0, tzinfo=UTC)  # 00:00 in São Paulo (UTC-3)
    assert cron.next_after(after, SAO_PAULO) == dt.datetime(2026, 11, 28, 5, 0, tzinfo=UTC)


def test_steps_ranges_names_and_lists() -> None:
    cron = Cron.parse("*/15 9-17 * * mon-fri")
    saturday = dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert cron.next_after(saturday, ZoneInfo("UTC")) == dt.datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert Cron.parse("0 0 1,15 jan,jul *").months == frozenset({1, 7})
    assert Cron.parse("@hourly").minutes == frozenset({0})


def test_day_of_month_or_day_of_week_when_both_restricted() -> None:
    cron = Cron.parse("0 0 13 * 5")  # the 13th, or any Friday (Vixie cron), not only Friday the 13th
    assert cron.matches(dt.datetime(2026, 11, 13, 0, 0))  # a Friday the 13th
    assert cron.matches(dt.datetime(2026, 11, 20, 0, 0))  # a Friday
    assert cron.matches(dt.datetime(2026, 10, 13, 0, 0))  # a Tuesday the 13th
    assert not cron.matches(dt.datetime(2026, 11, 19, 0, 0))


def test_sunday_is_0_or_7() -> None:
    assert Cron.parse("0 0 * * 7").weekdays == Cron.parse("0 0 * * 0").weekdays == frozenset({0})


@pytest.mark.parametrize(
    "expression, message",
    [
        ("0 2 * *", "expected 5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* * * foo *", "month: 'foo' is not a number or name"),
        ("*/0 * * * *", "step '0' must be a positive number"),
        ("5-1 * * * *", "range 5-1 runs backwards"),
    ],
)
def test_bad_expressions_say_which_field(expression: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        Cron.parse(expression)


def test_an_expression_that_never_fires_is_an_error() -> None:
    with pytest.raises(CronError, match="never fires"):
        Cron.parse("0 0 30 2 *").next_after(dt.datetime(2026, 1, 1, tzinfo=UTC), ZoneInfo("UTC"))


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def ticks(expression: str, tz: ZoneInfo, after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    return list(Cron.parse(expression).ticks(after, until, tz))


def every(step: dt.timedelta, first: dt.datetime, last: dt.datetime) -> list[dt.datetime]:
    return [first + i * step for i in range(int((last - first) / step) + 1)]


# -- DST: the rule (Cron.ticks / next_after) ------------------------------------------------------


def test_a_fixed_time_in_the_repeated_hour_fires_once_at_its_first_pass() -> None:
    fired = ticks("30 1 * * *", NEW_YORK, utc(2026, 10, 31, 12), utc(2026, 11, 2, 12))
    assert fired == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]  # 01:30 EDT, then 01:30 EST
    assert fired[0].astimezone(NEW_YORK).isoformat() == "2026-11-01T01:30:00-04:00"


def test_a_fixed_time_skipped_by_the_jump_fires_once_right_after_it() -> None:
    fired = ticks("30 2 * * *", NEW_YORK, utc(2026, 3, 7, 12), utc(2026, 3, 9, 12))
    assert fired == [SPRING_FORWARD, utc(2026, 3, 9, 6, 30)]  # 03:00 EDT on the 8th, 02:30 EDT on the 9th
    assert fired[0].astimezone(NEW_YORK).isoformat() == "2026-03-08T03:00:00-04:00"
    # A job due at both the skipped time and the time right after the jump still runs once then.
    assert ticks("0,30 2,3 * * *", NEW_YORK, utc(2026, 3, 8, 0), utc(2026, 3, 8, 12)) == [
        SPRING_FORWARD,
        utc(2026, 3, 8, 7, 30),
    ]


@pytest.mark.parametrize("transition", [SPRING_FORWARD, FALL_BACK], ids=["spring-forward", "fall-back"])
@pytest.mark.parametrize("expression, step_s", [("*/15 * * * *", 900), ("0 * * * *", 3600), ("* * * * *", 60)])
def test_wildcard_jobs_fire_on_every_real_minute_or_hour_through_the_transition(
    transition: dt.datetime, expression: str, step_s: int
) -> None:
    day_before, day_after = transition - dt.timedelta(hours=24), transition + dt.timedelta(hours=24)
    fired = ticks(expression, NEW_YORK, day_before, day_after)
    assert fired == every(dt.timedelta(seconds=step_s), day_before + dt.timedelta(seconds=step_s), day_after)


def test_a_quarter_hourly_job_runs_both_passes_of_the_repeated_hour() -> None:
    fired = ticks("*/15 * * * *", NEW_YORK, utc(2026, 11, 1, 4, 50), utc(2026, 11, 1, 7))
    assert [t.astimezone(NEW_YORK).strftime("%H:%M%z") for t in fired] == [
        "01:00-0400",
        "01:15-0400",
        "01:30-0400",
        "01:45-0400",
        "01:00-0500",
        "01:15-0500",
        "01:30-0500",
        "01:45-0500",
        "02:00-0500",
    ]


def test_two_am_in_sao_paulo_is_five_utc_every_day_of_a_year() -> None:
    fired = ticks("0 2 * * *", SAO_PAULO, utc(2026, 1, 1, 0), utc(2027, 1, 1, 0))
    assert fired == every(dt.timedelta(days=1), utc(2026, 1, 1, 5), utc(2026, 12, 31, 5))


def test_next_after_walks_the_same_ticks() -> None:
    # Given the dashboard's "next run" chained from each tick, starting anywhere, even mid-repeat
    for expression in ("30 1 * * *", "30 2 * * *", "*/15 * * * *", "0 * * * *"):
        for start in (utc(2026, 11, 1, 5, 40), utc(2026, 11, 1, 6, 40), utc(2026, 3, 8, 6, 40)):
            cron, until = Cron.parse(expression), start + dt.timedelta(days=2)
            chained: list[dt.datetime] = []
            tick = cron.next_after(start, NEW_YORK)
            while tick <= until:
                chained.append(tick)
                tick = cron.next_after(tick, NEW_YORK)
            # Then it gives exactly the ticks the runner enqueues
            assert chained == ticks(expression, NEW_YORK, start, until), (expression, start)


def cronie(expression: str, tz: ZoneInfo, after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    """What cronie's main loop and find_jobs would run, minute by real minute, with `tz` as the clock.

    The virtual clock is the latest wall-clock minute handled: a jump forward runs the fixed-time
    jobs of every minute jumped over (wildcard jobs only for the minute it is); a jump back runs
    only wildcard jobs until the wall clock passes the virtual clock again.
    """
    cron = Cron.parse(expression)
    fired: list[dt.datetime] = []
    virtual = after.astimezone(tz).replace(tzinfo=None)
    minute = after + MINUTE
    while minute <= until:
        wall = minute.astimezone(tz).replace(tzinfo=None)
        jumped_over = every(MINUTE, virtual + MINUTE, wall) if wall > virtual else []
        if cron.matches(wall) if cron.wildcard else any(cron.matches(w) for w in jumped_over):
            fired.append(minute)
        virtual = max(virtual, wall)
        minute += MINUTE
    return fired


@pytest.mark.parametrize(
    "zone, transition",
    [
        ("America/New_York", SPRING_FORWARD),
        ("America/New_York", FALL_BACK),
        ("America/Sao_Paulo", utc(2018, 11, 4, 3)),  # when it had DST: midnight → 01:00
        ("America/Sao_Paulo", utc(2019, 2, 17, 2)),  # midnight → 23:00 the day before
        ("Australia/Lord_Howe", utc(2026, 4, 4, 15)),  # half an hour back
        ("Australia/Lord_Howe", utc(2026, 10, 3, 15, 30)),  # half an hour forward
    ],
)
def test_ticks_match_cronie_minute_by_minute(zone: str, transition: dt.datetime) -> None:
    tz = ZoneInfo(zone)
    after, until = transition - dt.timedelta(hours=26), transition + dt.timedelta(hours=26)
    assert tz.utcoffset(after.replace(tzinfo=None)) != tz.utcoffset(until.replace(tzinfo=None)), "no transition there"
    for expression in (
        "30 1 * * *",
        "30 2 * * *",
        "0 0 * * *",
        "0,30 0-3 * * *",
        "45 23 * * *",
        "15 1 * * 0",
        "*/15 * * * *",
        "0 * * * *",
        "* 2 * * *",
        "15 */2 * * *",
        "@daily",
        "@hourly",
    ):
        assert ticks(expression, tz, after, until) == cronie(expression, tz, after, until), expression


def test_only_fields_starting_with_a_star_make_a_wildcard_job() -> None:
    assert all(Cron.parse(e).wildcard for e in ("* * * * *", "*/15 * * * *", "0 * * * *", "0 */2 * * *", "@hourly"))
    assert not any(Cron.parse(e).wildcard for e in ("30 1 * * *", "0 0-23 * * *", "0,30 9-17 * * 1-5", "@daily"))


# -- DST: the runner, minute by minute against a real store ---------------------------------------

DST_MANIFEST = """
    [jobs.nightly]
    handler = "testjobs.basic:noop"
    payload = "testjobs.basic:Empty"
    cron = "30 1 * * *"
    timezone = "America/New_York"

    [jobs.early]
    handler = "testjobs.basic:noop"
    payload = "testjobs.basic:Empty"
    cron = "30 2 * * *"
    timezone = "America/New_York"

    [jobs.quarterly]
    handler = "testjobs.basic:noop"
    payload = "testjobs.basic:Empty"
    cron = "*/15 * * * *"
    timezone = "America/New_York"

    [jobs.sao-paulo]
    handler = "testjobs.basic:noop"
    payload = "testjobs.basic:Empty"
    cron = "0 2 * * *"
    timezone = "America/Sao_Paulo"
"""


@pytest.fixture
def dst_runtime(make_runtime: Callable[..., Runtime], tmp_path: Path) -> Runtime:
    manifest = tmp_path / "schedules.toml"
    manifest.write_text(textwrap.dedent(DST_MANIFEST))
    return make_runtime(manifest=manifest)


def run_cron(runtime: Runtime, start: dt.datetime, until: dt.datetime, every_s: float = 20.0) -> None:
    """One consumer's scheduler, called every `every_s` seconds from minute `start` through minute `until`."""
    now = start.timestamp() + 1
    runner = runtime.cron_runner(now=now)
    while now < until.timestamp() + 60:
        runner.tick(now)
        now += every_s


def enqueued(runtime: Runtime, name: str) -> list[str]:
    return sorted(r.id for r in runtime.list(name=name, limit=1000))


def ids(name: str, ticks: list[dt.datetime]) -> list[str]:
    return sorted(cron_job_id(name, t.timestamp()) for t in ticks)


def test_the_runner_fires_once_through_the_fall_back(dst_runtime: Runtime) -> None:
    # When the scheduler runs from 23:00 EDT on Oct 31 to 04:00 EST on Nov 1
    run_cron(dst_runtime, utc(2026, 11, 1, 3), utc(2026, 11, 1, 9))
    # Then 01:30 ran once, at its first pass (EDT); 02:30 ran once; São Paulo's 02:00 was 05:00 UTC
    assert enqueued(dst_runtime, "nightly") == ids("nightly", [utc(2026, 11, 1, 5, 30)])
    assert enqueued(dst_runtime, "early") == ids("early", [utc(2026, 11, 1, 7, 30)])
    assert enqueued(dst_runtime, "sao-paulo") == ids("sao-paulo", [utc(2026, 11, 1, 5)])
    # And the quarter-hourly job ran at every real quarter hour, both passes of 01:xx included
    quarters = every(dt.timedelta(minutes=15), utc(2026, 11, 1, 3), utc(2026, 11, 1, 9))
    assert enqueued(dst_runtime, "quarterly") == ids("quarterly", quarters)


def test_the_runner_fires_a_skipped_time_once_right_after_the_spring_jump(dst_runtime: Runtime) -> None:
    # When the scheduler runs from 23:00 EST on Mar 7 to 05:00 EDT on Mar 8
    run_cron(dst_runtime, utc(2026, 3, 8, 4), utc(2026, 3, 8, 9))
    # Then 02:30, which did not exist, ran once at 03:00 EDT; 01:30 EST ran as usual
    assert enqueued(dst_runtime, "early") == ids("early", [SPRING_FORWARD])
    assert enqueued(dst_runtime, "nightly") == ids("nightly", [utc(2026, 3, 8, 6, 30)])
    assert enqueued(dst_runtime, "sao-paulo") == ids("sao-paulo", [utc(2026, 3, 8, 5)])
    quarters = every(dt.timedelta(minutes=15), utc(2026, 3, 8, 4), utc(2026, 3, 8, 9))
    assert enqueued(dst_runtime, "quarterly") == ids("quarterly", quarters)


def test_a_consumer_starting_in_the_second_pass_does_not_rerun_the_first(dst_runtime: Runtime) -> None:
    # Given 01:30 EDT ran, and every consumer stopped right after
    run_cron(dst_runtime, utc(2026, 11, 1, 5, 20), utc(2026, 11, 1, 5, 35))
    assert enqueued(dst_runtime, "nightly") == ids("nightly", [utc(2026, 11, 1, 5, 30)])
    # When one starts again at 01:20 EST (misfire = run_once) and runs past 01:30 EST
    run_cron(dst_runtime, utc(2026, 11, 1, 6, 20), utc(2026, 11, 1, 6, 40))
    # Then 01:30 is not run again: nothing was missed, and the second pass is not a tick
    assert enqueued(dst_runtime, "nightly") == ids("nightly", [utc(2026, 11, 1, 5, 30)])
    # While the quarter-hourly job caught up the one quarter it missed (01:45 EDT) and ran the rest
    missed_once = [utc(2026, 11, 1, 5, 45)]
    ran = every(dt.timedelta(minutes=15), utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 5, 30))
    again = every(dt.timedelta(minutes=15), utc(2026, 11, 1, 6, 30), utc(2026, 11, 1, 6, 30))
    assert enqueued(dst_runtime, "quarterly") == ids("quarterly", ran + missed_once + again)


def test_a_tick_missed_by_a_minute_is_caught_up_once(dst_runtime: Runtime) -> None:
    # Given the quarter-hourly job last ran at 12:00 UTC and no consumer ran at 12:15
    assert dst_runtime.store.claim_tick("quarterly", utc(2026, 6, 1, 12).timestamp())
    # When a consumer starts at 12:16 (misfire = run_once)
    run_cron(dst_runtime, utc(2026, 6, 1, 12, 16), utc(2026, 6, 1, 12, 16))
    # Then 12:15 runs once, now
    assert enqueued(dst_runtime, "quarterly") == ids("quarterly", [utc(2026, 6, 1, 12, 15)])
