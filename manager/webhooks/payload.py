"""The bytes a webhook delivery sends (contract section 8): its body and its signed headers.

A job's body is ``{"event", "ts", "job_id", "context"?, "data"}``; ``data`` is serialised once
per job and spliced in, so every destination of a job gets the same bytes except ``ts``, and the
caller's ``context`` goes out exactly as it was stored. Each destination signs with its own
secret through the SDK's ``signature_header`` (what receivers verify with).

Every body is strict JSON, whatever the receiver parses it with: NaN and Infinity are never
written (``allow_nan=False``), and a job whose data or context would need them cannot be built
(``Unbuildable``, the reason its deliveries end terminal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from inferencekey.webhooks import (
    EVENT_HEADER,
    JOB_ID_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)

from manager.db.models import Job
from manager.jobs.envelope import JSON
from manager.jobs.service import SUCCEEDED, result_data
from manager.services.timefmt import rfc3339

JOB_COMPLETED, JOB_FAILED = "job.completed", "job.failed"
JOB_EVENT_HEADER, PING_EVENT_HEADER = "job", "ping"


def job_event(job_status: str) -> str:
    return JOB_COMPLETED if job_status == SUCCEEDED else JOB_FAILED


class Unbuildable(ValueError):
    """A job's deliveries cannot be built as strict JSON; the message says why."""


@dataclass(frozen=True)
class JobParts:
    """What every delivery of a finished job sends but the attempt's timestamp."""

    event: str
    context: str | None  # the caller's JSON text, as stored
    data: str  # JSON text
    binary: bool  # whether ``data`` carries the result as ``binary_b64``


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def binary_result(content_type: str | None) -> bool:
    """Whether a result of this type goes out as ``binary_b64``, as ``result_data`` decides: it
    is neither JSON nor text. (A JSON-typed result that does not parse goes as binary too.)"""
    content_type = content_type or ""
    return not (content_type.startswith(JSON) or content_type.startswith("text/"))


def job_parts(job: Job) -> JobParts:
    """The parts of a finished job's deliveries (the same for all of them); raises Unbuildable
    when its context or data could only be written with NaN or Infinity."""
    if job.context is not None:
        try:
            json.loads(job.context, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as error:
            raise Unbuildable(
                f"its body cannot be built: the context is not JSON ({error})"
            ) from None
    data = result_data(job)
    try:
        text = _dumps(data)
    except (ValueError, RecursionError) as error:
        raise Unbuildable(f"its body cannot be built: the data is not JSON ({error})") from None
    return JobParts(job_event(job.status), job.context, text, "binary_b64" in data)


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
