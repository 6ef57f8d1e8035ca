"""Execution policies: one module each, holding its config rules and (later) its evaluator."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from inferencekey.enums import EXECUTION_POLICY_VALUES, ExecutionPolicy

from manager.errors import InvalidPolicyConfig, ValidationFailed

from . import autoscaling, fixed, scheduled

_VALIDATORS = {
    ExecutionPolicy.FIXED.value: fixed.validate_config,
    ExecutionPolicy.SCHEDULED.value: scheduled.validate_config,
    ExecutionPolicy.AUTOSCALING.value: autoscaling.validate_config,
}


def validate_policy(
    policy: str | None, config: dict[str, Any] | None, *, max_replicas: int
) -> None:
    """Check ``execution_policy`` and its ``execution_policy_config`` together.

    No policy means ``fixed``. Raises a 400 problem naming the offending key.
    """
    if policy is not None and policy not in EXECUTION_POLICY_VALUES:
        raise ValidationFailed(
            f"execution_policy {policy!r} is not one of: {', '.join(EXECUTION_POLICY_VALUES)}",
            field="execution_policy",
        )
    if config is not None and not isinstance(config, dict):
        raise InvalidPolicyConfig(
            "execution_policy_config must be an object", field="execution_policy_config"
        )
    _VALIDATORS[policy or ExecutionPolicy.FIXED.value](config or {}, max_replicas)


def desired_replica_count(
    policy: str | None, config: dict[str, Any] | None, now: datetime
) -> tuple[int, str | None]:
    """How many replicas a workload wants now, and why when that is zero or held."""
    config = config or {}
    if policy in (None, ExecutionPolicy.FIXED.value):
        count = fixed.desired_replica_count(config)
        return count, None if count else "fixed policy with replicas = 0"
    if policy == ExecutionPolicy.SCHEDULED.value:
        return scheduled.desired_replica_count(config, now)
    return autoscaling.desired_replica_count(config)
