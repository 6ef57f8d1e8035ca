"""wait_until_ready against a real Manager's readiness stream (no worker is registered)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from inferencekey import (
    ApiError,
    Backend,
    ManagementClient,
    NotFoundError,
    ReadinessEvent,
    WorkloadSpec,
)

from tests.support import RunningManager, TestProject


def spec(slug: str, **overrides: Any) -> WorkloadSpec:
    fields: dict[str, Any] = {
        "name": slug,
        "slug": slug,
        "model": "qwen2.5:0.5b",
        "backend": Backend.OLLAMA,
    }
    fields.update(overrides)
    return WorkloadSpec(**fields)


@pytest.fixture
def mgmt(manager: RunningManager, project: TestProject) -> Iterator[ManagementClient]:
    with ManagementClient(
        base_url=manager.url, sdk_token=project.sdk_token, project=project.slug
    ) as client:
        yield client


def test_a_workload_that_wants_no_replicas_fails_to_become_ready(mgmt: ManagementClient) -> None:
    ref = mgmt.ensure(spec("idle-bot", execution_policy_config={"replicas": 0}))

    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        mgmt.wait_until_ready(ref.workload_slug, timeout=15, silent=True)

    assert str(caught.value).startswith('workload "idle-bot" failed to become ready: ')
    assert "wants no replicas" in str(caught.value)
    assert time.monotonic() - started < 10


def test_a_workload_no_worker_can_take_stays_scheduling_until_the_deadline(
    mgmt: ManagementClient,
) -> None:
    ref = mgmt.ensure(spec("homeless-bot"))
    seen: list[ReadinessEvent] = []

    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r'^workload "homeless-bot" not ready after 3s$'):
        mgmt.wait_until_ready(ref.workload_slug, timeout=3, on_progress=seen.append)

    assert time.monotonic() - started < 5
    assert seen, "the Manager sends the current phase on connect"
    assert seen[0].phase == "scheduling"
    assert {event.phase for event in seen} == {"scheduling"}
    assert "cannot be placed" in seen[-1].message


def test_a_scheduled_workload_outside_its_window_says_when_it_opens(
    mgmt: ManagementClient,
) -> None:
    # A window on a day three days from now: closed whenever the test runs.
    day = (datetime.now(UTC) + timedelta(days=3)).strftime("%a")
    window = {"window": f"{day} 08:00-09:00 UTC"}
    ref = mgmt.ensure(spec("nightly", execution_policy="scheduled", execution_policy_config=window))
    seen: list[ReadinessEvent] = []

    with pytest.raises(TimeoutError):
        mgmt.wait_until_ready(ref.workload_slug, timeout=3, on_progress=seen.append)

    last = seen[-1]
    assert last.phase == "scheduling"
    assert last.message.startswith("waiting for its schedule: window closed; opens at ")
    opens = datetime.fromisoformat(last.message.rsplit(" ", 1)[1].replace("Z", "+00:00"))
    assert opens.strftime("%a %H:%M") == f"{day} 08:00"


def test_an_unknown_workload_is_not_found(mgmt: ManagementClient) -> None:
    with pytest.raises(NotFoundError):
        mgmt.wait_until_ready("no-such-bot", timeout=5, silent=True)
