"""The autoscaling evaluator on a fake clock: up at once, down after the delay, zero when idle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from manager.policies import DemandFigures, PolicyContext
from manager.policies.autoscaling import IDLE_REASON, desired

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
POOL = {"workers": {"source": "private", "private_worker_ids": ["wrk_1"]}}


def ask(
    *,
    current: int,
    in_flight: int = 0,
    concurrency: float = 0.0,
    queued: int = 0,
    engine: int | None = None,
    scaled_ago: float | None = None,
    request_ago: float | None = None,
    **config: Any,
) -> tuple[int, str | None]:
    config = {"min_workers": 0, "max_workers": 4, **POOL, **config}
    seconds = timedelta(seconds=1)
    context = PolicyContext(
        config=config,
        now=NOW,
        demand=DemandFigures(
            in_flight_requests=in_flight,
            concurrency=concurrency,
            queued_jobs=queued,
            engine_requests=engine,
            last_request_at=None if request_ago is None else NOW - request_ago * seconds,
        ),
        last_scaled_at=None if scaled_ago is None else NOW - scaled_ago * seconds,
        current_replicas=current,
        scale_down_delay_s=60,
        idle_s=300,
    )
    return desired(context)


def test_a_workload_at_zero_with_no_demand_stays_idle_and_says_it_wakes() -> None:
    assert ask(current=0) == (0, IDLE_REASON)


def test_one_held_request_wakes_a_workload_at_zero() -> None:
    assert ask(current=0, in_flight=1) == (1, "scaled 0 → 1: 1 in flight, target 4 per replica")


def test_up_at_once_to_what_the_target_asks_and_never_past_max_workers() -> None:
    assert ask(current=1, in_flight=14, scaled_ago=1)[0] == 4  # ceil(14 / 4)
    assert ask(current=1, in_flight=9, scaled_ago=1, target_in_flight=2)[0] == 4  # capped
    assert ask(current=1, in_flight=5, scaled_ago=1, max_workers=10)[0] == 2


def test_the_average_over_the_window_counts_what_a_snapshot_misses() -> None:
    # Many short requests: none in flight at the instant of the report, 7.5 on average.
    assert ask(current=1, in_flight=0, concurrency=7.5, scaled_ago=1)[0] == 2


def test_queued_jobs_are_demand() -> None:
    assert ask(current=0, queued=9) == (
        3,
        "scaled 0 → 3: 9 in flight incl. 9 queued job(s), target 4 per replica",
    )


def test_min_workers_is_a_floor() -> None:
    assert ask(current=0, min_workers=2)[0] == 2
    assert ask(current=2, min_workers=2, scaled_ago=10_000, request_ago=10_000)[0] == 2


def test_down_only_after_the_count_was_stable_for_the_delay() -> None:
    held = ask(current=4, in_flight=4, scaled_ago=30)
    assert held == (4, "holding 4: 4 in flight, target 4 per replica")
    assert ask(current=4, in_flight=4, scaled_ago=61) == (
        1,
        "scaled 4 → 1: 4 in flight, target 4 per replica",
    )


def test_to_zero_only_after_the_idle_period_and_to_one_before() -> None:
    assert ask(current=3, scaled_ago=100, request_ago=100)[0] == 1
    assert ask(current=1, scaled_ago=100, request_ago=100)[0] == 1
    replicas, reason = ask(current=1, scaled_ago=400, request_ago=301)
    assert replicas == 0
    assert reason == f"scaled 1 → 0: no request for 300s; {IDLE_REASON}"
    # The last scaling counts as activity too: a workload just woken is not put back at once.
    assert ask(current=1, scaled_ago=10, request_ago=1000)[0] == 1


def test_a_request_in_the_idle_period_keeps_it_up() -> None:
    assert ask(current=1, scaled_ago=1000, request_ago=299)[0] == 1


def test_what_the_engines_report_running_and_queued_counts_when_it_is_more() -> None:
    # Requests queue inside the engines beyond what the gateways still count as in flight.
    assert ask(current=1, in_flight=2, engine=11, scaled_ago=1)[0] == 3
    assert ask(current=1, in_flight=6, engine=1, scaled_ago=1)[0] == 2
