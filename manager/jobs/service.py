"""Submitting a job and reading it back: what the gateway's jobs routes do with the database."""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ik_contracts.endpoint_paths import NAME_PATTERN
from manager import notify
from manager.db.models import Job
from manager.services.timefmt import rfc3339

from .envelope import JSON, Envelope

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
UNFINISHED = (QUEUED, RUNNING)
_JOBS_PATH = re.compile(
    rb"/endpoint/(" + NAME_PATTERN + rb")/(" + NAME_PATTERN + rb")/jobs"
    rb"(?:/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}))?/?\Z"
)


@dataclass(frozen=True)
class JobsPath:
    project: str
    workload: str
    job_id: str | None  # None: the collection (POST submits)


def parse_jobs_path(raw_path: bytes) -> JobsPath | None:
    """``/endpoint/{p}/{w}/jobs[/{job_id}]`` exactly (plain bytes only); None for any other."""
    match = _JOBS_PATH.match(raw_path)
    if match is None:
        return None
    job_id = match[3].decode() if match[3] else None
    return JobsPath(match[1].decode(), match[2].decode(), job_id)


async def submit(
    sessions: async_sessionmaker[AsyncSession],
    envelope: Envelope,
    *,
    project_id: str,
    workload_id: str,
    key_id: str,
    wake: bool,
) -> str:
    """Queue the job; its id once it is committed. The dispatchers hear of it at once, and so
    does the reconciler when ``wake`` (a workload with no ready replica that scales on demand:
    queued jobs are demand; otherwise its next pass counts them)."""
    job_id = str(uuid.uuid4())
    async with sessions() as session:
        await session.execute(
            insert(Job).values(
                id=job_id,
                project_id=project_id,
                workload_id=workload_id,
                key_id=key_id,
                kind=envelope.kind,
                route=envelope.route,
                body=envelope.body,
                content_type=envelope.content_type,
                context=envelope.context,
                status=QUEUED,
                attempts=0,
            )
        )
        channels = (notify.JOBS, notify.RECONCILE) if wake else (notify.JOBS,)
        await notify.notify_many(session, channels, workload_id)
        await session.commit()
    return job_id


async def find_job(
    sessions: async_sessionmaker[AsyncSession], workload_id: str, job_id: str
) -> Job | None:
    async with sessions() as session:
        job = await session.scalar(
            select(Job).where(Job.id == job_id, Job.workload_id == workload_id)
        )
        if job is not None:
            session.expunge(job)
        return job


def job_view(job: Job) -> dict[str, Any]:
    """What a client polling ``GET .../jobs/{id}`` sees; ``data`` is shaped as a webhook's."""
    view: dict[str, Any] = {
        "job_id": job.id,
        "kind": job.kind,
        "status": job.status,
        "attempts": job.attempts,
        "created_at": rfc3339(job.created_at),
        "started_at": rfc3339(job.started_at),
        "finished_at": rfc3339(job.finished_at),
    }
    if job.context is not None:
        view["context"] = json.loads(job.context)
    if job.status in (SUCCEEDED, FAILED):
        view["data"] = result_data(job)
    return view


def result_data(job: Job) -> dict[str, Any]:
    """``data`` of contract section 8: status, the result as payload or binary, usage, error."""
    data: dict[str, Any] = {
        "job_id": job.id,
        "status": "ok" if job.status == SUCCEEDED else "error",
    }
    result, content_type = job.result, job.result_content_type or ""
    if result is not None:
        payload = _json(result) if content_type.startswith(JSON) else None
        if payload is not None:
            data["payload"] = payload
            if isinstance(payload, dict):
                if (output := _text_output(payload)) is not None:
                    data["output"] = output
                if isinstance(payload.get("usage"), dict):
                    data["usage"] = _usage(payload["usage"])
                if (images := _image_count(payload)) is not None:
                    data["units"] = {"images": images}
        elif content_type.startswith("text/"):
            data["output"] = result.decode("utf-8", "replace")
        else:
            data["binary_b64"] = base64.b64encode(result).decode()
            data["content_type"] = content_type or "application/octet-stream"
    if job.status == FAILED:
        data["error"] = job.error or "the job failed"
    if metrics := _metrics(job):
        data["metrics"] = metrics
    return data


def _text_output(payload: dict[str, Any]) -> str | None:
    """The plain text of a text result: a chat answer's message, a transcription's text."""
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
        if isinstance(choices[0].get("text"), str):  # a legacy completion
            return str(choices[0]["text"])
        return None
    text = payload.get("text")
    return text if isinstance(text, str) else None


def _image_count(payload: dict[str, Any]) -> int | None:
    """Images generated, from the OpenAI image shape ``{"created", "data": [...]}``."""
    items = payload.get("data")
    if "created" not in payload or not isinstance(items, list):
        return None
    images = all(isinstance(i, dict) and ("b64_json" in i or "url" in i) for i in items)
    return len(items) if images else None


def _metrics(job: Job) -> dict[str, Any]:
    """How long the job waited and ran, and how many runs it took (opaque to the contract)."""
    metrics: dict[str, Any] = {"attempts": job.attempts}
    if job.started_at is not None:
        metrics["queued_ms"] = _ms(job.started_at - job.created_at)
        if job.finished_at is not None:
            metrics["run_ms"] = _ms(job.finished_at - job.started_at)
    if job.result_status is not None:
        metrics["engine_status"] = job.result_status
    return metrics


def _ms(delta: timedelta) -> int:
    return max(0, round(delta.total_seconds() * 1000))


def _json(raw: bytes) -> Any:
    """An engine's JSON answer; NaN and Infinity (which no JSON receiver reads) become null."""
    try:
        return json.loads(raw, parse_constant=lambda _name: None)
    except (ValueError, RecursionError):
        return None


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    names = {
        "input_tokens": ("prompt_tokens", "input_tokens"),
        "output_tokens": ("completion_tokens", "output_tokens"),
        "total_tokens": ("total_tokens",),
    }
    found = {}
    for name, sources in names.items():
        value = next((usage[s] for s in sources if isinstance(usage.get(s), int)), None)
        if value is not None:
            found[name] = value
    return found
