"""The bytes a webhook delivery sends (contract section 8): its body and its signed headers.

A job's body is ``{"event", "ts", "job_id", "context"?, "data"}``; ``data`` is serialised once
per job and spliced in, so every destination of a job gets the same bytes except ``ts``, and the
caller's ``context`` goes out exactly as it was stored. Each destination signs with its own
secret through the SDK's ``signature_header`` (what receivers verify with).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from inferencekey.webhooks import (
    EVENT_HEADER,
    JOB_ID_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)

from manager.db.models import Job
from manager.jobs.service import SUCCEEDED, result_data
from manager.services.timefmt import rfc3339

JOB_COMPLETED, JOB_FAILED = "job.completed", "job.failed"
JOB_EVENT_HEADER, PING_EVENT_HEADER = "job", "ping"


def job_event(job_status: str) -> str:
    return JOB_COMPLETED if job_status == SUCCEEDED else JOB_FAILED


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def job_data(job: Job) -> tuple[str, bool]:
    """The ``data`` of a finished job's deliveries as JSON text (the same for all of them), and
    whether it carries the result as binary (``binary_b64``)."""
    data = result_data(job)
    return _dumps(data), "binary_b64" in data


def job_body(*, event: str, at: datetime, job_id: str, context: str | None, data: str) -> bytes:
    """One attempt's body; ``context`` and ``data`` are JSON texts, put in as they are."""
    parts = [
        f'"event":{_dumps(event)}',
        f'"ts":{_dumps(rfc3339(at))}',
        f'"job_id":{_dumps(job_id)}',
    ]
    if context is not None:
        parts.append(f'"context":{context}')
    parts.append(f'"data":{data}')
    return ("{" + ",".join(parts) + "}").encode()


def ping_body(*, at: datetime, destination_id: str) -> bytes:
    body = {"event": "ping", "ts": rfc3339(at), "data": {"destination_id": destination_id}}
    return _dumps(body).encode()


def headers(
    body: bytes, *, secret: str, at: datetime, event: str, job_id: str | None
) -> dict[str, str]:
    """Content type, event, job id (job deliveries only) and the signature over ``body``."""
    sent = {
        "Content-Type": "application/json",
        EVENT_HEADER: event,
        SIGNATURE_HEADER: signature_header(body, secret, int(at.timestamp())),
    }
    if job_id is not None:
        sent[JOB_ID_HEADER] = job_id
    return sent
