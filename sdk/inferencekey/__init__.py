"""InferenceKey SDK: declare workloads on a self-hosted InferenceKey Manager, then call them.

>>> from inferencekey import DataClient, ManagementClient, WorkloadSpec, Backend
>>> mgmt = ManagementClient.from_env()  # doctest: +SKIP
>>> mgmt.ensure(WorkloadSpec(name="Support bot", slug="support-bot",
...                          model="qwen2.5:0.5b", backend=Backend.OLLAMA))  # doctest: +SKIP
EndpointRef(project_slug='acme', workload_slug='support-bot', plan=None)
>>> (DataClient.from_env(project="acme")
...  .endpoint("support-bot", api_key="ik_live_...")
...  .generate_text(prompt="Hola", temperature=0.2, max_tokens=300).text)  # doctest: +SKIP
'¡Hola! ¿En qué puedo ayudarte?'
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .enums import (
    Backend,
    ExecutionPolicy,
    JobStatus,
    OnDrift,
    ReadinessPhase,
    TaskType,
    WorkloadPhase,
)
from .errors import (
    ApiError,
    AuthError,
    BackendEntrypointError,
    BackendError,
    BackendSetupError,
    ConfigurationError,
    ConflictError,
    DriftError,
    InferenceKeyError,
    JobTimeoutError,
    NotFoundError,
    PermissionDenied,
    ValidationError,
    WebhookVerificationError,
)

if TYPE_CHECKING:
    from .data import (
        AsyncDataClient,
        AsyncEndpoint,
        AsyncTextStream,
        DataClient,
        Endpoint,
        TextStream,
    )
    from .management import AsyncManagementClient, ManagementClient
    from .progress import ProgressRenderer
    from .publish import publish_custom_backend
    from .results import EmbedResult, Job, JobData, RerankItem, RerankResult, TextChunk, TextResult
    from .spec import DriftItem, EndpointRef, Plan, WorkloadSpec
    from .wire import (
        DeliveryAttempt,
        ReadinessEvent,
        WebhookDelivery,
        WebhookDestination,
        WebhookTestResult,
        Workload,
        WorkloadPage,
    )

# Loaded on first use, so `inferencekey.backend` (which a worker serves with the standard
# library alone) never imports httpx or pydantic through this package.
_LAZY_MODULES = {
    "data": (
        "AsyncDataClient",
        "AsyncEndpoint",
        "AsyncTextStream",
        "DataClient",
        "Endpoint",
        "TextStream",
    ),
    "management": ("AsyncManagementClient", "ManagementClient"),
    "progress": ("ProgressRenderer",),
    "publish": ("publish_custom_backend",),
    "results": (
        "EmbedResult",
        "Job",
        "JobData",
        "RerankItem",
        "RerankResult",
        "TextChunk",
        "TextResult",
    ),
    "spec": ("DriftItem", "EndpointRef", "Plan", "WorkloadSpec"),
    "wire": (
        "DeliveryAttempt",
        "ReadinessEvent",
        "WebhookDelivery",
        "WebhookDestination",
        "WebhookTestResult",
        "Workload",
        "WorkloadPage",
    ),
}
_LAZY_NAMES = {name: module for module, names in _LAZY_MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncDataClient",
    "AsyncEndpoint",
    "AsyncManagementClient",
    "AsyncTextStream",
    "AuthError",
    "Backend",
    "BackendEntrypointError",
    "BackendError",
    "BackendSetupError",
    "ConfigurationError",
    "ConflictError",
    "DataClient",
    "DeliveryAttempt",
    "DriftError",
    "DriftItem",
    "EmbedResult",
    "Endpoint",
    "EndpointRef",
    "ExecutionPolicy",
    "InferenceKeyError",
    "Job",
    "JobData",
    "JobStatus",
    "JobTimeoutError",
    "ManagementClient",
    "NotFoundError",
    "OnDrift",
    "PermissionDenied",
    "Plan",
    "ProgressRenderer",
    "ReadinessEvent",
    "ReadinessPhase",
    "RerankItem",
    "RerankResult",
    "TaskType",
    "TextChunk",
    "TextResult",
    "TextStream",
    "ValidationError",
    "WebhookDelivery",
    "WebhookDestination",
    "WebhookTestResult",
    "WebhookVerificationError",
    "Workload",
    "WorkloadPage",
    "WorkloadPhase",
    "WorkloadSpec",
    "__version__",
    "publish_custom_backend",
]
