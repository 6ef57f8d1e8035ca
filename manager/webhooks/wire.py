"""What the webhook and job routes take and answer (kept beside the webhooks, like the rest of
the Manager's own shapes in ``manager.wire``: unset optional keys stay out of the JSON)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

DeliveryStatus = Literal["pending", "delivered", "terminal", "skipped"]


class CreateWebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: StrictStr = Field(description="https:// and a public host (the SSRF rules)")
    enabled: StrictBool = True


class UpdateWebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: StrictStr | None = Field(default=None, description="checked again like a new one")
    enabled: StrictBool | None = Field(default=None, description="false mutes it")


class Webhook(BaseModel):
    """A webhook destination; its secret only in the answer that adds it."""

    id: str
    workload_id: str
    url: str
    enabled: bool
    secret_prefix: str = Field(description="the secret's first 12 characters")
    created_at: str
    updated_at: str
    secret: str | None = Field(
        default=None,
        description="the signing secret: only in the answer that adds the destination",
    )


class WebhookList(BaseModel):
    webhooks: list[Webhook]


class WebhookAttempt(BaseModel):
    attempt: int
    at: str
    status_code: int | None
    error: str | None
    duration_ms: float


class WebhookDelivery(BaseModel):
    """One job's result on its way to one destination."""

    id: str
    job_id: str
    destination_id: str
    event: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: str | None = Field(description="when it is sent next; null unless pending")
    last_status_code: int | None
    last_error: str | None
    attempt_log: list[WebhookAttempt]
    created_at: str
    delivered_at: str | None


class WebhookDeliveryList(BaseModel):
    deliveries: list[WebhookDelivery]


class WebhookTestResult(BaseModel):
    delivered: bool
    status_code: int | None
    error: str | None
    duration_ms: float


class Job(BaseModel):
    """An async job as ``GET /endpoint/.../jobs/{id}`` shows it."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    kind: str
    status: str
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    context: Any = Field(default=None, description="the caller's context, when one was sent")
    data: dict[str, Any] | None = Field(
        default=None, description="once finished: the webhook's data"
    )


class JobList(BaseModel):
    jobs: list[Job]


class JobWithDeliveries(Job):
    deliveries: list[WebhookDelivery]
