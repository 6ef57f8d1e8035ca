"""InferenceKey SDK: declare workloads on a self-hosted InferenceKey Manager.

>>> from inferencekey import ManagementClient, WorkloadSpec, Backend
>>> mgmt = ManagementClient.from_env()  # doctest: +SKIP
>>> mgmt.ensure(WorkloadSpec(name="Support bot", slug="support-bot",
...                          model="qwen2.5:0.5b", backend=Backend.OLLAMA))  # doctest: +SKIP
EndpointRef(project_slug='acme', workload_slug='support-bot', plan=None)
"""

from .enums import Backend, ExecutionPolicy, OnDrift, ReadinessPhase, TaskType
from .errors import (
    ApiError,
    AuthError,
    ConfigurationError,
    ConflictError,
    DriftError,
    InferenceKeyError,
    NotFoundError,
    PermissionDenied,
    ValidationError,
)
from .management import AsyncManagementClient, ManagementClient
from .progress import ProgressRenderer
from .spec import DriftItem, EndpointRef, Plan, WorkloadSpec
from .wire import ReadinessEvent, Workload

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncManagementClient",
    "AuthError",
    "Backend",
    "ConfigurationError",
    "ConflictError",
    "DriftError",
    "DriftItem",
    "EndpointRef",
    "ExecutionPolicy",
    "InferenceKeyError",
    "ManagementClient",
    "NotFoundError",
    "OnDrift",
    "PermissionDenied",
    "Plan",
    "ProgressRenderer",
    "ReadinessEvent",
    "ReadinessPhase",
    "TaskType",
    "ValidationError",
    "Workload",
    "WorkloadSpec",
    "__version__",
]
