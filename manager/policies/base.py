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

    in_flight_requests: int = 0  # at the last report, held requests included
    requests_per_s: float = 0.0
    queued_jobs: int = 0  # async jobs waiting for a replica (no job queue yet: always 0)
    # Requests in flight on average over the last report's window (Little's law: short requests
    # that a snapshot misses still count).
    concurrency: float = 0.0
    # When the gateway last saw a request for it; None if never (or not since it was created).
    last_request_at: datetime | None = None
    # Requests its ready replicas' engines report running or queued (their /metrics); None where
    # no engine reports any.
    engine_requests: int | None = None


@dataclass(frozen=True)
class PolicyContext:
    """Everything an evaluator may look at: it reads no database and no clock of its own."""

    config: Mapping[str, Any]
    now: datetime
    demand: DemandFigures = field(default_factory=DemandFigures)
    # When the wanted replica count last changed; None until it first does.
    last_scaled_at: datetime | None = None
    # The replica count the policy wanted at the last pass (what runs or is on its way).
    current_replicas: int = 0
    # The operator's autoscaling delays (Settings.autoscale_*), in seconds.
    scale_down_delay_s: float = 300.0
    idle_s: float = 600.0


@dataclass(frozen=True)
class Policy:
    # Raises InvalidPolicyConfig naming the key; the int is the Manager's replica limit.
    validate_config: Callable[[dict[str, Any], int], None]
    desired: Callable[[PolicyContext], Desired]
