"""``scheduled``: capacity inside a cron run or a weekly window, none outside.

Config is exactly one of ``{"cron": "0 2 * * *"}`` (5 fields, UTC) or
``{"window": "Mon-Fri 08:00-20:00 Europe/Madrid"}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ._rules import ROOT, fail, reject_unknown_keys
from .base import Desired, Policy, PolicyContext

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WINDOW = re.compile(r"^(?P<days>\S+) (?P<start>\d{2}:\d{2})-(?P<end>\d{2}:\d{2}) (?P<tz>\S+)$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Window:
    """A weekly window; ``end <= start`` means it runs past midnight."""

    weekdays: frozenset[int]  # 0 = Monday
    start: time
    end: time
    zone: ZoneInfo


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


def _parse_clock(text: str, *, allow_24: bool) -> time:
    if allow_24 and text == "24:00":
        return time(0, 0)
    match = _CLOCK.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a time HH:MM (00:00-23:59)")
    return time(int(match.group(1)), int(match.group(2)))


def parse_window(text: str) -> Window:
    """Parse ``Days HH:MM-HH:MM Area/City``; raises ValueError saying what is wrong."""
    match = _WINDOW.match(text.strip())
    if not match:
        raise ValueError("must look like 'Mon-Fri 08:00-20:00 Europe/Madrid'")
    start = _parse_clock(match["start"], allow_24=False)
    end = _parse_clock(match["end"], allow_24=True)
    if start == end:
        raise ValueError("start and end are the same time; the window would be empty")
    try:
        zone = ZoneInfo(match["tz"])
    # A region name such as "Europe" is a directory of the zone database: OSError, not a zone.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"{match['tz']!r} is not a known IANA time zone (e.g. Europe/Madrid)"
        ) from None
    return Window(parse_days(match["days"]), start, end, zone)


def validate_cron(expression: str) -> None:
    """A standard 5-field cron expression; raises ValueError otherwise."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"must have 5 fields (minute hour day month weekday), got {len(fields)}")
    if not croniter.is_valid(expression):
        raise ValueError(f"{expression!r} is not a valid cron expression")


def validate_config(config: dict[str, Any], max_replicas: int) -> None:
    reject_unknown_keys(config, ("cron", "window"), ROOT, "scheduled")
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


def in_window(window: Window, now: datetime) -> bool:
    local = now.astimezone(window.zone)
    clock = local.time().replace(second=0, microsecond=0)
    if window.start < window.end or window.end == time(0, 0):
        opened_today = local.weekday() in window.weekdays and clock >= window.start
        return opened_today and (window.end == time(0, 0) or clock < window.end)
    # Past midnight: either the evening part today or the morning part of yesterday's window.
    yesterday = (local.weekday() - 1) % 7
    return (local.weekday() in window.weekdays and clock >= window.start) or (
        yesterday in window.weekdays and clock < window.end
    )


def desired(context: PolicyContext) -> Desired:
    config = context.config
    if "window" in config:
        if in_window(parse_window(config["window"]), context.now):
            return 1, None
        return 0, f"outside the schedule window {config['window']}"
    return 0, "cron schedules are not evaluated by this Manager release yet"


POLICY = Policy(validate_config, desired)
