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

from .data import AsyncDataClient, AsyncEndpoint, AsyncTextStream, DataClient, Endpoint, TextStream
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
from .management import AsyncManagementClient, ManagementClient
from .progress import ProgressRenderer
from .results import EmbedResult, Job, JobData, RerankItem, RerankResult, TextChunk, TextResult
from .spec import DriftItem, EndpointRef, Plan, WorkloadSpec
from .wire import (
    DeliveryAttempt,
    ReadinessEvent,
    WebhookDelivery,
    WebhookDestination,
    WebhookTestResult,
    Workload,
)

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncDataClient",
    "AsyncEndpoint",
    "AsyncManagementClient",
    "AsyncTextStream",
    "AuthError",
    "Backend",
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
    "WorkloadPhase",
    "WorkloadSpec",
    "__version__",
]
