"""The readiness view of a workload: its phase mapped onto the contract's readiness phases."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from inferencekey.enums import ExecutionPolicy, ReadinessPhase, WorkloadPhase
from inferencekey.wire import ReadinessEvent

from manager.db.models import Workload

# Workload phases that are not readiness phases, and what a waiting client should hear.
_PHASE_MAP: dict[str, ReadinessPhase] = {
    WorkloadPhase.SCHEDULING.value: ReadinessPhase.SCHEDULING,
    WorkloadPhase.UNSCHEDULABLE.value: ReadinessPhase.SCHEDULING,
    WorkloadPhase.PROVISIONING.value: ReadinessPhase.PROVISIONING,
    WorkloadPhase.BOOTSTRAPPING.value: ReadinessPhase.BOOTSTRAPPING,
    WorkloadPhase.READY.value: ReadinessPhase.READY,
    WorkloadPhase.ERROR.value: ReadinessPhase.ERROR,
    WorkloadPhase.STOPPED.value: ReadinessPhase.ERROR,
    WorkloadPhase.DELETED.value: ReadinessPhase.ERROR,
}
_STEPS = {WorkloadPhase.BOOTSTRAPPING.value: "model_load"}


@dataclass(frozen=True)
class Readiness:
    phase: str
    message: str
    step: str | None

    def frame(self, since: datetime, now: datetime) -> ReadinessEvent:
        return ReadinessEvent(
            phase=self.phase,
            message=self.message,
            elapsed_ms=max(0, int((now - since).total_seconds() * 1000)),
            step=self.step or None,
        )


def readiness_of(workload: Workload) -> Readiness:
    phase = _PHASE_MAP.get(workload.phase, ReadinessPhase.SCHEDULING).value
    reason = workload.phase_reason or workload.phase
    policy = workload.execution_policy
    if workload.phase == WorkloadPhase.STOPPED and policy == ExecutionPolicy.AUTOSCALING:
        # At zero it is as callable as ever: the next request wakes it and is held meanwhile.
        phase = ReadinessPhase.READY.value
        reason = f"ready to wake: {reason}"
    elif workload.phase == WorkloadPhase.STOPPED and policy == ExecutionPolicy.SCHEDULED:
        # Outside its window or run: a waiting client hears when the next one begins.
        phase = ReadinessPhase.SCHEDULING.value
        reason = f"waiting for its schedule: {reason}"
    elif workload.phase == WorkloadPhase.STOPPED:
        reason = f"the workload wants no replicas: {reason}"
    elif workload.phase == WorkloadPhase.DELETED:
        reason = "the workload was deleted"
    elif workload.phase == WorkloadPhase.UNSCHEDULABLE:
        reason = f"cannot be placed yet: {reason}"
    return Readiness(phase, reason, _STEPS.get(workload.phase))
