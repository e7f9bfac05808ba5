"""Five-field cron expressions: parsing, matching and the ticks, in a job's timezone.

Semantics follow Vixie cron: when both day-of-month and day-of-week are restricted, a day
matches if either does (Huey's own crontab ANDs them, which surprises people coming from cron).

Across DST, as cronie's `find_jobs` does: a job whose minute or hour field starts with `*`
(`* * * * *`, `*/15 * * * *`, `0 * * * *`, `@hourly`) is a wildcard job and fires on every real
minute its wall-clock reading matches: twice through a repeated hour, never in a skipped one.
Any other job is a fixed-time job and fires once per wall-clock time: in a repeated hour at the
first pass only, and a time skipped by a jump forward fires right after the jump.
One search (`_first_tick`) decides this: the cron runner enqueues `ticks`, and misfire catch-up,
the dashboard and the CLI use `next_after`, so what they show is what runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
SEARCH_LIMIT = dt.timedelta(days=366 * 5)  # an expression with no tick this far ahead never fires

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {
    m: i + 1 for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])
}
DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (  # name, low, high, names
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, DAYS),
)


class CronError(ValueError):
    """A cron expression that cannot be parsed; the message says which field and why."""


def cron_job_id(name: str, tick_ts: float) -> str:
    """The id of the job a cron tick enqueues: one id per tick, so a tick enqueued twice is one job."""
    return "%s.cron.%d" % (name, tick_ts)


def _value(text: str, low: int, high: int, names: dict[str, int], field: str) -> int:
    value = names.get(text.lower()) if names else None
    if value is None:
        if not text.isdigit():
            raise CronError("%s: %r is not a number%s" % (field, text, " or name" if names else ""))
        value = int(text)
    if not low <= value <= high:
        raise CronError("%s: %d is outside %d-%d" % (field, value, low, high))
    return value


def _field(text: str, low: int, high: int, names: dict[str, int], field: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError("%s: step %r must be a positive number" % (field, step_text))
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(a, low, high, names, field), _value(b, low, high, names, field)
            if start > end:
                raise CronError("%s: range %s runs backwards" % (field, base))
        else:
            start = _value(base, low, high, names, field)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression; `matches` and `next_after` work in the given timezone."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_restricted: bool
    weekday_restricted: bool
    wildcard: bool  # minute or hour field starts with "*": fires on every real matching minute (see above)

    @classmethod
    def parse(cls, expression: str) -> Cron:
        text = ALIASES.get(expression.strip().lower(), expression)
        parts = text.split()
        if len(parts) != 5:
            raise CronError(
                "expected 5 fields (minute hour day month weekday), got %d in %r" % (len(parts), expression)
            )
        sets = [_field(p, lo, hi, names, name) for p, (name, lo, hi, names) in zip(parts, FIELDS)]
        weekdays = frozenset(d % 7 for d in sets[4])
        wildcard = parts[0].startswith("*") or parts[1].startswith("*")  # cronie's MIN_STAR | HR_STAR
        return cls(expression, sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] != "*", parts[4] != "*", wildcard)

    def _day_matches(self, day: dt.date) -> bool:
        in_days = day.day in self.days
        in_weekdays = (day.isoweekday() % 7) in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def matches(self, local: dt.datetime) -> bool:
        """Whether the minute of `local` (a wall-clock time in the job's zone) is a tick."""
        return (
            local.minute in self.minutes
            and local.hour in self.hours
            and local.month in self.months
            and self._day_matches(local.date())
        )

    def next_after(self, after: dt.datetime, tz: ZoneInfo) -> dt.datetime:
        """The first tick strictly after `after` (an aware datetime), as an aware UTC datetime."""
        tick = self._first_tick(after.astimezone(UTC), after + SEARCH_LIMIT, tz)
        if tick is None:
            raise CronError("%r never fires" % self.expression)
        return tick

    def ticks(self, after: dt.datetime, until: dt.datetime, tz: ZoneInfo) -> Iterator[dt.datetime]:
        """Every tick in (after, until], in order, as aware UTC datetimes."""
        tick = self._first_tick(after.astimezone(UTC), until.astimezone(UTC), tz)
        while tick is not None:
            yield tick
            tick = self._first_tick(tick, until.astimezone(UTC), tz)

    def _first_tick(self, after: dt.datetime, until: dt.datetime, tz: ZoneInfo) -> dt.datetime | None:
        """The first tick in (after, until], or None.

        Wall-clock times are walked in order; their ticks come in the same order except in a
        repeated hour, where a wildcard job's second pass comes after later first-pass times. So
        the walk keeps the earliest tick seen and stops at the first wall-clock time that cannot
        give an earlier one (every later time gives later ticks).
        """
        best: dt.datetime | None = None
        bound = until
        for local in self._matches_from(_walk_start(after, tz), until.astimezone(tz).replace(tzinfo=None)):
            if min(_instant(local, tz, 0), _instant(local, tz, 1)) > bound:
                break
            for tick in self._ticks_at(local, tz):
                if after < tick <= bound:
                    bound = best = tick
                    break
        return best

    def _ticks_at(self, local: dt.datetime, tz: ZoneInfo) -> list[dt.datetime]:
        """The real minutes (UTC) at which the matching wall-clock time `local` fires this job."""
        first, second = _instant(local, tz, 0), _instant(local, tz, 1)
        if first == second:
            return [first]
        if first < second:  # a repeated time (DST ends): wildcard jobs run at both passes
            return [first, second] if self.wildcard else [first]
        # A skipped time (DST starts): fixed-time jobs run right after the jump, wildcard jobs not at all.
        return [] if self.wildcard else [_jump_end(local, tz)]

    def _matches_from(self, local: dt.datetime, until: dt.datetime) -> Iterator[dt.datetime]:
        """Matching wall-clock times from `local` (naive, minute-aligned) on, in order.

        Goes a day past `until`'s reading, so a tick in a repeated hour is never cut off.
        """
        limit = until + dt.timedelta(days=1)
        while local < limit:
            if local.month not in self.months:
                local = (local.replace(day=1, hour=0, minute=0) + dt.timedelta(days=32)).replace(day=1)
            elif not self._day_matches(local.date()):
                local = local.replace(hour=0, minute=0) + dt.timedelta(days=1)
            elif local.hour not in self.hours:
                local = local.replace(minute=0) + dt.timedelta(hours=1)
            elif local.minute not in self.minutes:
                local += MINUTE
            else:
                yield local
                local += MINUTE


def _instant(local: dt.datetime, tz: ZoneInfo, fold: int) -> dt.datetime:
    """The UTC instant of a naive wall-clock time; `fold` picks the pass (PEP 495)."""
    return local.replace(tzinfo=tz, fold=fold).astimezone(UTC)


def _walk_start(after: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The earliest wall-clock reading (naive, minute-aligned) of any minute after `after`."""
    local = after.astimezone(tz)
    start = local.replace(second=0, microsecond=0, tzinfo=None) + MINUTE
    # In the first pass of a repeated hour the clock is still to go back: start where it will.
    offset, second_pass_offset = local.utcoffset(), local.replace(fold=1).utcoffset()
    assert offset is not None and second_pass_offset is not None
    return start - max(offset - second_pass_offset, dt.timedelta(0))


def _jump_end(local: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The first real minute after the jump forward that skipped the wall-clock time `local`."""
    # Before the jump the clock reads earlier than `local`, after it later: bisect on whole minutes.
    low, high = int(_instant(local, tz, 1).timestamp()) // 60, int(_instant(local, tz, 0).timestamp()) // 60
    while high - low > 1:
        middle = (low + high) // 2
        if dt.datetime.fromtimestamp(middle * 60, tz).replace(tzinfo=None) > local:
            high = middle
        else:
            low = middle
    return dt.datetime.fromtimestamp(high * 60, UTC)
