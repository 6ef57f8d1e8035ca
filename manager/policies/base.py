"""What every execution policy is: a config validator and an evaluator over a `PolicyContext`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Desired = tuple[int, str | None]  # replicas wanted now, and why when that is zero or held


@dataclass(frozen=True)
class DemandFigures:
    """A workload's traffic now: what the gateways measured, summed over Manager processes."""

    in_flight_requests: int = 0
    requests_per_s: float = 0.0
    queued_jobs: int = 0  # async jobs waiting for a replica (no job queue yet: always 0)


@dataclass(frozen=True)
class PolicyContext:
    """Everything an evaluator may look at: it reads no database and no clock of its own."""

    config: Mapping[str, Any]
    now: datetime
    demand: DemandFigures = field(default_factory=DemandFigures)
    # When the wanted replica count last changed; None until it first does.
    last_scaled_at: datetime | None = None


@dataclass(frozen=True)
class Policy:
    # Raises InvalidPolicyConfig naming the key; the int is the Manager's replica limit.
    validate_config: Callable[[dict[str, Any], int], None]
    desired: Callable[[PolicyContext], Desired]
