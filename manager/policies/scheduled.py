"""``scheduled``: replicas inside a weekly window or a cron run, none outside.

Config is exactly one of

- ``{"window": "Mon-Fri 08:00-20:00 Europe/Madrid"}``: days (ranges and lists, ``Sat,Sun``,
  ``Fri-Mon``), local start and end (``22:00-06:00`` runs past midnight, ``00:00-24:00`` is the
  whole day) and an IANA time zone, so the window follows the zone's daylight-saving changes;
- ``{"cron": "0 2 * * *"}``: 5 fields, read in UTC unless ``timezone`` names a zone; each fire
  starts a run that lasts ``duration_minutes`` (default 60), and longer while async jobs of the
  workload are still queued;

plus ``replicas`` (default 1), how many replicas the workload gets inside its window or run.
Outside them the reason says, in RFC 3339 UTC, when the window opens or the next run fires.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from manager.services.timefmt import rfc3339

from ._rules import ROOT, fail, reject_unknown_keys, require_int
from .base import Desired, Policy, PolicyContext

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
DEFAULT_REPLICAS = 1
DEFAULT_DURATION_MINUTES = 60
MAX_DURATION_MINUTES = 7 * 24 * 60  # a week: longer than that is a fixed workload
CRON_ONLY = ("duration_minutes", "timezone")
_WINDOW_SAYS_IT = {
    "duration_minutes": "lasts from its start to its end",
    "timezone": "names its time zone itself ('Mon-Fri 08:00-20:00 Europe/Madrid')",
}
_WINDOW = re.compile(r"^(?P<days>\S+) (?P<start>\d{2}:\d{2})-(?P<end>\d{2}:\d{2}) (?P<tz>\S+)$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_DAY_MINUTES = 24 * 60


@dataclass(frozen=True)
class Window:
    """A weekly window in local time; ``end <= start`` means it ends the next day."""

    weekdays: frozenset[int]  # 0 = Monday: the days the window opens on
    start: int  # minutes after local midnight, 0-1439
    end: int  # minutes after local midnight, 1-1440 (24:00)
    zone: ZoneInfo

    def occurrence(self, day: date) -> tuple[datetime, datetime]:
        """When the window that opens on local ``day`` opens and closes, as UTC instants."""
        closing_day = day + timedelta(days=1) if self.end <= self.start else day
        return (
            first_instant_at(day, self.start, self.zone),
            first_instant_at(closing_day, self.end, self.zone),
        )


def first_instant_at(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    """The first UTC instant at which the local clock in ``zone`` reads ``day`` + ``minutes``.

    A time skipped by a spring-forward change is reached when the clock jumps past it; a time
    repeated by a fall-back change counts from its first occurrence.
    """
    wall = datetime.combine(day, time()) + timedelta(minutes=minutes)
    instant = wall.replace(tzinfo=zone).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    # In a gap: fold=1 reads it with the offset after the change, an instant the clock has
    # not reached it yet; the change itself lies between the two.
    low, high = sorted((wall.replace(tzinfo=zone, fold=1).astimezone(UTC), instant))
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def parse_days(text: str) -> frozenset[int]:
    """``Mon-Fri`` or ``Mon,Wed,Fri`` or ``Sat-Sun,Wed``; ranges may wrap (``Fri-Mon``)."""
    weekdays: set[int] = set()
    for part in text.split(","):
        bounds = part.split("-")
        if len(bounds) > 2 or not all(bound in DAYS for bound in bounds):
            raise ValueError(f"{part!r} is not a day or day range (days: {', '.join(DAYS)})")
        first, last = DAYS.index(bounds[0]), DAYS.index(bounds[-1])
        weekdays.update((first + offset) % 7 for offset in range((last - first) % 7 + 1))
    return frozenset(weekdays)


def _parse_clock(text: str, *, allow_24: bool) -> int:
    if allow_24 and text == "24:00":
        return _DAY_MINUTES
    match = _CLOCK.match(text)
    if not match:
        latest = "24:00" if allow_24 else "23:59"
        raise ValueError(f"{text!r} is not a time HH:MM (00:00-{latest})")
    return int(match.group(1)) * 60 + int(match.group(2))


def parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    # A region name such as "Europe" is a directory of the zone database: OSError, not a zone.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name!r} is not a known IANA time zone (e.g. Europe/Madrid)") from None


def parse_window(text: str) -> Window:
    """Parse ``Days HH:MM-HH:MM Area/City``; raises ValueError saying what is wrong."""
    match = _WINDOW.match(text.strip())
    if not match:
        raise ValueError("must look like 'Mon-Fri 08:00-20:00 Europe/Madrid'")
    start = _parse_clock(match["start"], allow_24=False)
    end = _parse_clock(match["end"], allow_24=True)
    if start == end:
        raise ValueError(
            "start and end are the same time; the window would be empty "
            "(a whole day is 00:00-24:00)"
        )
    return Window(parse_days(match["days"]), start, end, parse_zone(match["tz"]))


def cron_zone(config: Mapping[str, Any]) -> ZoneInfo:
    return parse_zone(config["timezone"]) if "timezone" in config else ZoneInfo("UTC")


def validate_cron(expression: str) -> None:
    """A standard 5-field cron expression that fires; raises ValueError otherwise."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"must have 5 fields (minute hour day month weekday), got {len(fields)}")
    if not croniter.is_valid(expression):
        raise ValueError(f"{expression!r} is not a valid cron expression")
    try:
        croniter(expression, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"{expression!r} never fires (no such date)") from None


def validate_config(config: dict[str, Any], max_replicas: int) -> None:
    reject_unknown_keys(config, ("cron", "window", "replicas", *CRON_ONLY), ROOT, "scheduled")
    present = [key for key in ("cron", "window") if key in config]
    if len(present) != 1:
        raise fail(ROOT, "for policy 'scheduled' needs exactly one of 'cron' or 'window'")
    key = present[0]
    value = config[key]
    if not isinstance(value, str):
        raise fail(f"{ROOT}.{key}", f"must be a string, got {value!r}")
    try:
        validate_cron(value) if key == "cron" else parse_window(value)
    except ValueError as error:
        raise fail(f"{ROOT}.{key}", str(error)) from None
    require_int(config, "replicas", ROOT, minimum=1, maximum=max_replicas)
    if key == "window":
        for extra, instead in _WINDOW_SAYS_IT.items():
            if extra in config:
                raise fail(f"{ROOT}.{extra}", f"applies to 'cron' only; a window {instead}")
        return
    duration = require_int(config, "duration_minutes", ROOT, minimum=1)
    if duration is not None and duration > MAX_DURATION_MINUTES:
        raise fail(
            f"{ROOT}.duration_minutes",
            f"must be at most {MAX_DURATION_MINUTES} (a week), got {duration}",
        )
    if "timezone" in config:
        zone = config["timezone"]
        if not isinstance(zone, str):
            raise fail(f"{ROOT}.timezone", f"must be a string, got {zone!r}")
        try:
            parse_zone(zone)
        except ValueError as error:
            raise fail(f"{ROOT}.timezone", str(error)) from None


def open_interval(window: Window, now: datetime) -> tuple[datetime, datetime | None] | None:
    """The stretch of open windows ``now`` is in, as (opened, closes), or None when closed.

    Back-to-back windows (``Mon-Fri 00:00-24:00``) are one stretch; ``closes`` is None when
    the window never closes (every day, the whole day).
    """
    today = now.astimezone(window.zone).date()
    for back in (2, 1, 0):
        day = today - timedelta(days=back)
        if day.weekday() not in window.weekdays:
            continue
        opened, closes = window.occurrence(day)
        if not opened <= now < closes:
            continue
        for ahead in range(1, 8):
            following = day + timedelta(days=ahead)
            if following.weekday() not in window.weekdays:
                return opened, closes
            next_opens, next_closes = window.occurrence(following)
            if next_opens > closes:
                return opened, closes
            closes = max(closes, next_closes)
        return opened, None
    return None


def next_opening(window: Window, now: datetime) -> datetime:
    """When the window next opens after ``now`` (some day of the coming week does)."""
    today = now.astimezone(window.zone).date()
    openings = (
        window.occurrence(day)[0]
        for day in (today + timedelta(days=ahead) for ahead in range(-1, 9))
        if day.weekday() in window.weekdays
    )
    return min(opened for opened in openings if opened > now)


def _replicas(config: Mapping[str, Any]) -> int:
    return int(config.get("replicas", DEFAULT_REPLICAS))


def _desired_in_window(config: Mapping[str, Any], now: datetime) -> Desired:
    window = parse_window(config["window"])
    stretch = open_interval(window, now)
    if stretch is None:
        return 0, f"window closed; opens at {rfc3339(next_opening(window, now))}"
    _, closes = stretch
    if closes is None:
        return _replicas(config), "window open; it never closes"
    return _replicas(config), f"window open; closes at {rfc3339(closes)}"


def last_fire(expression: str, now: datetime) -> datetime | None:
    """The latest fire at or before ``now`` (a zone-aware time), in UTC; None if none."""
    # croniter's previous fire is strictly before its start: start at the next minute, so a
    # fire this very minute counts.
    after_this_minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    try:
        fired: datetime = croniter(expression, after_this_minute).get_prev(datetime)
    except CroniterBadDateError:
        return None
    return fired.astimezone(UTC)


def next_fire(expression: str, now: datetime) -> datetime | None:
    """The first fire after ``now`` (a zone-aware time), in UTC; None if it never fires."""
    try:
        fires: datetime = croniter(expression, now).get_next(datetime)
    except CroniterBadDateError:
        return None
    return fires.astimezone(UTC)


def _desired_by_cron(context: PolicyContext) -> Desired:
    config = context.config
    expression = config["cron"]
    now = context.now.astimezone(cron_zone(config))
    duration = timedelta(minutes=int(config.get("duration_minutes", DEFAULT_DURATION_MINUTES)))
    fired = last_fire(expression, now)
    if fired is not None:
        # In UTC: a run lasts its minutes even across a daylight-saving change.
        until = fired + duration
        if now < until:
            return _replicas(config), (
                f"cron run started: fired at {rfc3339(fired)}, until {rfc3339(until)}"
            )
        queued = context.demand.queued_jobs
        # Kept, never restarted: once the count has dropped after the run's end, jobs queued
        # later wait for the next fire.
        scaled = context.last_scaled_at
        if queued > 0 and scaled is not None and scaled < until:
            return _replicas(config), (
                f"cron run kept: {queued} async job(s) still queued "
                f"(fired at {rfc3339(fired)}, duration ended at {rfc3339(until)})"
            )
    fires = next_fire(expression, now)
    if fires is None:
        return 0, f"cron {expression!r} never fires"
    return 0, f"cron run ended; next run fires at {rfc3339(fires)}"


def desired(context: PolicyContext) -> Desired:
    if "window" in context.config:
        return _desired_in_window(context.config, context.now)
    return _desired_by_cron(context)


POLICY = Policy(validate_config, desired)
