"""The wire enums: one definition of a backend, a task type, a policy, a drift mode, a phase
and a job's status."""

from __future__ import annotations

from enum import Enum


class Backend(str, Enum):
    """Which serving engine launches the model. On the wire it is the value string.

    >>> Backend.VLLM.value
    'vllm'
    """

    OLLAMA = "ollama"
    VLLM = "vllm"
    VLLM_OMNI = "vllm-omni"
    SGLANG = "sglang"
    LLAMACPP = "llamacpp"
    STABLE_DIFFUSION_CPP = "stablediffusioncpp"
    # The TypeScript-style spellings the docs also show.
    Ollama = "ollama"
    Vllm = "vllm"
    VllmOmni = "vllm-omni"
    Sglang = "sglang"
    Llamacpp = "llamacpp"
    StableDiffusionCpp = "stablediffusioncpp"


class TaskType(str, Enum):
    """The modality a workload serves (13 wire values; the default is ``text2text``)."""

    TEXT2TEXT = "text2text"
    EMBEDDING = "embedding"
    TEXT2IMAGE = "text2image"
    TEXT2VIDEO = "text2video"
    TEXT2AUDIO = "text2audio"
    IMAGE2IMAGE = "image2image"
    IMAGE2VIDEO = "image2video"
    AUDIO2TEXT = "audio2text"
    OMNI = "omni"
    RERANKER = "reranker"
    CLASSIFICATION = "classification"
    REWARD = "reward"
    FORECAST = "forecast"


class ExecutionPolicy(str, Enum):
    """How a workload is scheduled and scaled."""

    FIXED = "fixed"
    SCHEDULED = "scheduled"
    AUTOSCALING = "autoscaling"


class OnDrift(str, Enum):
    """What ``ManagementClient.ensure()`` does when the live workload differs from the spec."""

    RECONCILE = "reconcile"
    FAIL = "fail"
    DRY_RUN = "dry_run"
    WARN = "warn"
    IGNORE = "ignore"


class ReadinessPhase(str, Enum):
    """Phases of the readiness stream, in order; ``ready`` and ``error`` are terminal."""

    SCHEDULING = "scheduling"
    PROVISIONING = "provisioning"
    BOOTSTRAPPING = "bootstrapping"
    READY = "ready"
    ERROR = "error"


class WorkloadPhase(str, Enum):
    """Where a workload is in its life (``status.phase`` of a workload).

    A finer set than the readiness stream's: ``unschedulable``, ``stopped`` and ``deleted`` are
    phases of their own here, which the stream reports as ``scheduling`` or ``error``.

    >>> WorkloadPhase.UNSCHEDULABLE.value
    'unschedulable'
    """

    SCHEDULING = "scheduling"
    UNSCHEDULABLE = "unschedulable"
    PROVISIONING = "provisioning"
    BOOTSTRAPPING = "bootstrapping"
    READY = "ready"
    ERROR = "error"
    STOPPED = "stopped"
    DELETED = "deleted"


class JobStatus(str, Enum):
    """Where an async job is; ``succeeded`` and ``failed`` are final.

    >>> job.status == JobStatus.SUCCEEDED  # doctest: +SKIP
    True
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TASK_TYPE_VALUES: tuple[str, ...] = tuple(t.value for t in TaskType)
EXECUTION_POLICY_VALUES: tuple[str, ...] = tuple(p.value for p in ExecutionPolicy)
TERMINAL_READINESS_PHASES: frozenset[str] = frozenset(
    {ReadinessPhase.READY.value, ReadinessPhase.ERROR.value}
)

FINISHED_JOB_STATUSES: frozenset[str] = frozenset(
    {JobStatus.SUCCEEDED.value, JobStatus.FAILED.value}
)


def wire_value(value: object) -> object:
    """The wire form of an enum member (its value); anything else unchanged."""
    return value.value if isinstance(value, Enum) else value
