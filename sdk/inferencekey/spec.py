"""WorkloadSpec, EndpointRef and the drift computation ``ensure()`` is built on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .enums import Backend, ExecutionPolicy, TaskType, wire_value
from .errors import ConfigurationError, ValidationError
from .validation import blank_field, secret_field, slugify

# Drift is compared in this order; the starred ones only when the spec declares them.
_BUILT_IN_BACKENDS = frozenset(backend.value for backend in Backend)
_ALWAYS_COMPARED = ("name", "backend", "model_name")
_COMPARED_WHEN_DECLARED = (
    "description",
    "config",
    "worker_id",
    "gpu_resource_id",
    "execution_policy",
    "execution_policy_config",
)


@dataclass
class WorkloadSpec:
    """What to run. Placement (which worker, which GPU) is the platform's job.

    >>> WorkloadSpec(name="support-bot", slug="support-bot",
    ...              model="meta-llama/Llama-3.1-8B-Instruct", backend=Backend.VLLM,
    ...              command="vllm serve meta-llama/Llama-3.1-8B-Instruct")  # doctest: +ELLIPSIS
    WorkloadSpec(name='support-bot', ...)
    """

    name: str
    slug: str
    model: str
    backend: Backend | str
    project: str | None = None
    description: str | None = None
    command: str | None = None
    vllm_version: str | None = None
    task_type: TaskType | str | None = None
    config: dict[str, Any] | None = None
    execution_policy: ExecutionPolicy | str | None = None
    execution_policy_config: dict[str, Any] | None = None
    worker_id: str | None = None
    gpu_resource_id: str | None = None

    def check(self) -> None:
        """Local checks run before any request: blank fields, then secrets in fields."""
        fields = {"name": self.name, "slug": self.slug, "model": self.model}
        blank = blank_field(fields, ("name", "slug", "model"))
        if blank:
            raise ValidationError(f"validation error: {blank} must not be empty")
        scanned = {
            "name": self.name,
            "slug": self.slug,
            "model": self.model,
            "project": self.project,
            "description": self.description,
            "command": self.command,
            "vllm_version": self.vllm_version,
            "worker_id": self.worker_id,
            "gpu_resource_id": self.gpu_resource_id,
        }
        if secret_field({k: v for k, v in scanned.items() if v is not None}):
            raise ConfigurationError("configuration error: secrets must never go in specs")
        if not slugify(self.slug):
            raise ValidationError(f"validation error: slug {self.slug!r} has no letters or digits")

    def wire_config(self) -> dict[str, Any] | None:
        """The backend config sent on the wire. A built-in backend's is ``{command,
        vllm_version?}`` (or None), as the official client sends it: its ``config`` is not sent.
        A custom backend's is its ``config`` (what its ``setup()`` reads as ``ctx.config``)."""
        if wire_value(self.backend) not in _BUILT_IN_BACKENDS:
            return dict(self.config) if self.config is not None else None
        if self.command is None:
            return None
        config: dict[str, Any] = {"command": self.command}
        if self.vllm_version is not None:
            config["vllm_version"] = self.vllm_version
        return config

    def desired_fields(self) -> dict[str, Any]:
        """The comparable wire fields this spec declares (None means 'not declared')."""
        return {
            "name": self.name,
            "backend": wire_value(self.backend),
            "model_name": self.model,
            "description": self.description,
            "config": self.wire_config(),
            "worker_id": self.worker_id,
            "gpu_resource_id": self.gpu_resource_id,
            "execution_policy": wire_value(self.execution_policy),
            "execution_policy_config": self.execution_policy_config,
        }

    def to_create_body(self) -> dict[str, Any]:
        """The create request: every declared field, enums as their wire strings."""
        desired = self.desired_fields()
        body: dict[str, Any] = {
            "name": self.name,
            "slug": slugify(self.slug),
            "task_type": wire_value(self.task_type) or TaskType.TEXT2TEXT.value,
            "backend": desired["backend"],
            "model_name": self.model,
        }
        for key in _COMPARED_WHEN_DECLARED:
            if desired[key] is not None:
                body[key] = desired[key]
        return body


@dataclass(frozen=True)
class DriftItem:
    """One field where the live workload differs from the spec."""

    field: str
    live: Any
    desired: Any


@dataclass(frozen=True)
class EndpointRef:
    """Identifies a live workload. ``plan`` is set by ``OnDrift.DRY_RUN``.

    ``plan.action`` is ``"create"``, ``"update"`` or ``"none"``.
    """

    project_slug: str
    workload_slug: str
    plan: Plan | None = None


@dataclass(frozen=True)
class Plan:
    """What ``ensure()`` would do: the action and the drifted fields with both values."""

    action: str
    changes: tuple[DriftItem, ...] = field(default_factory=tuple)

    @property
    def fields(self) -> list[str]:
        return [item.field for item in self.changes]


def compute_drift(spec: WorkloadSpec, live: dict[str, Any]) -> list[DriftItem]:
    """The fields where ``live`` (a workload as the Manager returns it) differs from ``spec``.

    Exact equality, in the contract's order. A field the spec leaves as None never drifts;
    ``execution_policy_config`` also drifts whenever the policy kind does (if declared).
    """
    desired = spec.desired_fields()
    drift: list[DriftItem] = []
    for key in _ALWAYS_COMPARED + _COMPARED_WHEN_DECLARED:
        want = desired[key]
        if key in _COMPARED_WHEN_DECLARED and want is None:
            continue
        have = live.get(key)
        policy_kind_drifted = any(item.field == "execution_policy" for item in drift)
        if have != want or (key == "execution_policy_config" and policy_kind_drifted):
            drift.append(DriftItem(field=key, live=have, desired=want))
    return drift
