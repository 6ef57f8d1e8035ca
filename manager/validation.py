"""Validation of a whole workload spec. Create and PATCH (on the merged result) both use it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inferencekey.enums import TASK_TYPE_VALUES, Backend
from inferencekey.validation import blank_field, secret_field, slugify

from ik_contracts.engines import BUILTIN_BACKENDS, EngineCommandError, engine_for
from manager.errors import (
    BackendNotAllowed,
    SecretInSpec,
    UnknownBackend,
    ValidationFailed,
)
from manager.policies import validate_policy
from manager.task_backends import allowed_backends

MAX_LENGTHS = {
    "name": 200,
    "slug": 100,
    "model_name": 500,
    "description": 2000,
    "worker_id": 100,
    "gpu_resource_id": 100,
}
MAX_COMMAND_LENGTH = 16 * 1024
CONFIG_KEYS = ("command", "vllm_version")
# A custom backend's config reaches it as one environment variable (IK_BACKEND_CONFIG).
MAX_CUSTOM_CONFIG_BYTES = 64 * 1024
VLLM_BACKENDS = (Backend.VLLM.value, Backend.VLLM_OMNI.value)


def canonical_slug(raw: str) -> str:
    slug = slugify(raw)
    if not slug:
        raise ValidationFailed(
            f"slug {raw!r} must contain at least one letter or digit", field="slug"
        )
    return slug


def _validate_config(backend: str, config: Any) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise ValidationFailed("config must be an object", field="config")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValidationFailed(
            f"config has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed keys: {', '.join(CONFIG_KEYS)}",
            field=f"config.{unknown[0]}",
        )
    command = config.get("command")
    if "command" in config and (not isinstance(command, str) or not command.strip()):
        raise ValidationFailed("config.command must be a non-empty string", field="config.command")
    if isinstance(command, str) and len(command) > MAX_COMMAND_LENGTH:
        raise ValidationFailed(
            f"config.command is longer than {MAX_COMMAND_LENGTH} characters", field="config.command"
        )
    if "vllm_version" in config:
        version = config["vllm_version"]
        if not isinstance(version, str) or not version.strip():
            raise ValidationFailed(
                "config.vllm_version must be a non-empty string", field="config.vllm_version"
            )
        if backend not in VLLM_BACKENDS:
            raise ValidationFailed(
                f"config.vllm_version applies only to backends {', '.join(VLLM_BACKENDS)}",
                field="config.vllm_version",
            )


def _validate_command(backend: str, config: dict[str, Any] | None, model_name: str) -> None:
    """The engine must be able to run the command as written (right program, parsable)."""
    engine = engine_for(backend)
    command = (config or {}).get("command")
    try:
        argv, _ = engine.build_argv(command, model_name, "0.0.0.0", 0)
        if engine.gpu_claim == "whole":
            engine.tensor_parallel_size(argv)
    except EngineCommandError as error:
        raise ValidationFailed(f"config.command: {error}", field="config.command") from None


@dataclass(frozen=True)
class CustomBackendFacts:
    """What validation needs of a tenant's custom backend: its newest version's task type."""

    slug: str
    version: str
    task_type: str  # "" serves any task type


def _validate_custom_backend(
    fields: dict[str, Any], task_type: str, backend: CustomBackendFacts
) -> None:
    if backend.task_type and backend.task_type != task_type:
        raise BackendNotAllowed(
            f"task_type {task_type!r} does not allow backend {backend.slug!r}: custom backend "
            f"{backend.slug!r} serves task_type {backend.task_type!r} (its newest version, "
            f"{backend.version}, declares it)",
            field="backend",
        )
    config = fields.get("config")
    if config is None:
        return
    if not isinstance(config, dict):
        raise ValidationFailed(
            "config must be an object (the custom backend's own configuration)", field="config"
        )
    for key in CONFIG_KEYS:
        if key in config:
            raise ValidationFailed(
                f"config.{key} does not apply to custom backend {backend.slug!r}: it runs its "
                "package's entrypoint, not a command; config is the backend's own "
                "configuration (IK_BACKEND_CONFIG)",
                field=f"config.{key}",
            )
    if len(json.dumps(config).encode()) > MAX_CUSTOM_CONFIG_BYTES:
        raise ValidationFailed(
            f"config is larger than {MAX_CUSTOM_CONFIG_BYTES} bytes as JSON", field="config"
        )


def _unknown_backend(backend: str, custom_slugs: Sequence[str]) -> UnknownBackend:
    customs = ", ".join(custom_slugs) if custom_slugs else "none published"
    return UnknownBackend(
        f"unknown backend {backend!r}; this Manager runs: {', '.join(BUILTIN_BACKENDS)}; "
        f"custom backends of this tenant: {customs}",
        field="backend",
    )


@dataclass(frozen=True)
class WorkloadLimits:
    """Bounds an operator sets (Settings); each is named in the 400 that enforces it."""

    max_replicas: int = 100


def validate_workload(
    fields: dict[str, Any],
    limits: WorkloadLimits,
    *,
    custom_backend: CustomBackendFacts | None = None,
    custom_slugs: Sequence[str] = (),
) -> None:
    """Every rule on a full spec; raises the first problem found, naming its field.

    A ``backend`` that is not built in must be ``custom_backend`` (the tenant's backend of that
    slug, looked up by the caller); otherwise the 400 lists the built-ins and ``custom_slugs``.
    """
    blank = blank_field(fields, ("name", "slug", "model_name"))
    if blank:
        raise ValidationFailed(f"{blank} must not be empty", field=blank)
    for name, limit in MAX_LENGTHS.items():
        value = fields.get(name)
        if isinstance(value, str) and len(value) > limit:
            raise ValidationFailed(f"{name} is longer than {limit} characters", field=name)
    for name in ("worker_id", "gpu_resource_id"):
        value = fields.get(name)
        if value is not None and not value.strip():
            raise ValidationFailed(f"{name} must not be blank; omit it or use null", field=name)
    secret_path = secret_field({k: v for k, v in fields.items() if v is not None})
    if secret_path:
        raise SecretInSpec(
            f"{secret_path} holds what looks like an InferenceKey credential; "
            "secrets must never go in specs",
            field=secret_path,
        )
    task_type = fields["task_type"]
    if task_type not in TASK_TYPE_VALUES:
        raise ValidationFailed(
            f"task_type {task_type!r} is not one of: {', '.join(TASK_TYPE_VALUES)}",
            field="task_type",
        )
    backend = fields["backend"]
    if backend not in BUILTIN_BACKENDS:
        if custom_backend is None or custom_backend.slug != backend:
            raise _unknown_backend(backend, custom_slugs)
        _validate_custom_backend(fields, task_type, custom_backend)
    else:
        allowed = allowed_backends(task_type)
        if backend not in allowed:
            choices = ", ".join(allowed) if allowed else "none of the built-in backends"
            raise BackendNotAllowed(
                f"task_type {task_type!r} does not allow backend {backend!r}; "
                f"allowed backends for {task_type!r}: {choices} (or a custom backend)",
                field="backend",
            )
        _validate_config(backend, fields.get("config"))
        _validate_command(backend, fields.get("config"), fields["model_name"])
    validate_policy(
        fields.get("execution_policy"),
        fields.get("execution_policy_config"),
        max_replicas=limits.max_replicas,
    )
