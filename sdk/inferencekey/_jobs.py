"""Async jobs (contract section 8): the submit envelope and its local checks, the job view the
Manager answers with, and waiting for a job to finish.

Shared by the sync and async endpoints (``data``) and the management clients, which list jobs.
Waiting is an operation like the others (see ``_http``): a generator of ``Call`` and ``Pause``
steps that each client drives its own way.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Generator, Mapping
from enum import Enum
from typing import Any

from ._http import Call, Pause
from .errors import ApiError, JobTimeoutError, ValidationError
from .results import Job, JobData

# The first polls come quickly, for jobs done in moments; each wait then doubles up to the
# caller's poll interval.
FIRST_POLL_S = 0.1

WaitSteps = Generator[Call | Pause, Any, Job]


class _Unset(Enum):
    """The type of ``UNSET``: a ``context`` the caller did not give (``None`` is JSON null)."""

    UNSET = "UNSET"


UNSET = _Unset.UNSET


def _invalid(reason: str) -> ValidationError:
    return ValidationError(f"validation error: {reason}")


def _blank(value: object) -> bool:
    return not isinstance(value, str) or not value.strip()


def job_envelope(
    kind: str,
    body: Mapping[str, Any] | None,
    body_b64: str | bytes | None,
    content_type: str | None,
    context: Any,
) -> dict[str, Any]:
    """The body of ``POST .../jobs``, after the envelope's rules the SDK can check itself.

    >>> job_envelope("embeddings", {"input": ["hola"]}, None, None, {"ticket": 42})
    {'kind': 'embeddings', 'body': {'input': ['hola']}, 'context': {'ticket': 42}}
    >>> job_envelope("audio_transcriptions", None, b"RIFF", "audio/wav", UNSET)
    {'kind': 'audio_transcriptions', 'body_b64': 'UklGRg==', 'content_type': 'audio/wav'}
    """
    if _blank(kind):
        raise _invalid("kind must not be empty")
    if body is not None and body_b64 is not None:
        raise _invalid("provide either body or body_b64, not both")
    if body is None and body_b64 is None:
        raise _invalid("provide body or body_b64")
    envelope: dict[str, Any] = {"kind": kind}
    if body is not None:
        if content_type is not None:
            raise _invalid("content_type goes with body_b64 only")
        if not isinstance(body, Mapping):
            raise _invalid("body must be a JSON object")
        envelope["body"] = dict(body)
    else:
        if _blank(content_type):
            raise _invalid("content_type is required with body_b64")
        if isinstance(body_b64, bytes | bytearray | memoryview):
            body_b64 = base64.b64encode(body_b64).decode("ascii")
        envelope["body_b64"] = body_b64
        envelope["content_type"] = content_type
    if context is not UNSET:
        envelope["context"] = context
    return envelope


def check_job_id(job_id: str) -> str:
    """``job_id`` if it names something; a blank one would address the jobs collection."""
    if _blank(job_id):
        raise _invalid("job_id must not be empty")
    return job_id


# --- answers --------------------------------------------------------------------------------


def _shape_error(what: str, problem: str) -> ApiError:
    return ApiError(f"json error: unexpected {what} shape: {problem}")


def _record(answer: Any, what: str) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise _shape_error(what, "not a JSON object")
    return answer


def _string(raw: dict[str, Any], name: str, what: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str):
        raise _shape_error(what, f'"{name}" must be a string')
    return value


def _optional(raw: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = raw.get(name)
    if value is not None and not isinstance(value, kind):
        expected = "a string" if kind is str else "an object"
        raise _shape_error(what, f'"{name}" must be {expected} or null')
    return value


def submitted_job_id(answer: Any) -> str:
    """The id in the ``202`` answer to a submit: ``{"job_id": "<uuid>"}``."""
    return _string(_record(answer, "job submission"), "job_id", "job submission")


def _job_data(answer: Any) -> JobData:
    what = "job data"
    raw = _record(answer, what)
    return JobData(
        job_id=_string(raw, "job_id", what),
        status=_string(raw, "status", what),
        payload=raw.get("payload"),
        output=_optional(raw, "output", str, what),
        binary_b64=_optional(raw, "binary_b64", str, what),
        content_type=_optional(raw, "content_type", str, what),
        usage=_optional(raw, "usage", dict, what),
        units=_optional(raw, "units", dict, what),
        metrics=_optional(raw, "metrics", dict, what),
        error=_optional(raw, "error", str, what),
        raw=raw,
    )


def _integer(raw: dict[str, Any], name: str, what: str) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _shape_error(what, f'"{name}" must be an integer')
    return value


def job_from_answer(answer: Any) -> Job:
    """A job view (``GET .../jobs/{id}``, or an item of the management list) as a ``Job``."""
    raw = _record(answer, "job")
    data = raw.get("data")
    return Job(
        job_id=_string(raw, "job_id", "job"),
        kind=_string(raw, "kind", "job"),
        status=_string(raw, "status", "job"),
        attempts=_integer(raw, "attempts", "job"),
        created_at=_string(raw, "created_at", "job"),
        started_at=_optional(raw, "started_at", str, "job"),
        finished_at=_optional(raw, "finished_at", str, "job"),
        context=raw.get("context"),
        data=None if data is None else _job_data(data),
        raw=raw,
    )


def jobs_from_answer(answer: Any) -> list[Job]:
    """The management list ``{"jobs": [...]}`` as ``Job`` values."""
    items = _record(answer, "job list").get("jobs")
    if not isinstance(items, list):
        raise _shape_error("job list", '"jobs" must be an array')
    return [job_from_answer(item) for item in items]


# --- waiting --------------------------------------------------------------------------------


def wait_job_steps(path: str, job_id: str, timeout: float, poll_interval: float) -> WaitSteps:
    """Poll the job at ``path`` until it succeeded or failed, or ``timeout`` seconds pass."""
    if not poll_interval > 0:
        raise _invalid("poll_interval must be positive")
    if not timeout >= 0:
        raise _invalid("timeout must not be negative")
    deadline = time.monotonic() + timeout
    interval = min(FIRST_POLL_S, poll_interval)
    while True:
        job = job_from_answer((yield Call("GET", path)))
        if job.done:
            return job
        left = deadline - time.monotonic()
        if left <= 0:
            raise JobTimeoutError(
                f'job "{job_id}" is still {job.status} after {timeout:g}s', job=job
            )
        yield Pause(min(interval, left))
        interval = min(interval * 2, poll_interval)
