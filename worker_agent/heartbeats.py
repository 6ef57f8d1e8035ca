"""What each heartbeat carries, and how long to wait after a request the Manager did not take.

Shared by the agent's loops (worker_agent/agent.py) and the control-plane bench's simulated
agents (bench/control_plane.py), so that the bench speaks the protocol through this very code.

A heartbeat renews the worker's lease and carries only what changed since the last heartbeat the
Manager acknowledged (a 2xx): ``inventory`` when it changed (GPU utilisation and used memory
alone do not count: they move all the time and only the listings show them), ``replicas`` when
the observed list changed or the desired set did (so that a replica stopped before this agent
ever ran it is confirmed gone). Both go in full on the first heartbeat, after a heartbeat that
failed, and at least every ``FULL_REPORT_EVERY_S`` whatever happened, which also refreshes the
utilisation figures. A heartbeat the Manager shed (503 or 429: it wrote nothing) keeps the
baseline, so the retry stays small.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from ik_contracts.protocol import AGENT_KEEPALIVE_S

FULL_REPORT_EVERY_S = 60.0
# Until the Manager's first answer names its interval.
DEFAULT_HEARTBEAT_INTERVAL_S = 2.0
# Retries after failed requests (Backoff). A heartbeat waits at most half the Manager's default
# not-ready lease (30 s), so that a Manager back from a restart hears from every agent before
# it takes their workers out of routing; a failed long-poll starts from WATCH_RETRY_S.
HEARTBEAT_BACKOFF_CAP_S = 15.0
WATCH_RETRY_S = 2.0
WATCH_BACKOFF_CAP_S = 30.0
# The agent's client to the Manager: idle connections kept AGENT_KEEPALIVE_S (ik_contracts).
MANAGER_CONNECTION_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=AGENT_KEEPALIVE_S
)
# GPU figures that are not news: left out of the comparison, refreshed by the full report.
GPU_NOISE = ("memory_used_mb", "utilization_pct")
# Answers that say "not now, nothing was done": honour their Retry-After.
SHED_STATUSES = (429, 503)
# A Retry-After longer than this (a confused proxy) is read as this: the lease (30 s before a
# worker is not ready) must not lapse.
MAX_RETRY_AFTER_S = 20.0


def _lasting(inventory: dict[str, Any]) -> dict[str, Any]:
    gpus = [
        {name: value for name, value in gpu.items() if name not in GPU_NOISE}
        for gpu in inventory.get("gpus") or ()
    ]
    return {**inventory, "gpus": gpus}


class HeartbeatReports:
    """Builds each heartbeat's body from the agent's current picture; told how the Manager
    answered, it keeps the last acknowledged picture to compare the next one with."""

    def __init__(
        self,
        full_every_s: float = FULL_REPORT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.full_every_s = full_every_s
        self._clock = clock
        # The last acknowledged picture; None: the Manager's is unknown (send everything).
        self._inventory: dict[str, Any] | None = None
        self._replicas: list[dict[str, Any]] | None = None
        self._desired_version: str | None = None
        self._full_at: float | None = None
        # What the heartbeat in flight carries, adopted when it is acknowledged.
        self._in_flight: (
            tuple[dict[str, Any] | None, list[dict[str, Any]] | None, str | None, float | None]
            | None
        ) = None

    def body(
        self,
        *,
        agent_version: str,
        address: str,
        inventory: dict[str, Any],
        replicas: list[dict[str, Any]],
        desired_version: str | None = None,
    ) -> dict[str, Any]:
        """The next heartbeat: ``inventory`` and ``replicas`` only where the Manager's copy is
        not known to be the same. ``desired_version`` is the version of the desired set the
        agent holds."""
        now = self._clock()
        full = self._full_at is None or now - self._full_at >= self.full_every_s
        lasting = _lasting(inventory)
        body: dict[str, Any] = {"agent_version": agent_version, "address": address}
        if full or lasting != self._inventory:
            body["inventory"] = inventory
        if full or replicas != self._replicas or desired_version != self._desired_version:
            body["replicas"] = replicas
        self._in_flight = (lasting, replicas, desired_version, now if full else self._full_at)
        return body

    def acknowledged(self) -> None:
        """The Manager took the last body (2xx): it is the baseline from now on."""
        if self._in_flight is not None:
            self._inventory, self._replicas, self._desired_version, self._full_at = self._in_flight
            self._in_flight = None

    def failed(self, *, shed: bool = False) -> None:
        """The last body was not taken. ``shed`` (503/429): the Manager wrote nothing and the
        baseline still holds; otherwise the next heartbeat carries everything."""
        self._in_flight = None
        if not shed:
            self._inventory = self._replicas = self._desired_version = self._full_at = None


def retry_after_s(error: BaseException) -> float | None:
    """The Retry-After (in seconds) of a 503 or 429 answer, else None."""
    if not isinstance(error, httpx.HTTPStatusError):
        return None
    if error.response.status_code not in SHED_STATUSES:
        return None
    try:
        seconds = float(error.response.headers.get("retry-after", ""))
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def was_shed(error: BaseException) -> bool:
    return isinstance(error, httpx.HTTPStatusError) and (
        error.response.status_code in SHED_STATUSES
    )


class Backoff:
    """How long to wait after each failure in a row, until a success resets it.

    With the Manager's Retry-After: that long, plus a jitter of up to Retry-After (doubling with
    each failure in a row, to ``cap_s``), so that a fleet told the same thing comes back spread
    out. Without one (the Manager unreachable, a 5xx): exponential with full jitter, a uniform
    wait between 0 and ``base_s`` doubled per failure, capped at ``cap_s``.
    """

    def __init__(self, cap_s: float, rng: random.Random | None = None) -> None:
        self.cap_s = cap_s
        self.failures = 0
        self._random = rng or random.Random()

    def reset(self) -> None:
        self.failures = 0

    def failed(self, base_s: float, retry_after: float | None = None) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        step = 2 ** min(self.failures - 1, 16)
        if retry_after is not None:
            # Never sooner than asked, with a jitter that spreads a fleet told the same thing;
            # never longer than the cap unless the Manager asked for longer.
            jittered = retry_after + self._random.uniform(0, retry_after * step)
            return min(jittered, max(self.cap_s, retry_after))
        return self._random.uniform(0, min(self.cap_s, base_s * step))
