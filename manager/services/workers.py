"""Workers: registration, heartbeats (observed state in), assignments (desired state out).

A heartbeat writes only what the agent observed: its worker's inventory, address, heartbeat time
and ``state = ready``, its GPUs, and its replicas' observed columns. The reconciler owns every
other column ("Locking" in docs/DESIGN.md), so the two never wait on each other for long.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from ik_contracts.protocol import REPORTED_STATES, CustomBackendRef, ReplicaState
from manager import notify, wire
from manager.auth import Principal, TokenKind, display_token, mint_token
from manager.custom_backends import service as custom_backends
from manager.db.models import (
    CustomBackendVersion,
    GpuResource,
    Project,
    Replica,
    Token,
    Worker,
    Workload,
)
from manager.db.queries import one_of
from manager.errors import ValidationFailed
from manager.ids import new_id
from manager.states import DesiredState, WorkerState

from . import events
from .timefmt import rfc3339, utcnow

log = logging.getLogger("inferencekey.manager")

LOG_TAIL_LIMIT = 4000


async def create_worker(
    session: AsyncSession, *, name: str | None, project: Project | None
) -> tuple[Worker, str]:
    minted = mint_token(TokenKind.AGENT)
    session.add(
        Token(
            id=minted.id,
            kind=minted.kind.value,
            digest=minted.digest,
            name="agent",
            project_id=project.id if project else None,
        )
    )
    worker_id = new_id("wrk")
    worker = Worker(
        id=worker_id,
        name=name or worker_id,
        project_id=project.id if project else None,
        token_id=minted.id,
        state=WorkerState.REGISTERED,
        state_reason="waiting for the agent's first heartbeat",
        gateway_secret=secrets.token_hex(32),
    )
    session.add(worker)
    await session.flush()
    await session.refresh(worker)
    log.info("registered worker %s with %s", worker.id, display_token("agent", minted.id))
    return worker, minted.token


async def worker_for_agent(session: AsyncSession, principal: Principal) -> Worker:
    result = await session.execute(select(Worker).where(Worker.token_id == principal.token_id))
    worker = result.scalar_one_or_none()
    if worker is None:
        raise ValidationFailed("this agent credential belongs to no worker")
    return worker


async def visible_workers(session: AsyncSession, project_id: str | None) -> list[Worker]:
    """All workers for the operator (None); the shared pool plus a project's own otherwise."""
    query = select(Worker).order_by(Worker.created_at)
    if project_id is not None:
        query = query.where(or_(Worker.project_id.is_(None), Worker.project_id == project_id))
    return list((await session.execute(query)).scalars())


async def gpus_of(session: AsyncSession, worker_ids: list[str]) -> list[GpuResource]:
    result = await session.execute(
        select(GpuResource)
        .where(one_of(GpuResource.worker_id, worker_ids), GpuResource.present.is_(True))
        .order_by(GpuResource.worker_id, GpuResource.index)
    )
    return list(result.scalars())


def gpu_view(gpu: GpuResource) -> wire.GpuResource:
    return wire.GpuResource(
        id=gpu.id,
        worker_id=gpu.worker_id,
        index=gpu.index,
        uuid=gpu.uuid,
        name=gpu.name,
        memory_total_mb=gpu.memory_total_mb,
        memory_used_mb=gpu.memory_used_mb,
        utilization_pct=gpu.utilization_pct,
        simulated=gpu.simulated,
    )


def pool_gpu_view(gpu: GpuResource, worker_name: str) -> wire.PoolGpuResource:
    return wire.PoolGpuResource(**gpu_view(gpu).model_dump(), worker_name=worker_name)


def worker_view(worker: Worker, gpus: list[GpuResource], token: str | None = None) -> wire.Worker:
    """A worker and its GPUs; ``token`` (its credential) only in the answer that registered it."""
    inventory = worker.inventory or {}
    view: dict[str, Any] = {
        "id": worker.id,
        "name": worker.name,
        "project_id": worker.project_id,
        "pool": "private" if worker.project_id else "shared",
        "state": worker.state,
        "state_reason": worker.state_reason,
        "address": worker.address,
        "simulated": worker.simulated,
        "inventory_source": inventory.get("source"),
        "hostname": inventory.get("hostname"),
        "driver_version": inventory.get("driver_version"),
        "cuda_version": inventory.get("cuda_version"),
        "gpus": [gpu_view(g) for g in gpus if g.worker_id == worker.id],
        "last_heartbeat_at": rfc3339(worker.last_heartbeat_at),
        "created_at": rfc3339(worker.created_at),
    }
    if token is not None:
        view["token"] = token
    return wire.Worker.model_validate(view)


async def _sync_gpus(
    session: AsyncSession, worker: Worker, reported: list[dict[str, Any]], simulated: bool
) -> None:
    existing = {
        gpu.uuid: gpu
        for gpu in (
            await session.execute(select(GpuResource).where(GpuResource.worker_id == worker.id))
        ).scalars()
    }
    now = utcnow()
    seen: set[str] = set()
    for item in reported:
        uuid = str(item["uuid"])
        seen.add(uuid)
        values = {
            "index": int(item.get("index", 0)),
            "name": str(item.get("name", "unknown GPU")),
            "memory_total_mb": int(item.get("memory_total_mb", 0)),
            "memory_used_mb": int(item.get("memory_used_mb", 0)),
            "utilization_pct": int(item.get("utilization_pct", 0)),
            "simulated": simulated,
            "present": True,
        }
        gpu = existing.get(uuid)
        if gpu is None:
            gpu = GpuResource(id=new_id("gpu"), worker_id=worker.id, uuid=uuid)
            session.add(gpu)
        elif all(getattr(gpu, name) == value for name, value in values.items()):
            continue  # unchanged: no write (a steady fleet's heartbeats write no GPU row)
        for name, value in values.items():
            setattr(gpu, name, value)
        gpu.updated_at = now
    for uuid, gpu in existing.items():
        if uuid not in seen and gpu.present:
            gpu.present = False
            gpu.updated_at = now


def _describe(replica: Replica, worker: Worker) -> str:
    return f"replica {replica.id} on {worker.name} ({worker.id})"


async def _apply_observed(
    session: AsyncSession, worker: Worker, reported: list[dict[str, Any]]
) -> bool:
    """Store what the agent says of its replicas; True if any state changed."""
    # Locked in id order, as the reconciler locks the replicas it changes: no deadlock.
    rows = {
        r.id: r
        for r in (
            await session.execute(
                select(Replica)
                .where(Replica.worker_id == worker.id)
                .order_by(Replica.id)
                .with_for_update(key_share=True)
            )
        ).scalars()
    }
    reported_ids = set()
    changed = False
    now = utcnow()
    for item in reported:
        replica = rows.get(str(item.get("id")))
        state = item.get("state")
        if replica is None or state not in REPORTED_STATES:
            continue
        reported_ids.add(replica.id)
        reason = item.get("reason")
        if state != replica.state or reason != replica.reason:
            changed = True
            await _record_transition(session, replica, worker, state, reason, item)
        load = item.get("engine_load") or {}
        observed = {
            "state": state,
            "reason": reason,
            "log_tail": (item.get("log_tail") or "")[-LOG_TAIL_LIMIT:] or None,
            "port": item.get("port"),
            "restarts": int(item.get("restarts") or 0),
            "engine_running": load.get("running"),
            "engine_waiting": load.get("waiting"),
            "kv_cache_usage": load.get("kv_cache_usage"),
        }
        if any(getattr(replica, name) != value for name, value in observed.items()):
            for name, value in observed.items():
                setattr(replica, name, value)
            replica.updated_at = now  # when the agent last said something new of it
        if state == ReplicaState.READY and replica.ready_at is None:
            replica.ready_at = now
    # A replica the Manager stopped is gone once the agent no longer runs it.
    finished = [
        r.id
        for r in rows.values()
        if r.desired_state == DesiredState.STOP
        and (r.id not in reported_ids or r.state == ReplicaState.STOPPED)
    ]
    if finished:
        await session.execute(delete(Replica).where(one_of(Replica.id, finished)))
        changed = True
    return changed


async def _record_transition(
    session: AsyncSession,
    replica: Replica,
    worker: Worker,
    state: str,
    reason: str | None,
    item: dict[str, Any],
) -> None:
    what = _describe(replica, worker)
    if state == ReplicaState.READY:
        message = f"{what} is ready on port {item.get('port')}"
    elif state == ReplicaState.FAILED:
        tail = (item.get("log_tail") or "").strip().splitlines()[-5:]
        message = f"{what} failed: {reason or 'engine exited'}"
        if tail:
            message += "\n" + "\n".join(tail)
    elif state == ReplicaState.STARTING:
        message = f"{what} is starting: {reason or 'launching the engine'}"
    else:
        message = f"{what} stopped"
    await events.record(
        session, replica.workload_id, f"replica_{state}", message, {"replica_id": replica.id}
    )


async def record_heartbeat(
    session: AsyncSession, worker: Worker, body: dict[str, Any], now: datetime
) -> None:
    inventory = dict(body.get("inventory") or {})
    gpus = list(inventory.pop("gpus", []) or [])
    simulated = inventory.get("source") == "simulated"
    was = worker.state
    worker.inventory = inventory
    worker.simulated = simulated
    worker.address = body.get("address")
    worker.last_heartbeat_at = now
    worker.state = WorkerState.READY
    worker.state_reason = None
    await _sync_gpus(session, worker, gpus, simulated)
    changed = await _apply_observed(session, worker, list(body.get("replicas") or []))
    if changed or was != WorkerState.READY:
        await notify.notify(session, notify.RECONCILE, worker.id)


async def assignments(session: AsyncSession, worker: Worker) -> list[dict[str, Any]]:
    """The replicas this worker must run, each with what to run."""
    result = await session.execute(
        select(Replica, Workload, Project)
        .join(Workload, Workload.id == Replica.workload_id)
        .join(Project, Project.id == Workload.project_id)
        .where(Replica.worker_id == worker.id, Replica.desired_state == DesiredState.RUN)
        .order_by(Replica.id)
    )
    rows = result.all()
    gpu_uuids = {
        g.id: g.uuid
        for g in (
            await session.execute(select(GpuResource).where(GpuResource.worker_id == worker.id))
        ).scalars()
    }
    # The custom-backend versions the replicas were placed with, in one query.
    versions = await custom_backends.versions_by_id(
        session, (r.spec["custom_backend_id"] for r, _, _ in rows if "custom_backend_id" in r.spec)
    )
    answer = []
    for replica, workload, project in rows:
        spec = dict(replica.spec)
        version = versions.get(spec.pop("custom_backend_id", None) or "")
        config = spec.pop("custom_backend_config", None) or {}
        entry = {
            "id": replica.id,
            "workload_id": workload.id,
            "project_slug": project.slug,
            "workload_slug": workload.slug,
            "generation": replica.generation,
            **spec,
            "gpu_uuids": [gpu_uuids[g] for g in replica.gpu_resource_ids if g in gpu_uuids],
            "claim_memory_mb": replica.claim_memory_mb,
        }
        if version is not None:
            entry["custom_backend"] = custom_backend_ref(version, config).model_dump()
        answer.append(entry)
    return answer


def custom_backend_ref(version: CustomBackendVersion, config: dict[str, Any]) -> CustomBackendRef:
    return CustomBackendRef(
        id=version.id,
        slug=version.slug,
        version=version.version,
        sha256=version.sha256,
        size_bytes=version.size_bytes,
        entrypoint=version.entrypoint,
        requires_python=version.requires_python,
        task_type=version.task_type,
        cpu_only=version.cpu_only,
        config=config,
    )


def assignments_version(replicas: list[dict[str, Any]]) -> str:
    encoded = json.dumps(replicas, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]
