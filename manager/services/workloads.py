"""Workloads: create, update (merge, re-validate, bump generation), delete, look up."""

from __future__ import annotations

import base64
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from inferencekey import wire
from inferencekey.enums import WorkloadPhase
from inferencekey.wire import MAX_WORKLOAD_PAGE_SIZE, CreateWorkloadRequest, UpdateWorkloadRequest
from pydantic_core import from_json, to_json
from sqlalchemy import Table, Text, bindparam, cast, func, literal, literal_column, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ik_contracts.engines import BUILTIN_BACKENDS
from ik_contracts.logs import ids
from ik_contracts.protocol import EngineLoad
from manager import notify
from manager.auth import Principal, Scope, require_scope
from manager.custom_backends import service as custom_backends
from manager.db.models import GpuResource, Project, Replica, Worker, Workload
from manager.db.queries import in_pieces, one_of
from manager.errors import (
    FieldNotPatchable,
    InvalidPolicyConfig,
    ProjectScopeMismatch,
    SlugConflict,
    ValidationFailed,
    WorkloadNotFound,
)
from manager.ids import new_id
from manager.policies.pools import PRIVATE_IDS_FIELD, gpu_pool_field, pool_of
from manager.validation import WorkloadLimits, canonical_slug, validate_workload
from manager.wire import Replica as ReplicaView

from . import events, gpu_catalog
from .timefmt import rfc3339, utcnow

log = logging.getLogger("inferencekey.manager")

# The spec fields a client writes; echoed back exactly as written.
SPEC_FIELDS = (
    "name",
    "description",
    "task_type",
    "backend",
    "model_name",
    "config",
    "worker_id",
    "gpu_resource_id",
    "execution_policy",
    "execution_policy_config",
)
ASSIGNMENT_FIELDS = ("worker_id", "gpu_resource_id")
# A change to one of these re-checks the pool's worker ids and GPU names against what exists.
POOL_FIELDS = ("execution_policy", "execution_policy_config")
# A change to one of these replaces the running replicas.
ROLLING_FIELDS = frozenset({"backend", "model_name", "config", "worker_id", "gpu_resource_id"})
WAITING_FOR_PLACEMENT = "waiting for the reconciler to place replicas"
LIMIT_HELP = (
    f"answer a page of at most this many workloads (1 to {MAX_WORKLOAD_PAGE_SIZE}) and its "
    "next_cursor; without it, every workload"
)
AFTER_HELP = "the next_cursor of the previous page (with limit): the page after it"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# How many workloads the plain list reads and writes at a time (a few ms of CPU), from a
# cursor: a fetch (a round trip, so a turn of the event loop) per piece. Streamed 100 at a time,
# a list of 10,000 waited for 100 turns of a busy Manager's loop and took 1-6 s; 1,000 at a
# time a piece held the loop for ~9 ms, and the requests meanwhile waited behind it at each of
# their awaits. Only one piece's rows and dicts are alive at once: all 10,000 rows held for the
# whole list made about one young collection per list, whose survivors the middle generation's
# collections then walked (tens of ms each, the event loop held). A project far larger is
# better read by pages (``limit``; the SDKs' iter_workloads).
_WRITTEN_AT_ONCE = 250
# The plain list's first read, each live workload's id and row version: two columns, read this
# many at a time.
_VERSIONS_AT_ONCE = 1000
# A row's version: Postgres's xmin, the transaction that wrote this version of the row. Every
# UPDATE writes a new version, so the same xmin is the same row as written then.
_ROW_VERSION = literal_column("workloads.xmin::text", Text)
# What a process keeps of the plain lists (ListedWorkloads): the projects listed last, up to
# so many and so many bytes of JSON in all, each written afresh at least this often.
LISTED_PROJECTS_KEPT = 16
LISTED_BYTES_KEPT = 64 * 1024 * 1024
LISTED_KEPT_S = 300.0
# Past this share of a project's workloads new or changed, one ordered read writes them all.
_REWRITTEN_PAST = 0.25
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,256}")
_WORKLOAD_ID = re.compile(r"wl_[A-Za-z0-9_-]{1,125}")


_WORKLOADS = Workload.__table__
assert isinstance(_WORKLOADS, Table)
# What a create writes: the spec as the client wrote it and the Manager's own columns.
_CREATED_COLUMNS = (
    *SPEC_FIELDS,
    "slug",
    "id",
    "project_id",
    "generation",
    "desired_replicas",
    "ready_replicas",
    "endpoints_off",
    "phase",
    "phase_reason",
)
# A field the request gained must gain a column here too, or a create would drop it unseen.
assert set(CreateWorkloadRequest.model_fields) == {*SPEC_FIELDS, "slug"}
# A create in one statement and one round trip: the workload inserted unless a live one holds its
# slug (ON CONFLICT DO NOTHING: no row then), its "created" event recorded and the reconciler told
# (pg_notify at commit), all or nothing. The row comes back whole, server defaults included. The
# values travel as parameters, so the statement compiles once. (The ORM's insert and a second
# statement for the event were a fifth of a create's CPU, and a turn of the event loop more.)
_INSERTED = (
    insert(_WORKLOADS)
    .values({name: bindparam(name, type_=_WORKLOADS.c[name].type) for name in _CREATED_COLUMNS})
    .on_conflict_do_nothing(
        index_elements=[Workload.project_id, Workload.slug],
        index_where=Workload.deleted_at.is_(None),
    )
    .returning(*_WORKLOADS.c)
    .cte("inserted")
)
_TOLD = (
    insert(events.EVENTS)
    .from_select(
        ["workload_id", "kind", "message"],
        select(_INSERTED.c.id, literal("created"), bindparam("event_message", type_=Text)),
    )
    .returning(
        events.EVENTS.c.workload_id,
        func.pg_notify(notify.RECONCILE, events.EVENTS.c.workload_id).label("told"),
    )
    .cte("told")
)
_CREATE = select(*_INSERTED.c).join_from(_INSERTED, _TOLD, _TOLD.c.workload_id == _INSERTED.c.id)


def _spec_of(workload: Workload) -> dict[str, Any]:
    spec = {name: getattr(workload, name) for name in SPEC_FIELDS}
    spec["slug"] = workload.slug
    return spec


def _require_write(principal: Principal, fields: dict[str, Any]) -> None:
    require_scope(principal, Scope.WORKLOAD_WRITE)
    if any(fields.get(name) is not None for name in ASSIGNMENT_FIELDS):
        require_scope(principal, Scope.ASSIGNMENT_WRITE)


async def custom_backend_rules(
    session: AsyncSession, project: Project, backend: str
) -> dict[str, Any]:
    """``validate_workload``'s keywords for ``backend``: nothing for a built-in one; the
    tenant's custom backend of that slug (its row share-locked until this transaction ends, so
    it is not deleted under the workload being written); or, when there is none, the tenant's
    custom slugs for the error to list."""
    if backend in BUILTIN_BACKENDS:
        return {}
    facts = await custom_backends.backend_facts(session, project.tenant_id, backend)
    if facts is not None:
        return {"custom_backend": facts}
    return {"custom_slugs": await custom_backends.slugs(session, project.tenant_id)}


async def check_pins(session: AsyncSession, project: Project, fields: dict[str, Any]) -> None:
    """A pinned worker must be the project's own or shared; a pinned GPU must be on it."""
    worker_id, gpu_id = fields.get("worker_id"), fields.get("gpu_resource_id")
    if worker_id is not None:
        worker = await session.get(Worker, worker_id)
        if worker is None:
            raise ValidationFailed(
                f"worker_id {worker_id!r} is not a registered worker", field="worker_id"
            )
        if worker.project_id not in (None, project.id):
            raise ValidationFailed(
                f"worker_id must belong to the same project: {worker_id} is private to another "
                "project (use one of this project's workers or the shared pool)",
                field="worker_id",
            )
    if gpu_id is not None:
        gpu = await session.get(GpuResource, gpu_id)
        owner = await session.get(Worker, gpu.worker_id) if gpu else None
        if gpu is None or owner is None or owner.project_id not in (None, project.id):
            raise ValidationFailed(
                f"gpu_resource_id {gpu_id!r} is not a GPU of a worker this project may use",
                field="gpu_resource_id",
            )
        if worker_id is not None and gpu.worker_id != worker_id:
            raise ValidationFailed(
                f"gpu_resource_id {gpu_id} is on worker {gpu.worker_id}, not on {worker_id}",
                field="gpu_resource_id",
            )


async def check_pool(session: AsyncSession, project: Project, fields: dict[str, Any]) -> None:
    """The policy's pool names what exists: private workers of this project, GPUs the catalog
    knows. A 400 naming the first that does not."""
    config = fields.get("execution_policy_config") or {}
    pool = pool_of(config)
    for worker_id in pool.private_worker_ids or ():
        worker = await session.get(Worker, worker_id)
        if worker is None:
            raise InvalidPolicyConfig(
                f"{PRIVATE_IDS_FIELD}: {worker_id!r} is not a registered worker",
                field=PRIVATE_IDS_FIELD,
            )
        if worker.project_id != project.id:
            whose = "the shared pool" if worker.project_id is None else "another project"
            raise InvalidPolicyConfig(
                f"{PRIVATE_IDS_FIELD}: worker {worker_id} belongs to {whose}; private workers "
                f'must belong to the same project ("{project.slug}")',
                field=PRIVATE_IDS_FIELD,
            )
    if pool.gpu_names:
        known = await gpu_catalog.known_gpu_names(session)
        unknown = [name for name in pool.gpu_names if name not in known]
        if unknown:
            field = gpu_pool_field(config)
            listed = ", ".join(repr(n) for n in sorted(known)) or (
                "none yet (start a shared-pool worker's agent, or price a GPU with "
                "`inferencekey admin gpu-price set`)"
            )
            raise InvalidPolicyConfig(
                f"{field}: {unknown[0]!r} is not in the GPU catalog (GET /api/gpu-catalog); "
                f"known GPUs: {listed}",
                field=field,
            )


async def create_workload(
    session: AsyncSession,
    principal: Principal,
    project: Project,
    request: CreateWorkloadRequest,
    limits: WorkloadLimits,
) -> tuple[Workload, bool]:
    """The new workload and True; or, when an identical spec already holds the slug (two
    concurrent ensure() calls), that workload and False. A different spec is a SlugConflict."""
    fields = request.model_dump()
    _require_write(principal, fields)
    fields["slug"] = canonical_slug(request.slug if request.slug is not None else request.name)
    custom = await custom_backend_rules(session, project, request.backend)
    validate_workload(fields, limits, **custom)
    if request.backend in BUILTIN_BACKENDS:
        # One statement (_CREATE) writes the workload, its event and its notice, and commits by
        # itself: no BEGIN and COMMIT round trips around it. Under a fleet's burst of creates
        # (py-spy, 1,000 agents) those two were 11% of the serving process's CPU, each round
        # trip a write to Postgres and a wait for a turn of the loop. The checks of pins and
        # pools only read, a snapshot each, as in a transaction at READ COMMITTED. A custom
        # backend's create keeps its transaction: its backend's row stays key-share-locked
        # until the workload is written.
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    await check_pins(session, project, fields)
    await check_pool(session, project, fields)
    row = dict(
        id=new_id("wl"),
        project_id=project.id,
        generation=1,
        desired_replicas=0,
        ready_replicas=0,
        endpoints_off=[],
        phase=WorkloadPhase.SCHEDULING.value,
        phase_reason=WAITING_FOR_PLACEMENT,
        **fields,
    )
    message = f"created at generation 1 by {principal.display}"
    connection = await session.connection()  # a Core statement: no unit of work to consult
    inserted = (await connection.execute(_CREATE, row | {"event_message": message})).one_or_none()
    if inserted is None:
        existing = await _live_by_slug(session, project, fields["slug"])
        if existing is not None and _spec_of(existing) == {
            n: fields[n] for n in _spec_of(existing)
        }:
            # The same spec, created by a concurrent identical request: one workload, no error.
            return existing, False
        raise SlugConflict(
            f'a workload with slug "{fields["slug"]}" already exists in project "{project.slug}"',
            field="slug",
        )
    workload = Workload(**inserted._mapping)  # of no session: what the view and the log read
    log.info(
        "created workload %s/%s by %s",
        project.slug,
        workload.slug,
        principal.display,
        extra=ids(project=project.slug, workload=workload.slug, workload_id=workload.id),
    )
    return workload, True


async def _live_by_slug(
    session: AsyncSession, project: Project, slug: str, *, for_update: bool = False
) -> Workload | None:
    query = select(Workload).where(
        Workload.project_id == project.id,
        Workload.slug == slug,
        Workload.deleted_at.is_(None),
    )
    if for_update:
        query = query.with_for_update(key_share=True)  # as find_workload's
    return (await session.execute(query)).scalar_one_or_none()


async def update_workload(
    session: AsyncSession,
    principal: Principal,
    project: Project,
    workload: Workload,
    request: UpdateWorkloadRequest,
    limits: WorkloadLimits,
) -> Workload:
    """Merge the given fields into the stored spec of ``project``'s ``workload``, validate the
    result, bump the generation."""
    given = {name: getattr(request, name) for name in request.model_fields_set}
    _require_write(principal, given)
    if "task_type" in given and given["task_type"] != workload.task_type:
        raise FieldNotPatchable(
            f"task_type cannot be changed (it is {workload.task_type!r}); "
            "delete the workload and create it again with the new task_type",
            field="task_type",
        )
    merged = _spec_of(workload) | given
    custom = await custom_backend_rules(session, project, merged["backend"])
    validate_workload(merged, limits, **custom)
    if any(name in given for name in (*ASSIGNMENT_FIELDS, *POOL_FIELDS)):
        await check_pins(session, project, merged)
        await check_pool(session, project, merged)
    changed = sorted(name for name in SPEC_FIELDS if merged[name] != getattr(workload, name))
    if not changed:
        return workload
    for name in changed:
        setattr(workload, name, merged[name])
    workload.generation += 1
    if set(changed) & ROLLING_FIELDS:
        # Until the reconciler has looked, the old phase would describe the old spec.
        workload.phase = WorkloadPhase.SCHEDULING.value
        workload.phase_reason = f"rolling out generation {workload.generation}"
    workload.updated_at = utcnow()
    await events.record(
        session,
        workload.id,
        "updated",
        f"{', '.join(changed)} changed (generation {workload.generation}) by {principal.display}",
        {"fields": changed, "generation": workload.generation},
    )
    await notify.notify(session, notify.RECONCILE, workload.id)
    await session.flush()
    await session.refresh(workload)
    return workload


async def delete_workload(session: AsyncSession, principal: Principal, workload: Workload) -> None:
    """Mark deleted; its replicas are stopped by the reconciler and its slug is free again."""
    require_scope(principal, Scope.WORKLOAD_WRITE)
    workload.deleted_at = utcnow()
    workload.updated_at = workload.deleted_at
    workload.phase = WorkloadPhase.DELETED.value
    workload.phase_reason = f"deleted by {principal.display}"
    await events.record(session, workload.id, "deleted", workload.phase_reason)
    await notify.notify(session, notify.RECONCILE, workload.id)
    await session.flush()


@dataclass
class _Kept:
    versions: dict[str, str]  # workload id -> its row's version when written
    bodies: dict[str, bytes]  # workload id -> its JSON, in creation order
    size: int  # bytes of JSON
    written_at: float  # when the list was last written afresh (time.monotonic)


class ListedWorkloads:
    """Each workload's JSON as the plain list writes it, and the row version it was written
    from, for the projects listed last (``LISTED_PROJECTS_KEPT``, ``LISTED_BYTES_KEPT``): one
    process's, kept from one plain list to the next (``app.state.listed_workloads``). A list
    then reads every live workload's id and version, and the full rows only of those new or
    changed since: at 10,000 workloads a list wrote every row anew in about 86 ms of CPU on the
    event loop, and most of them had not changed. The bytes kept are exactly those a fresh
    write makes. Plain dicts of strings and bytes: the collector does not track them, however
    many they hold."""

    def __init__(
        self,
        projects: int = LISTED_PROJECTS_KEPT,
        max_bytes: int = LISTED_BYTES_KEPT,
        kept_s: float = LISTED_KEPT_S,
    ) -> None:
        self._projects = projects
        self._max_bytes = max_bytes
        self._kept_s = kept_s
        self._kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()  # (project id, slug)

    def of(self, project: Project) -> _Kept | None:
        """What is kept of ``project``, unless it was written afresh ``kept_s`` ago: a version
        is a transaction id, which Postgres reuses after wraparound and which runs backwards
        after a restore or a failover to a replica behind, so no copy is trusted for long."""
        kept = self._kept.get((project.id, project.slug))
        if kept is None or time.monotonic() - kept.written_at > self._kept_s:
            return None
        return kept

    def keep(self, project: Project, kept: _Kept) -> None:
        key = (project.id, project.slug)
        self._kept.pop(key, None)
        if kept.size > self._max_bytes:
            return  # written afresh each time
        self._kept[key] = kept
        total = sum(each.size for each in self._kept.values())
        while len(self._kept) > self._projects or total > self._max_bytes:
            _, dropped = self._kept.popitem(last=False)
            total -= dropped.size


async def _ids_and_versions(session: AsyncSession, project: Project) -> tuple[list[str], list[str]]:
    """Every live workload of ``project`` in creation order: its id, and its row's version.
    Two lists of strings: no object per workload for the collector to walk."""
    order = (
        select(Workload.id, _ROW_VERSION)
        .where(Workload.project_id == project.id, Workload.deleted_at.is_(None))
        .order_by(Workload.created_at, Workload.id)
    )
    ids: list[str] = []
    versions: list[str] = []
    async for rows in in_pieces(session, order, _VERSIONS_AT_ONCE):
        for workload_id, version in rows:
            ids.append(workload_id)
            versions.append(version)
    return ids, versions


def _listed_bytes(rows: Sequence[Any], project_slug: str) -> list[tuple[str, str, bytes]]:
    """Id, version and JSON of each of the rows of (_LISTED_COLUMNS, _ROW_VERSION)."""
    return [
        (row[0], str(row[-1]), to_json(_listed(row[:-1], project_slug), inf_nan_mode="null"))
        for row in rows
    ]


def _joined(bodies: dict[str, bytes]) -> bytes:
    """``{"workloads":[...]}`` in one join, so one copy of the list's bytes: at 10,000
    workloads (6.5 MB) the join and two concatenations took ~11 ms of a 43 ms list as kept,
    most of it faulting in the pages of three fresh buffers."""
    if not bodies:
        return b'{"workloads":[]}'
    parts = list(bodies.values())
    parts[0] = b'{"workloads":[' + parts[0]
    parts[-1] += b"]}"
    return b",".join(parts)


async def _written_afresh(
    session: AsyncSession, project: Project, listed: ListedWorkloads
) -> bytes:
    """Every live workload of ``project`` written from its row, in one ordered read (one
    snapshot), and kept."""
    query = (
        select(*_LISTED_COLUMNS, _ROW_VERSION)
        .where(Workload.project_id == project.id, Workload.deleted_at.is_(None))
        .order_by(Workload.created_at, Workload.id)
    )
    versions: dict[str, str] = {}
    bodies: dict[str, bytes] = {}
    size = 0
    async for rows in in_pieces(session, query, _WRITTEN_AT_ONCE):
        for workload_id, version, body in _listed_bytes(rows, project.slug):
            versions[workload_id] = version
            bodies[workload_id] = body
            size += len(body)
    listed.keep(project, _Kept(versions, bodies, size, time.monotonic()))
    return _joined(bodies)


async def _one_snapshot(session: AsyncSession) -> None:
    """Begin ``session``'s transaction at REPEATABLE READ, so that all its statements read one
    snapshot; nothing where its transaction has begun already. Under a fleet's writes (the
    reconciler's status, a client's patches) a kept list's two reads at READ COMMITTED often
    saw a changed row change again between them, and the list was then written afresh, at
    several times the CPU of a list as kept (at 10,000 workloads, 2.8 s of the serving loop in
    43 s of a steady minute). Reads only: Postgres refuses no read at this level. The level is
    the connection's until the session gives it back to the pool, which resets it."""
    if not session.in_transaction():
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


async def _plain_list(session: AsyncSession, project: Project, listed: ListedWorkloads) -> bytes:
    """``{"workloads": [...]}``, every live workload of ``project`` in creation order, each
    written from its row only when ``listed`` has no JSON of its current version.

    The ids and versions come from one read and the changed rows from a second, both in one
    snapshot (``_one_snapshot``): a row changed meanwhile is listed as the first read saw it.
    In a transaction begun before (where the snapshot cannot be chosen any more), the list is
    the first read's snapshot only if every changed row is read again at the version the first
    read saw; when one changed or went meanwhile the list is written afresh from one ordered
    read. So it is when many changed.
    """
    kept = listed.of(project)
    if kept is None:
        return await _written_afresh(session, project, listed)
    await _one_snapshot(session)
    ids, versions = await _ids_and_versions(session, project)
    stale = [
        workload_id
        for workload_id, version in zip(ids, versions, strict=True)
        if kept.versions.get(workload_id) != version
    ]
    if len(stale) > len(ids) * _REWRITTEN_PAST:
        return await _written_afresh(session, project, listed)
    wanted = dict(zip(ids, versions, strict=True))
    fresh: dict[str, bytes] = {}
    connection = await session.connection()
    for start in range(0, len(stale), _WRITTEN_AT_ONCE):
        # A piece at a time: each piece's rows and dicts die before the next is read.
        piece = (
            await connection.execute(
                select(*_LISTED_COLUMNS, _ROW_VERSION).where(
                    one_of(Workload.id, stale[start : start + _WRITTEN_AT_ONCE]),
                    Workload.deleted_at.is_(None),
                )
            )
        ).all()
        for workload_id, version, body in _listed_bytes(piece, project.slug):
            if wanted[workload_id] != version:
                return await _written_afresh(session, project, listed)
            fresh[workload_id] = body
        del piece
    if len(fresh) != len(stale):  # deleted since the first read
        return await _written_afresh(session, project, listed)
    bodies: dict[str, bytes] = {}
    size = 0
    for workload_id in ids:
        body = fresh.get(workload_id) or kept.bodies[workload_id]
        bodies[workload_id] = body
        size += len(body)
    listed.keep(project, _Kept(wanted, bodies, size, kept.written_at))
    return _joined(bodies)


async def list_workloads_json(
    session: AsyncSession,
    project: Project,
    limit: int | None,
    after: str | None,
    listed: ListedWorkloads | None = None,
) -> bytes:
    """``GET /api/projects/{project}/workloads`` as its JSON body, in creation order.

    Without ``limit``: ``{"workloads": [...]}``, every live workload (the contract's list).
    With it: ``{"workloads": [...at most limit...], "next_cursor": str | null}``, the workloads
    after the ``after`` cursor. The keyset is (created_at, id), which a workload never changes,
    so a workload created or deleted between two pages makes no other one skip or repeat.

    The body is written here rather than by a response model: plain rows written by
    pydantic-core (with the models' settings: infinities as null) are the same bytes as
    ``workload_view``'s, for a fraction of the CPU (10,000 ORM entities and models took the
    event loop ~0.5 s, a third of it in the garbage collector). The plain list keeps what it
    wrote in ``listed`` (a new one when None) and writes again only what changed since.
    """
    query = (
        select(*_LISTED_COLUMNS)
        .where(Workload.project_id == project.id, Workload.deleted_at.is_(None))
        .order_by(Workload.created_at, Workload.id)
    )
    if limit is None:
        if after is not None:
            raise ValidationFailed("after is the cursor of a page: give limit too", field="after")
        return await _plain_list(session, project, listed or ListedWorkloads())
    if not 1 <= limit <= MAX_WORKLOAD_PAGE_SIZE:
        raise ValidationFailed(f"limit must be from 1 to {MAX_WORKLOAD_PAGE_SIZE}", field="limit")
    if after is not None:
        created_at, workload_id = decode_cursor(after)
        query = query.where(tuple_(Workload.created_at, Workload.id) > (created_at, workload_id))
    connection = await session.connection()
    rows = (await connection.execute(query.limit(limit + 1))).all()
    page = rows[:limit]
    last = page[-1] if len(rows) > limit else None
    cursor = None if last is None else encode_cursor(last.created_at, last.id)
    body = {"workloads": [_listed(row, project.slug) for row in page], "next_cursor": cursor}
    return to_json(body, inf_nan_mode="null")


# What the list shows of a workload, in _listed's order. The JSON columns come as their text,
# which pydantic-core parses faster than the driver's json.loads.
_LISTED_COLUMNS = (
    Workload.id,
    Workload.project_id,
    Workload.slug,
    Workload.name,
    Workload.description,
    Workload.task_type,
    Workload.backend,
    Workload.model_name,
    cast(Workload.config, Text),
    Workload.worker_id,
    Workload.gpu_resource_id,
    Workload.execution_policy,
    cast(Workload.execution_policy_config, Text),
    Workload.generation,
    Workload.phase,
    Workload.phase_reason,
    Workload.ready_replicas,
    Workload.desired_replicas,
    Workload.created_at,
    Workload.updated_at,
)


def _listed(row: Sequence[Any], project_slug: str) -> dict[str, Any]:
    """``workload_view(...)``'s JSON of one row of _LISTED_COLUMNS: the same keys in the same
    order (``wire.Workload``'s), without a model per workload. The times stay datetimes: the
    driver hands them over in UTC, which pydantic-core writes exactly as ``rfc3339`` does."""
    (
        workload_id,
        project_id,
        slug,
        name,
        description,
        task_type,
        backend,
        model_name,
        config,
        worker_id,
        gpu_resource_id,
        execution_policy,
        execution_policy_config,
        generation,
        phase,
        reason,
        ready_replicas,
        desired_replicas,
        created_at,
        updated_at,
    ) = row
    return {
        "id": workload_id,
        "project_id": project_id,
        "project_slug": project_slug,
        "name": name,
        "slug": slug,
        "workload_slug": slug,
        "description": description,
        "task_type": task_type,
        "backend": backend,
        "model_name": model_name,
        "config": None if config is None else from_json(config),
        "worker_id": worker_id,
        "gpu_resource_id": gpu_resource_id,
        "execution_policy": execution_policy,
        "execution_policy_config": (
            None if execution_policy_config is None else from_json(execution_policy_config)
        ),
        "generation": generation,
        "status": {
            "phase": phase,
            "reason": reason,
            "ready_replicas": ready_replicas,
            "desired_replicas": desired_replicas,
        },
        "created_at": created_at,
        "updated_at": updated_at,
    }


def encode_cursor(created_at: datetime, workload_id: str) -> str:
    """The opaque cursor of the page after this workload: base64url of
    ``<created_at in microseconds since the epoch>:<id>``, unpadded."""
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"{micros}:{workload_id}".encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``encode_cursor``'s arguments back; a 400 naming ``after`` for anything it did not make."""
    invalid = ValidationFailed(
        "after is not a cursor of this list: pass the next_cursor of the previous page",
        field="after",
    )
    if not _CURSOR.fullmatch(cursor):
        raise invalid
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        micros, _, workload_id = text.partition(":")
        if not micros.isdigit() or not _WORKLOAD_ID.fullmatch(workload_id):
            raise ValueError(text)
        return _EPOCH + timedelta(microseconds=int(micros)), workload_id
    except (ValueError, OverflowError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise invalid from None


async def list_all_workloads(session: AsyncSession) -> list[tuple[Workload, Project]]:
    """Every live workload of the installation with its project (the operator's view)."""
    result = await session.execute(
        select(Workload, Project)
        .join(Project, Project.id == Workload.project_id)
        .where(Workload.deleted_at.is_(None))
        .order_by(Project.slug, Workload.slug)
    )
    return [(workload, project) for workload, project in result.all()]


async def find_live_workload(
    session: AsyncSession, project: Project, slug: str, *, for_update: bool = False
) -> Workload:
    """A live workload of ``project`` by slug (the operator's lookup, across projects)."""
    workload = await _live_by_slug(session, project, slug, for_update=for_update)
    if workload is None:
        raise WorkloadNotFound(f'workload "{slug}" not found in project "{project.slug}"')
    return workload


async def find_workload(
    session: AsyncSession, principal: Principal, project: Project, ref: str, *, for_update: bool
) -> Workload:
    """A live workload by id, or by slug inside the caller's project."""
    query = select(Workload).where(Workload.deleted_at.is_(None))
    if ref.startswith("wl_"):
        query = query.where(Workload.id == ref)
    else:
        query = query.where(Workload.project_id == project.id, Workload.slug == ref)
    if for_update:
        # NO KEY UPDATE: heartbeats' event rows reference the workload (FOR KEY SHARE) and need
        # not wait for a PATCH ("Locking" in docs/DESIGN.md).
        query = query.with_for_update(key_share=True)
    workload = (await session.execute(query)).scalar_one_or_none()
    if workload is None:
        raise WorkloadNotFound(f'workload "{ref}" not found in project "{project.slug}"')
    if workload.project_id != principal.project_id:
        raise ProjectScopeMismatch(
            f'workload "{ref}" belongs to another project; this token is scoped to project '
            f'"{project.slug}"'
        )
    return workload


def workload_view(workload: Workload, project: Project) -> wire.Workload:
    """The contract's workload shape plus project/workload slugs and a status object; the
    spec fields exactly as written."""
    return wire.Workload.model_validate(
        {
            "id": workload.id,
            "project_id": workload.project_id,
            "project_slug": project.slug,
            "slug": workload.slug,
            "workload_slug": workload.slug,
            **{name: getattr(workload, name) for name in SPEC_FIELDS},
            "generation": workload.generation,
            "status": wire.WorkloadStatus(
                phase=workload.phase,
                reason=workload.phase_reason,
                desired_replicas=workload.desired_replicas,
                ready_replicas=workload.ready_replicas,
            ),
            "created_at": rfc3339(workload.created_at),
            "updated_at": rfc3339(workload.updated_at),
        }
    )


async def list_replicas(session: AsyncSession, workload_id: str) -> list[Replica]:
    result = await session.execute(
        select(Replica).where(Replica.workload_id == workload_id).order_by(Replica.created_at)
    )
    return list(result.scalars())


def replica_view(replica: Replica) -> ReplicaView:
    return ReplicaView(
        id=replica.id,
        worker_id=replica.worker_id,
        generation=replica.generation,
        gpu_resource_ids=list(replica.gpu_resource_ids),
        desired_state=replica.desired_state,
        state=replica.state,
        reason=replica.reason,
        log_tail=replica.log_tail,
        port=replica.port,
        restarts=replica.restarts,
        created_at=rfc3339(replica.created_at),
        ready_at=rfc3339(replica.ready_at),
        engine_load=engine_load_of(replica),
    )


def engine_load_of(replica: Replica) -> EngineLoad | None:
    figures = (replica.engine_running, replica.engine_waiting, replica.kv_cache_usage)
    if all(figure is None for figure in figures):
        return None
    running, waiting, kv_cache_usage = figures
    return EngineLoad(running=running, waiting=waiting, kv_cache_usage=kv_cache_usage)
