"""The readiness view of a workload: its phase mapped onto the contract's readiness phases."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from inferencekey.enums import ReadinessPhase

from manager.db.models import Workload

# Workload phases that are not readiness phases, and what a waiting client should hear.
_PHASE_MAP = {
    "scheduling": ReadinessPhase.SCHEDULING,
    "unschedulable": ReadinessPhase.SCHEDULING,
    "provisioning": ReadinessPhase.PROVISIONING,
    "bootstrapping": ReadinessPhase.BOOTSTRAPPING,
    "ready": ReadinessPhase.READY,
    "error": ReadinessPhase.ERROR,
    "stopped": ReadinessPhase.ERROR,
    "deleted": ReadinessPhase.ERROR,
}
_STEPS = {"bootstrapping": "model_load"}


@dataclass(frozen=True)
class Readiness:
    phase: str
    message: str
    step: str | None

    def frame(self, since: datetime, now: datetime) -> dict[str, object]:
        body: dict[str, object] = {
            "phase": self.phase,
            "message": self.message,
            "elapsed_ms": max(0, int((now - since).total_seconds() * 1000)),
        }
        if self.step:
            body["step"] = self.step
        return body


def readiness_of(workload: Workload) -> Readiness:
    phase = _PHASE_MAP.get(workload.phase, ReadinessPhase.SCHEDULING).value
    reason = workload.phase_reason or workload.phase
    if workload.phase == "stopped":
        reason = f"the workload wants no replicas: {reason}"
    elif workload.phase == "deleted":
        reason = "the workload was deleted"
    elif workload.phase == "unschedulable":
        reason = f"cannot be placed yet: {reason}"
    return Readiness(phase, reason, _STEPS.get(workload.phase))
