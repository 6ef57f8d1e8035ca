"""What each heartbeat carries, and how long an agent waits after a failed request
(worker_agent/heartbeats.py, used by the agent and by the control-plane bench's agents)."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from ik_contracts.protocol import Heartbeat
from worker_agent.heartbeats import (
    FULL_REPORT_EVERY_S,
    MAX_RETRY_AFTER_S,
    Backoff,
    HeartbeatReports,
    retry_after_s,
    was_shed,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def inventory(**gpu: Any) -> dict[str, Any]:
    return {
        "source": "simulated",
        "hostname": "box",
        "cuda_version": "12.4",
        "gpus": [
            {
                "index": 0,
                "uuid": "GPU-0",
                "name": "NVIDIA L4",
                "memory_total_mb": 23034,
                "memory_used_mb": 0,
                "utilization_pct": 0,
                **gpu,
            }
        ],
        "model_files": {"/models/a.gguf": 100},
    }


REPLICA = {"id": "rep_1", "state": "starting", "reason": "loading", "port": 41000, "restarts": 0}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reports(clock: Clock) -> HeartbeatReports:
    return HeartbeatReports(clock=clock)


def send(
    reports: HeartbeatReports,
    inv: dict[str, Any] | None = None,
    replicas: list[dict[str, Any]] | None = None,
    desired: str | None = "v1",
) -> dict[str, Any]:
    body = reports.body(
        agent_version="test",
        address="http://box:8090",
        inventory=inv or inventory(),
        replicas=list(replicas or []),
        desired_version=desired,
    )
    Heartbeat.model_validate(body)  # what the agent sends, the Manager reads
    return body


def test_the_first_heartbeat_carries_everything_and_an_acknowledged_one_is_the_baseline(
    reports: HeartbeatReports,
) -> None:
    first = send(reports, replicas=[REPLICA])
    assert first["inventory"] == inventory() and first["replicas"] == [REPLICA]
    reports.acknowledged()
    steady = send(reports, replicas=[REPLICA])
    assert steady == {"agent_version": "test", "address": "http://box:8090"}


def test_an_unacknowledged_heartbeat_is_not_the_baseline(reports: HeartbeatReports) -> None:
    send(reports)
    # No answer yet (in flight or lost): the next one still carries everything.
    assert "inventory" in send(reports)


def test_utilisation_and_used_memory_alone_are_no_news(reports: HeartbeatReports) -> None:
    send(reports)
    reports.acknowledged()
    busy = send(reports, inventory(utilization_pct=97, memory_used_mb=20000))
    assert "inventory" not in busy


@pytest.mark.parametrize(
    "changed",
    [
        inventory(memory_total_mb=11000),
        inventory(uuid="GPU-other"),
        {**inventory(), "model_files": {"/models/a.gguf": 100, "/models/b.gguf": 5}},
        {**inventory(), "cuda_version": "12.8"},
        {**inventory(), "gpus": []},
    ],
)
def test_a_lasting_inventory_change_is_sent_once(
    reports: HeartbeatReports, changed: dict[str, Any]
) -> None:
    send(reports)
    reports.acknowledged()
    assert send(reports, changed)["inventory"] == changed
    reports.acknowledged()
    assert "inventory" not in send(reports, changed)


def test_replicas_are_sent_when_their_observed_state_or_the_desired_set_changes(
    reports: HeartbeatReports,
) -> None:
    send(reports, replicas=[REPLICA])
    reports.acknowledged()
    ready = {**REPLICA, "state": "ready", "reason": None}
    body = send(reports, replicas=[ready])
    assert body["replicas"] == [ready] and "inventory" not in body
    reports.acknowledged()
    # A new desired set (a replica stopped before this agent ever ran it, say): the Manager
    # hears the list once, which confirms what is not running.
    assert send(reports, replicas=[ready], desired="v2")["replicas"] == [ready]
    reports.acknowledged()
    assert "replicas" not in send(reports, replicas=[ready], desired="v2")
    reports.acknowledged()
    assert send(reports, replicas=[], desired="v2")["replicas"] == []


def test_everything_is_sent_again_every_minute(reports: HeartbeatReports, clock: Clock) -> None:
    send(reports, replicas=[REPLICA])
    reports.acknowledged()
    clock.now += FULL_REPORT_EVERY_S - 1
    assert "inventory" not in send(reports, replicas=[REPLICA])
    reports.acknowledged()
    clock.now += 1
    full = send(reports, replicas=[REPLICA])
    assert "inventory" in full and "replicas" in full
    reports.acknowledged()
    assert "inventory" not in send(reports, replicas=[REPLICA])


def test_after_a_failed_heartbeat_everything_is_sent_but_not_after_a_shed_one(
    reports: HeartbeatReports,
) -> None:
    send(reports)
    reports.acknowledged()
    send(reports)
    reports.failed(shed=True)  # 503/429: the Manager wrote nothing, the baseline holds
    assert "inventory" not in send(reports)
    reports.failed()  # a 500, a timeout, no answer: the Manager's picture is not known
    assert "inventory" in send(reports)


def answer(status: int, retry_after: str | None = None) -> httpx.HTTPStatusError:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    request = httpx.Request("POST", "http://manager/api/agent/heartbeat")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError("failed", request=request, response=response)


def test_retry_after_is_read_from_503_and_429_only() -> None:
    assert retry_after_s(answer(503, "2")) == 2.0
    assert retry_after_s(answer(429, "7")) == 7.0
    assert retry_after_s(answer(500, "2")) is None
    assert retry_after_s(answer(503)) is None
    assert retry_after_s(answer(503, "Wed, 21 Oct 2015 07:28:00 GMT")) is None
    assert retry_after_s(answer(503, "86400")) == MAX_RETRY_AFTER_S  # the lease must not lapse
    assert retry_after_s(httpx.ConnectError("refused")) is None
    assert was_shed(answer(503)) and was_shed(answer(429)) and not was_shed(answer(500))


def test_backoff_honours_retry_after_with_jitter_that_grows_to_the_cap() -> None:
    backoff = Backoff(cap_s=15.0, rng=random.Random(7))
    waits = [backoff.failed(10.0, 2.0) for _ in range(8)]
    assert all(wait >= 2.0 for wait in waits)
    assert waits[0] <= 4.0 and max(waits) <= 15.0  # the cap holds, Retry-After included
    fleet = [Backoff(cap_s=15.0).failed(10.0, 2.0) for _ in range(50)]
    assert max(fleet) - min(fleet) > 0.5, "a fleet told the same Retry-After must spread out"


def test_backoff_without_retry_after_is_full_jitter_capped_and_reset_by_a_success() -> None:
    backoff = Backoff(cap_s=15.0, rng=random.Random(3))
    ceilings = [2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    for ceiling in ceilings:
        assert 0 <= backoff.failed(2.0) <= ceiling
    assert backoff.failures == len(ceilings)
    backoff.reset()
    assert backoff.failures == 0 and backoff.failed(2.0) <= 2.0
