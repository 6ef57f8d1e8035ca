"""Execution policies: one module each, holding its config rules and its evaluator.

`POLICIES` is the one registry: validation and the reconciler both look a policy up there, so a
new policy is a module plus one line here.
"""

from __future__ import annotations

from typing import Any

from inferencekey.enums import EXECUTION_POLICY_VALUES, ExecutionPolicy

from manager.errors import InvalidPolicyConfig, ValidationFailed

from . import autoscaling, fixed, scheduled
from .base import DemandFigures, Desired, Policy, PolicyContext

__all__ = [
    "POLICIES",
    "DemandFigures",
    "Desired",
    "Policy",
    "PolicyContext",
    "policy_for",
    "validate_policy",
]

POLICIES: dict[ExecutionPolicy, Policy] = {
    ExecutionPolicy.FIXED: fixed.POLICY,
    ExecutionPolicy.SCHEDULED: scheduled.POLICY,
    ExecutionPolicy.AUTOSCALING: autoscaling.POLICY,
}


def policy_for(name: str | None) -> Policy:
    """The policy a workload names; no policy means ``fixed``. ``name`` was validated."""
    return POLICIES[ExecutionPolicy(name or ExecutionPolicy.FIXED)]


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
    policy_for(policy).validate_config(config or {}, max_replicas)
