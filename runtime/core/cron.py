"""Five-field cron expressions: parsing, matching and the next run, in a job's timezone.

Semantics follow Vixie cron: when both day-of-month and day-of-week are restricted, a day
matches if either does (Huey's own crontab ANDs them, which surprises people coming from cron).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
FIELDS = (  # name, low, high, names
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, DAYS),
)


class CronError(ValueError):
    """A cron expression that cannot be parsed; the message says which field and why."""


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

    @classmethod
    def parse(cls, expression: str) -> "Cron":
        text = ALIASES.get(expression.strip().lower(), expression)
        parts = text.split()
        if len(parts) != 5:
            raise CronError("expected 5 fields (minute hour day month weekday), got %d in %r" % (len(parts), expression))
        sets = [_field(p, lo, hi, names, name) for p, (name, lo, hi, names) in zip(parts, FIELDS)]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(expression, sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] != "*", parts[4] != "*")

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
        local = after.astimezone(tz).replace(second=0, microsecond=0, tzinfo=None) + dt.timedelta(minutes=1)
        limit = local + dt.timedelta(days=366 * 5)
        while local < limit:
            if local.month not in self.months:
                local = (local.replace(day=1, hour=0, minute=0) + dt.timedelta(days=32)).replace(day=1)
            elif not self._day_matches(local.date()):
                local = local.replace(hour=0, minute=0) + dt.timedelta(days=1)
            elif local.hour not in self.hours:
                local = local.replace(minute=0) + dt.timedelta(hours=1)
            elif local.minute not in self.minutes:
                local += dt.timedelta(minutes=1)
            else:
                aware = local.replace(tzinfo=tz)
                # A wall-clock time skipped by a DST jump does not exist; cron skips it too.
                if aware.astimezone(dt.timezone.utc).astimezone(tz).replace(tzinfo=None) == local:
                    return aware.astimezone(dt.timezone.utc)
                local += dt.timedelta(minutes=1)
        raise CronError("%r never fires" % self.expression)
