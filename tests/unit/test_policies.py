"""The policy registry and each policy's evaluator, over hand-built contexts (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from inferencekey.enums import ExecutionPolicy

from manager.errors import InvalidPolicyConfig
from manager.policies import (
    POLICIES,
    PolicyContext,
    autoscaling,
    fixed,
    policy_for,
    scheduled,
    validate_policy,
)

FRIDAY_NOON = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def context(config: dict[str, Any], now: datetime = FRIDAY_NOON, **extra: Any) -> PolicyContext:
    return PolicyContext(config=config, now=now, **extra)


def test_every_execution_policy_has_one_entry_in_the_registry() -> None:
    assert set(POLICIES) == set(ExecutionPolicy)
    assert POLICIES[ExecutionPolicy.FIXED] is fixed.POLICY
    assert POLICIES[ExecutionPolicy.SCHEDULED] is scheduled.POLICY
    assert POLICIES[ExecutionPolicy.AUTOSCALING] is autoscaling.POLICY


def test_no_policy_means_fixed_and_names_are_looked_up_by_their_wire_value() -> None:
    assert policy_for(None) is fixed.POLICY
    assert policy_for("scheduled") is scheduled.POLICY
    assert policy_for(ExecutionPolicy.AUTOSCALING) is autoscaling.POLICY


def test_validation_goes_through_the_registered_policys_validator() -> None:
    validate_policy("fixed", {"replicas": 2}, max_replicas=4)
    with pytest.raises(InvalidPolicyConfig, match="replicas must be at most 4"):
        validate_policy("fixed", {"replicas": 5}, max_replicas=4)
    with pytest.raises(InvalidPolicyConfig, match="exactly one of 'cron' or 'window'"):
        validate_policy("scheduled", {}, max_replicas=4)
    with pytest.raises(InvalidPolicyConfig, match="unknown key"):
        validate_policy(None, {"min_workers": 1}, max_replicas=4)


def test_fixed_wants_its_replicas_one_by_default_and_says_why_at_zero() -> None:
    assert fixed.desired(context({})) == (1, None)
    assert fixed.desired(context({"replicas": 3})) == (3, None)
    assert fixed.desired(context({"replicas": 0})) == (0, "fixed policy with replicas = 0")


def test_scheduled_wants_its_replicas_inside_its_window_and_none_outside() -> None:
    # The rest of its rules: tests/unit/test_scheduled.py.
    window = {"window": "Mon-Fri 08:00-20:00 UTC"}
    assert scheduled.desired(context(window)) == (1, "window open; closes at 2026-11-27T20:00:00Z")
    saturday = FRIDAY_NOON + timedelta(days=1)
    assert scheduled.desired(context(window, saturday)) == (
        0,
        "window closed; opens at 2026-11-30T08:00:00Z",
    )
