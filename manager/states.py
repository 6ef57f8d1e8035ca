"""States only the Manager decides. A replica's observed state is the agent protocol's
(``ik_contracts.protocol.ReplicaState``); a workload's phase is on the wire (``WorkloadPhase`` in
the SDK). The columns holding these stay strings; a StrEnum member compares equal to its value.
"""

from __future__ import annotations

from enum import StrEnum


class WorkerState(StrEnum):
    """A worker's liveness, from its heartbeats (``workers.state``)."""

    REGISTERED = "registered"  # created; its agent has not heartbeated yet
    READY = "ready"
    NOT_READY = "not_ready"  # silent past the not-ready threshold: nothing new is placed on it
    LOST = "lost"  # silent past the lost threshold: its replicas are placed elsewhere


class DesiredState(StrEnum):
    """What the Manager wants of a replica (``replicas.desired_state``)."""

    RUN = "run"
    # Stop it; the row stays (its GPUs claimed) until the agent no longer runs it.
    STOP = "stop"
