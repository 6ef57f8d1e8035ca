"""The ``scheduled`` policy over a fake clock: its windows and cron runs, what it says outside
them, and its config rules. Pure: each context carries the time, no database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from manager.errors import InvalidPolicyConfig
from manager.policies import DemandFigures, PolicyContext, scheduled, validate_policy
from manager.policies.base import Desired


def at(text: str) -> datetime:
    """A UTC instant, ``2026-11-27T12:00``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def wants(config: dict[str, Any], now: str, **extra: Any) -> Desired:
    return scheduled.desired(PolicyContext(config=config, now=at(now), **extra))


def closed(opens: str) -> Desired:
    return 0, f"window closed; opens at {opens}"


def open_until(closes: str, replicas: int = 1) -> Desired:
    return replicas, f"window open; closes at {closes}"


# Madrid is UTC+1 in winter (CET), UTC+2 in summer (CEST); 2026-11-27 is a Friday.
WEEKDAYS_MADRID = {"window": "Mon-Fri 08:00-20:00 Europe/Madrid"}


def test_a_window_opens_at_its_start_and_closes_at_its_end_to_the_second() -> None:
    assert wants(WEEKDAYS_MADRID, "2026-11-27T06:59:59") == closed("2026-11-27T07:00:00Z")
    assert wants(WEEKDAYS_MADRID, "2026-11-27T07:00:00") == open_until("2026-11-27T19:00:00Z")
    assert wants(WEEKDAYS_MADRID, "2026-11-27T18:59:59") == open_until("2026-11-27T19:00:00Z")
    # Friday evening: the next window is Monday's.
    assert wants(WEEKDAYS_MADRID, "2026-11-27T19:00:00") == closed("2026-11-30T07:00:00Z")
    assert wants(WEEKDAYS_MADRID, "2026-11-28T12:00:00") == closed("2026-11-30T07:00:00Z")


def test_a_window_gives_the_replicas_it_names() -> None:
    config = {**WEEKDAYS_MADRID, "replicas": 3}
    assert wants(config, "2026-11-27T12:00") == open_until("2026-11-27T19:00:00Z", 3)
    assert wants(config, "2026-11-28T12:00") == closed("2026-11-30T07:00:00Z")


def test_day_lists_and_ranges_that_wrap_the_week() -> None:
    assert scheduled.parse_days("Mon,Wed,Fri") == {0, 2, 4}
    assert scheduled.parse_days("Fri-Mon") == {4, 5, 6, 0}
    assert scheduled.parse_days("Sat-Sun,Wed") == {5, 6, 2}
    listed = {"window": "Mon,Wed 09:00-10:00 UTC"}
    assert wants(listed, "2026-11-24T09:30") == closed("2026-11-25T09:00:00Z")  # a Tuesday
    assert wants(listed, "2026-11-25T09:30") == open_until("2026-11-25T10:00:00Z")
    long_weekend = {"window": "Fri-Mon 09:00-10:00 UTC"}
    assert wants(long_weekend, "2026-11-30T09:30") == open_until("2026-11-30T10:00:00Z")
    assert wants(long_weekend, "2026-12-01T09:30") == closed("2026-12-04T09:00:00Z")


def test_an_overnight_window_runs_past_midnight_into_the_next_day() -> None:
    friday_night = {"window": "Fri 22:00-06:00 UTC"}
    assert wants(friday_night, "2026-11-27T21:59") == closed("2026-11-27T22:00:00Z")
    assert wants(friday_night, "2026-11-27T22:00") == open_until("2026-11-28T06:00:00Z")
    # Saturday morning is still Friday's window, though Saturday is not one of its days.
    assert wants(friday_night, "2026-11-28T05:59") == open_until("2026-11-28T06:00:00Z")
    assert wants(friday_night, "2026-11-28T06:00") == closed("2026-12-04T22:00:00Z")
    # Thursday's night is not Friday's: the morning after a day not listed is closed.
    assert wants(friday_night, "2026-11-27T05:00") == closed("2026-11-27T22:00:00Z")


def test_whole_days_run_back_to_back_and_close_after_the_last() -> None:
    weekdays = {"window": "Mon-Fri 00:00-24:00 UTC"}
    assert wants(weekdays, "2026-11-23T00:00") == open_until("2026-11-28T00:00:00Z")
    assert wants(weekdays, "2026-11-26T23:59:59") == open_until("2026-11-28T00:00:00Z")
    assert wants(weekdays, "2026-11-28T00:00") == closed("2026-11-30T00:00:00Z")
    always = {"window": "Mon-Sun 00:00-24:00 Europe/Madrid"}
    assert wants(always, "2026-11-28T03:00") == (1, "window open; it never closes")
    # A whole local day: midnight to midnight in the window's zone.
    saturday = {"window": "Sat 00:00-24:00 Europe/Madrid"}
    assert wants(saturday, "2026-11-27T22:59") == closed("2026-11-27T23:00:00Z")
    assert wants(saturday, "2026-11-27T23:00") == open_until("2026-11-28T23:00:00Z")


def test_a_window_keeps_local_time_across_madrids_dst_changes() -> None:
    every_day = {"window": "Mon-Sun 08:00-20:00 Europe/Madrid"}
    # Spring forward on Sunday 2026-03-29 at 01:00 UTC: the day before opened at 07:00 UTC.
    assert wants(every_day, "2026-03-28T12:00") == open_until("2026-03-28T19:00:00Z")
    assert wants(every_day, "2026-03-28T20:00") == closed("2026-03-29T06:00:00Z")
    assert wants(every_day, "2026-03-29T06:00") == open_until("2026-03-29T18:00:00Z")
    # Fall back on Sunday 2026-10-25 at 01:00 UTC.
    assert wants(every_day, "2026-10-24T18:00") == closed("2026-10-25T07:00:00Z")
    assert wants(every_day, "2026-10-25T06:59") == closed("2026-10-25T07:00:00Z")
    # An overnight window across the change is an hour shorter in spring.
    overnight = {"window": "Sat 22:00-06:00 Europe/Madrid"}
    assert wants(overnight, "2026-03-28T21:00") == open_until("2026-03-29T04:00:00Z")


def test_a_window_edge_the_clock_skips_or_repeats_is_met_once() -> None:
    # 02:30 does not exist in Madrid on 2026-03-29 (01:59 CET, then 03:00 CEST): the window
    # opens when the clock jumps past it.
    skipped = {"window": "Sun 02:30-04:00 Europe/Madrid"}
    assert wants(skipped, "2026-03-29T00:59:59") == closed("2026-03-29T01:00:00Z")
    assert wants(skipped, "2026-03-29T01:00") == open_until("2026-03-29T02:00:00Z")
    # 02:30 happens twice on 2026-10-25: the window opens at the first, and stays open when the
    # clock turns back to 02:00.
    repeated = {"window": "Sun 02:30-05:00 Europe/Madrid"}
    assert wants(repeated, "2026-10-25T00:29") == closed("2026-10-25T00:30:00Z")
    assert wants(repeated, "2026-10-25T00:30") == open_until("2026-10-25T04:00:00Z")
    assert wants(repeated, "2026-10-25T01:15") == open_until("2026-10-25T04:00:00Z")


def test_a_window_keeps_local_time_across_new_yorks_dst_changes() -> None:
    office = {"window": "Mon-Fri 09:00-17:00 America/New_York"}
    # Summer time starts Sunday 2026-03-08: EST (UTC-5) on Friday, EDT (UTC-4) on Monday.
    assert wants(office, "2026-03-06T14:00") == open_until("2026-03-06T22:00:00Z")
    assert wants(office, "2026-03-06T22:00") == closed("2026-03-09T13:00:00Z")
    assert wants(office, "2026-03-09T13:00") == open_until("2026-03-09T21:00:00Z")
    # And ends Sunday 2026-11-01.
    assert wants(office, "2026-10-30T21:00") == closed("2026-11-02T14:00:00Z")


def started(fired: str, until: str, replicas: int = 1) -> Desired:
    return replicas, f"cron run started: fired at {fired}, until {until}"


def ended(fires: str) -> Desired:
    return 0, f"cron run ended; next run fires at {fires}"


NIGHTLY = {"cron": "0 2 * * *"}


def test_a_cron_run_starts_at_its_fire_and_lasts_an_hour_by_default() -> None:
    assert wants(NIGHTLY, "2026-11-27T01:59:59") == ended("2026-11-27T02:00:00Z")
    run = started("2026-11-27T02:00:00Z", "2026-11-27T03:00:00Z")
    assert wants(NIGHTLY, "2026-11-27T02:00") == run
    assert wants(NIGHTLY, "2026-11-27T02:59:59") == run
    assert wants(NIGHTLY, "2026-11-27T03:00") == ended("2026-11-28T02:00:00Z")


def test_a_cron_run_lasts_its_duration_minutes_with_its_replicas() -> None:
    config = {**NIGHTLY, "duration_minutes": 90, "replicas": 2}
    run = started("2026-11-27T02:00:00Z", "2026-11-27T03:30:00Z", 2)
    assert wants(config, "2026-11-27T03:29") == run
    assert wants(config, "2026-11-27T03:30") == ended("2026-11-28T02:00:00Z")


def test_runs_that_overlap_keep_the_replicas_on_from_the_latest_fire() -> None:
    config = {"cron": "*/10 * * * *", "duration_minutes": 15}
    assert wants(config, "2026-11-27T12:12") == started(
        "2026-11-27T12:10:00Z", "2026-11-27T12:25:00Z"
    )


def test_a_cron_reads_in_utc_unless_it_names_a_timezone() -> None:
    assert wants({"cron": "0 7 * * *"}, "2026-11-27T07:00") == started(
        "2026-11-27T07:00:00Z", "2026-11-27T08:00:00Z"
    )
    new_york = {"cron": "0 7 * * *", "timezone": "America/New_York"}
    # 07:00 in New York is 12:00 UTC in winter and 11:00 UTC in summer.
    assert wants(new_york, "2026-11-27T07:00") == ended("2026-11-27T12:00:00Z")
    assert wants(new_york, "2026-11-27T12:30") == started(
        "2026-11-27T12:00:00Z", "2026-11-27T13:00:00Z"
    )
    assert wants(new_york, "2026-03-07T13:00") == ended("2026-03-08T11:00:00Z")


def test_a_cron_run_lasts_its_minutes_across_a_dst_change() -> None:
    # 01:00 Madrid on 2026-03-29 is 00:00 UTC; the clock then jumps an hour, the run does not.
    config = {"cron": "0 1 * * *", "timezone": "Europe/Madrid", "duration_minutes": 120}
    assert wants(config, "2026-03-29T01:59") == started(
        "2026-03-29T00:00:00Z", "2026-03-29T02:00:00Z"
    )
    assert wants(config, "2026-03-29T02:00") == ended("2026-03-29T23:00:00Z")


def test_a_cron_run_is_kept_while_async_jobs_are_queued() -> None:
    scaled_up = at("2026-11-27T02:00:02")
    queued = DemandFigures(queued_jobs=3)
    kept = wants(NIGHTLY, "2026-11-27T03:10", demand=queued, last_scaled_at=scaled_up)
    assert kept == (
        1,
        "cron run kept: 3 async job(s) still queued "
        "(fired at 2026-11-27T02:00:00Z, duration ended at 2026-11-27T03:00:00Z)",
    )
    # Once the queue is empty the run ends; jobs queued after that wait for the next fire.
    assert wants(NIGHTLY, "2026-11-27T03:10", last_scaled_at=scaled_up) == ended(
        "2026-11-28T02:00:00Z"
    )
    scaled_down = at("2026-11-27T03:10:01")
    later = wants(NIGHTLY, "2026-11-27T04:00", demand=queued, last_scaled_at=scaled_down)
    assert later == ended("2026-11-28T02:00:00Z")
    # A workload that never ran keeps no run for its queue either.
    assert wants(NIGHTLY, "2026-11-27T04:00", demand=queued) == ended("2026-11-28T02:00:00Z")


def accepts(config: dict[str, Any]) -> None:
    validate_policy("scheduled", config, max_replicas=4)


def refuses(config: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(InvalidPolicyConfig) as raised:
        validate_policy("scheduled", config, max_replicas=4)
    assert raised.value.field == field
    assert says in str(raised.value)


def test_the_config_keys_it_accepts() -> None:
    accepts({"window": "Mon-Fri 00:00-24:00 Europe/Madrid"})
    accepts({"window": "Sat,Sun 22:00-06:00 UTC", "replicas": 4})
    accepts({"cron": "0 2 * * 1-5"})
    accepts({"cron": "0 2 * * *", "duration_minutes": 10080, "timezone": "Europe/Madrid"})
    accepts({"cron": "*/5 * * * *", "duration_minutes": 1, "replicas": 2})


@pytest.mark.parametrize(
    ("config", "field", "says"),
    [
        ({}, "execution_policy_config", "exactly one of 'cron' or 'window'"),
        ({"window": "Mon 08:00-08:00 UTC"}, "execution_policy_config.window", "00:00-24:00"),
        ({"window": "Mon 24:00-08:00 UTC"}, "execution_policy_config.window", "00:00-23:59"),
        ({"window": "Mon 08:00-20:00"}, "execution_policy_config.window", "must look like"),
        ({"window": "Mon 08:00-20:00 Europe"}, "execution_policy_config.window", "time zone"),
        ({"cron": "0 0 30 2 *"}, "execution_policy_config.cron", "never fires"),
        ({"cron": 2}, "execution_policy_config.cron", "must be a string"),
        (
            {"cron": "0 2 * * *", "replicas": 0},
            "execution_policy_config.replicas",
            "must be an integer >= 1",
        ),
        (
            {"window": "Mon 08:00-20:00 UTC", "replicas": 5},
            "execution_policy_config.replicas",
            "at most 4",
        ),
        (
            {"cron": "0 2 * * *", "duration_minutes": 0},
            "execution_policy_config.duration_minutes",
            "must be an integer >= 1",
        ),
        (
            {"cron": "0 2 * * *", "duration_minutes": 10081},
            "execution_policy_config.duration_minutes",
            "at most 10080",
        ),
        (
            {"cron": "0 2 * * *", "duration_minutes": "60"},
            "execution_policy_config.duration_minutes",
            "must be an integer",
        ),
        (
            {"cron": "0 2 * * *", "timezone": "Mars/Olympus"},
            "execution_policy_config.timezone",
            "not a known IANA time zone",
        ),
        (
            {"cron": "0 2 * * *", "timezone": 1},
            "execution_policy_config.timezone",
            "must be a string",
        ),
        (
            {"window": "Mon 08:00-20:00 UTC", "timezone": "Europe/Madrid"},
            "execution_policy_config.timezone",
            "applies to 'cron' only",
        ),
        (
            {"window": "Mon 08:00-20:00 UTC", "duration_minutes": 30},
            "execution_policy_config.duration_minutes",
            "applies to 'cron' only",
        ),
        ({"cron": "0 2 * * *", "duration": 30}, "execution_policy_config.duration", "unknown"),
    ],
)
def test_the_config_keys_it_refuses_naming_the_key(
    config: dict[str, Any], field: str, says: str
) -> None:
    refuses(config, field, says)
