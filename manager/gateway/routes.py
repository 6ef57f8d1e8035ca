"""Where a data-plane request may go: which routes a task type serves, and the ready replicas.

The table is kept in memory, so a request for a workload it has never waits on the database. It
is read in full at start and every ``gateway_routes_resync_s``; in between, a notification naming
a workload or a worker (a phase, an assignment, a replica state, a worker's liveness) has just the
routes it may change read again. A request for a workload the table lacks has that one read
(``RouteTable.find``): it may have been created a moment ago.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from inferencekey.enums import ExecutionPolicy, TaskType
from sqlalchemy import Row, String, and_, func, literal, select, union_all
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ik_contracts.endpoint_paths import JOBS_TOGGLE, ROUTE_TASK_TYPES, ROUTE_TOGGLES
from ik_contracts.engines import ENGINES
from ik_contracts.engines.custom import CustomBackendEngine
from ik_contracts.protocol import ReplicaState
from manager import notify
from manager.db.models import Project, Replica, Worker, Workload
from manager.db.queries import in_pieces, one_of
from manager.fleet import WORKLOAD_PREFIX, ChangeLog
from manager.states import DesiredState, WorkerState
from manager.turns import Turns

log = logging.getLogger("inferencekey.gateway")

T = TaskType
ASYNC_ONLY = frozenset({T.CLASSIFICATION.value, T.REWARD.value})
EJECT_S = 5.0  # a replica that failed a request is skipped this long (or until reloaded ready)
RESYNC_S = 30.0  # a full read at least this often (Settings.gateway_routes_resync_s)
SETTLE_S = 0.02  # notifications heard within this are read together
FULL_READ_ABOVE = 2_000  # named workloads past this (and a quarter of the table): read it all
# Rows a full read fetches at a time from its cursor: only one piece of them is alive at once.
READ_AT_ONCE = 250
# A workload the table does not have, read in the database and not found there, is answered
# "not found" from memory this long, unless a workload's notification is heard meanwhile.
MISSING_S = 1.0
MISSING_KEPT = 10_000  # names kept absent at most (then forgotten all at once)
# Reads of unknown names at once: a flood of made-up names queues here instead of taking the pool.
MAX_CONCURRENT_MISSES = 4


@dataclass
class ReplicaTarget:
    id: str
    worker_id: str
    host: str
    port: int
    gateway_secret: bytes
    outstanding: int = 0
    ejected_until: float = 0.0
    last_error: str | None = None  # why it was last ejected, for the 503 that follows


@dataclass
class WorkloadRoute:
    id: str
    project_id: str
    project_slug: str
    slug: str
    task_type: str
    phase: str
    reason: str | None
    # Its engine reports a stream's token usage only when asked (Engine.stream_usage_on_request).
    asks_stream_usage: bool = False
    # A request finding no ready replica wakes it and waits (autoscaling: scale-from-zero).
    wakes: bool = False
    # Endpoint toggles switched off (jobs, chat, ...), and the engine's routes for the
    # async-only kinds (Engine.job_routes).
    endpoints_off: frozenset[str] = frozenset()
    job_routes: dict[str, str] = field(default_factory=dict)
    replicas: list[ReplicaTarget] = field(default_factory=list)

    def pick(self, now: float, exclude: set[str]) -> ReplicaTarget | None:
        """Least outstanding requests among usable replicas; ties broken at random."""
        usable = [r for r in self.replicas if r.id not in exclude and r.ejected_until <= now]
        if not usable:
            return None
        fewest = min(r.outstanding for r in usable)
        return random.choice([r for r in usable if r.outstanding == fewest])


def route_problem(route: str, workload: WorkloadRoute) -> str | None:
    """Why this workload cannot serve ``route`` (None if it can)."""
    if route == "v1/models":
        return None
    if workload.task_type in ASYNC_ONLY:
        return (
            f"task type {workload.task_type!r} is served as async jobs (POST .../jobs), not "
            f"through {route}"
        )
    serving = ROUTE_TASK_TYPES[route]
    if workload.task_type in serving:
        return None
    return (
        f"{route} is served by task type {' or '.join(sorted(serving))}; workload "
        f'"{workload.slug}" is {workload.task_type}'
    )


def jobs_disabled(workload: WorkloadRoute) -> str | None:
    """Why the workload takes no job (its ``jobs`` toggle is off), or None."""
    if JOBS_TOGGLE in workload.endpoints_off:
        return f'the jobs endpoint of workload "{workload.slug}" is switched off'
    return None


def route_disabled(route: str, workload: WorkloadRoute, *, as_job: bool) -> str | None:
    """Why the workload's toggles refuse ``route`` (None if they do not): a route switched off
    also refuses its async twin, and jobs need the ``jobs`` toggle too."""
    if as_job and (off := jobs_disabled(workload)):
        return off
    toggle = ROUTE_TOGGLES.get(route)
    if toggle is not None and toggle in workload.endpoints_off:
        return f'the {toggle} endpoint of workload "{workload.slug}" is switched off'
    return None


def _asks_stream_usage(backend: str) -> bool:
    engine = ENGINES.get(backend)
    return engine is not None and engine.stream_usage_on_request


def _job_routes(backend: str) -> dict[str, str]:
    # A backend that is no built-in engine is a custom one (the control plane admits no other).
    engine = ENGINES.get(backend)
    return dict((engine or CustomBackendEngine).job_routes)


# Routes whose streams carry token usage (OpenAI's stream_options applies to them).
STREAM_USAGE_ROUTES = frozenset({"v1/chat/completions", "v1/completions"})


# A workload's route as rows: the workload with its project, and each of its replicas that may
# take traffic (desired to run, ready, on a ready worker with an address), or none.
ROUTE_ROWS = (
    select(
        Workload.id,
        Workload.project_id,
        Project.slug.label("project_slug"),
        Workload.slug,
        Workload.task_type,
        Workload.phase,
        Workload.phase_reason,
        Workload.backend,
        Workload.execution_policy,
        Workload.endpoints_off,
        Workload.deleted_at,
        Replica.id.label("replica_id"),
        Worker.id.label("worker_id"),
        Worker.address,
        Worker.gateway_secret,
    )
    .join(Project, Project.id == Workload.project_id)
    .outerjoin(
        Replica,
        and_(
            Replica.workload_id == Workload.id,
            Replica.desired_state == DesiredState.RUN,
            Replica.state == ReplicaState.READY,
        ),
    )
    .outerjoin(
        Worker,
        and_(
            Worker.id == Replica.worker_id,
            Worker.state == WorkerState.READY,
            Worker.address.is_not(None),
        ),
    )
)

RouteRow = Row[*tuple[Any, ...]]


class RouteTable:
    """Every live workload's route, read in full at start, after the listening connection came
    back, and every ``resync_s`` (a safety net for a change no notification named); in between,
    only the routes that notifications named: a workload's (``wl_…``) or those a worker's
    (``wrk_…``) change may touch. The ids heard within ``SETTLE_S`` are read in one query. A
    workload the table lacks is read when a request names it (``find``)."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], resync_s: float = RESYNC_S
    ) -> None:
        self._sessions = sessions
        self._resync_s = resync_s
        self.projects: dict[str, str] = {}  # slug and id -> id
        self.workloads: dict[tuple[str, str], WorkloadRoute] = {}  # (project id, slug) -> route
        self.by_id: dict[str, WorkloadRoute] = {}  # workload id -> route
        self._targets: dict[str, ReplicaTarget] = {}
        self._on_worker: dict[str, set[str]] = {}  # worker id -> workloads with a target there
        self._changes = ChangeLog()  # what notifications named since the last read took them
        self._dirty = asyncio.Event()
        self._reloaded = asyncio.Event()  # set (and replaced) after every reload
        self._task: asyncio.Task[None] | None = None
        self._missing: dict[tuple[str, str], float] = {}  # (project id, slug) -> read absent at
        # Notifications heard so far: any of them (a read across one may be out of date), and
        # those that may make a name exist (a workload's, or everything).
        self._heard = 0
        self._heard_workloads = 0
        self._misses = asyncio.Semaphore(MAX_CONCURRENT_MISSES)

    def changed(self, payload: str = notify.ANY) -> None:
        """A notification's callback: a workload or worker id, or ``ANY`` (read everything)."""
        self._changes.note(payload)
        self._dirty.set()
        self._heard += 1
        if payload == notify.ANY or payload.startswith(WORKLOAD_PREFIX):
            self._heard_workloads += 1
            self._missing.clear()

    async def find(self, project_id: str, slug: str) -> WorkloadRoute | None:
        """The route of a project's live workload, or None.

        A workload the table does not know is read from the database before it is called
        absent: one created a moment ago is answered at once, not only once its notification
        has been read (``ensure`` and then a request is the first thing a user does). A name
        found absent is answered from memory for ``MISSING_S``, or until a workload's
        notification is heard, so requests for a name that does not exist do not each cost a
        query; a few such reads run at once, and a request that waited for its turn looks in
        the table and in the names found absent again first."""
        key = (project_id, slug)
        route = self.workloads.get(key)
        if route is not None or self._known_absent(key):
            return route
        async with self._misses:
            route = self.workloads.get(key)
            if route is not None or self._known_absent(key):
                return route
            heard, heard_workloads = self._heard, self._heard_workloads
            async with self._sessions() as session:
                rows = (
                    await session.execute(
                        ROUTE_ROWS.where(
                            Workload.project_id == project_id,
                            Workload.slug == slug,
                            Workload.deleted_at.is_(None),
                        )
                    )
                ).all()
        if not rows:
            if heard_workloads == self._heard_workloads:
                if len(self._missing) >= MISSING_KEPT:
                    self._missing.clear()
                self._missing[key] = time.monotonic()
            return None
        route = self.workloads.get(key)  # a read of the table's own meanwhile found it
        if route is None:
            [route] = self._routes(rows).values()
            self._put(route)
            if heard != self._heard:
                # A notification came during the read, and may have changed this route after
                # it was read: the table's next read of what changed reads it again.
                self._changes.note(route.id)
                self._dirty.set()
        return route

    def _known_absent(self, key: tuple[str, str]) -> bool:
        absent_at = self._missing.get(key)
        return absent_at is not None and time.monotonic() - absent_at < MISSING_S

    async def next_reload(self, timeout: float) -> None:
        """Return after the next reload, or after ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reloaded.wait(), timeout)

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._keep_fresh(), name="gateway-routes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def project_id(self, ref: str, own_project: str) -> str | None:
        """The id of the project ``ref`` (a slug or an id) names, asked for a key of
        ``own_project``. Creating a project notifies nobody, so a project the table has not
        seen yet (no full read and no workload of it read since) is read when its key is used."""
        found = self.projects.get(ref)
        if found is not None or own_project in self.projects:
            return found
        async with self._sessions() as session:
            slug = await session.scalar(select(Project.slug).where(Project.id == own_project))
        if slug is not None:
            self.projects[slug] = self.projects[own_project] = own_project
        return self.projects.get(ref)

    async def _keep_fresh(self) -> None:
        full_at = time.monotonic() + self._resync_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), max(0.0, full_at - time.monotonic()))
            await asyncio.sleep(SETTLE_S)  # let a burst of notifications settle into one read
            self._dirty.clear()
            changes = self._changes.take()
            try:
                if changes.everything or time.monotonic() >= full_at:
                    await self.reload()
                    full_at = time.monotonic() + self._resync_s
                else:
                    await self.reload_named(changes.workloads, changes.workers)
            except Exception:
                log.exception("reloading the route table failed; keeping the last one")
                self.changed(notify.ANY)  # what that read would have found, the next one finds
                await asyncio.sleep(1.0)

    async def reload(self) -> None:
        """Read every project and every live workload's route again.

        The rows come from a cursor, a piece at a time, and a route that reads as the table has
        it keeps its object: a resync of 10,000 routes neither holds all their rows at once nor
        makes 10,000 long-lived objects anew for the collector to walk.
        """
        self._changes.take()  # whatever was named so far, this read finds
        routes: dict[str, WorkloadRoute] = {}
        async with self._sessions() as session:
            projects = (await session.execute(select(Project.id, Project.slug))).all()
            query = ROUTE_ROWS.where(Workload.deleted_at.is_(None))
            async for rows in in_pieces(session, query, READ_AT_ONCE):
                self._routes(rows, routes)
        # The new table is made aside, in turns (at 10,000 routes this held the event loop for
        # about 100 ms in one go), and takes the old one's place at once: requests meanwhile
        # find the old table, whole. (Only this task and ``find`` write the table; a route
        # ``find`` put meanwhile and this read did not see is read again by the next miss.)
        turns = Turns()
        kept = self.by_id
        workloads: dict[tuple[str, str], WorkloadRoute] = {}
        targets: dict[str, ReplicaTarget] = {}
        on_worker: dict[str, set[str]] = {}
        for workload_id, route in routes.items():
            known = kept.get(workload_id)
            if known is not None and _same_route(known, route):
                route = routes[workload_id] = known
            workloads[(route.project_id, route.slug)] = route
            for target in route.replicas:
                targets[target.id] = target
                on_worker.setdefault(target.worker_id, set()).add(workload_id)
            if turns.due():
                await turns.give()
        self.projects = {slug: pid for pid, slug in projects} | {pid: pid for pid, _ in projects}
        self.by_id, self.workloads = routes, workloads
        self._targets, self._on_worker = targets, on_worker
        self._announce()

    async def reload_named(self, workload_ids: Iterable[str], worker_ids: Iterable[str]) -> None:
        """Read again the routes these workloads and workers may have changed: each named
        workload's (dropped if it is deleted), and each workload's with a ready replica on a named
        worker, now (in the database) or at the last read (in the table)."""
        workers = sorted(set(worker_ids))
        named = set(workload_ids)
        for worker_id in workers:
            named |= self._on_worker.get(worker_id, set())
        if len(named) > max(FULL_READ_ABOVE, len(self.by_id) // 4):
            await self.reload()  # most of the table: one full read is cheaper
            return
        if not named and not workers:
            return
        chosen = one_of(Workload.id, sorted(named))
        if workers:
            # One list of ids (a semi-join through the indexes; an OR would scan workloads).
            chosen = Workload.id.in_(
                union_all(
                    select(func.unnest(literal(sorted(named), ARRAY(String)))),
                    select(Replica.workload_id).where(
                        one_of(Replica.worker_id, workers),
                        Replica.desired_state == DesiredState.RUN,
                        Replica.state == ReplicaState.READY,
                    ),
                )
            )
        async with self._sessions() as session:
            rows = (await session.execute(ROUTE_ROWS.where(chosen))).all()
        fresh = self._routes([row for row in rows if row.deleted_at is None])
        for workload_id in named | {row.id for row in rows}:
            self._drop(workload_id)
        for route in fresh.values():
            self._put(route)
        self._announce()

    def _routes(
        self, rows: Iterable[RouteRow], routes: dict[str, WorkloadRoute] | None = None
    ) -> dict[str, WorkloadRoute]:
        """Routes by workload id from ROUTE_ROWS' rows, keeping the targets the table has;
        added to ``routes`` when given (a workload's rows may come in two pieces)."""
        if routes is None:
            routes = {}
        for (
            workload_id,
            project_id,
            project_slug,
            slug,
            task_type,
            phase,
            reason,
            backend,
            policy,
            endpoints_off,
            _deleted_at,
            replica_id,
            worker_id,
            address,
            gateway_secret,
        ) in rows:
            route = routes.get(workload_id)
            if route is None:
                route = routes[workload_id] = WorkloadRoute(
                    workload_id,
                    project_id,
                    project_slug,
                    slug,
                    task_type,
                    phase,
                    reason,
                    _asks_stream_usage(backend),
                    policy == ExecutionPolicy.AUTOSCALING,
                    frozenset(endpoints_off or ()),
                    _job_routes(backend),
                )
            if replica_id is not None and worker_id is not None:
                route.replicas.append(self._target(replica_id, worker_id, address, gateway_secret))
        return routes

    def _put(self, route: WorkloadRoute) -> None:
        key = (route.project_id, route.slug)
        previous = self.workloads.get(key)
        if previous is not None and previous.id != route.id:
            self._drop(previous.id)  # deleted unheard, and its slug taken by this one
        self.workloads[key] = route
        self.by_id[route.id] = route
        self.projects[route.project_slug] = self.projects[route.project_id] = route.project_id
        for target in route.replicas:
            self._targets[target.id] = target
            self._on_worker.setdefault(target.worker_id, set()).add(route.id)

    def _drop(self, workload_id: str) -> None:
        route = self.by_id.pop(workload_id, None)
        if route is None:
            return
        key = (route.project_id, route.slug)
        if self.workloads.get(key) is route:
            del self.workloads[key]
        for target in route.replicas:
            self._targets.pop(target.id, None)
            on_worker = self._on_worker.get(target.worker_id)
            if on_worker is not None:
                on_worker.discard(workload_id)
                if not on_worker:
                    del self._on_worker[target.worker_id]

    def _announce(self) -> None:
        reloaded, self._reloaded = self._reloaded, asyncio.Event()
        reloaded.set()

    def _target(
        self, replica_id: str, worker_id: str, address: str | None, gateway_secret: str
    ) -> ReplicaTarget:
        host, port = _host_and_port(address)
        secret = gateway_secret.encode()
        target = self._targets.get(replica_id)
        if target is None or (target.host, target.port, target.gateway_secret) != (
            host,
            port,
            secret,
        ):
            return ReplicaTarget(replica_id, worker_id, host, port, secret)
        target.ejected_until = 0.0  # the Manager says it is ready again
        return target


# What a route is besides its targets (every field of WorkloadRoute, a new one included).
_ROUTE_FIELDS = tuple(f.name for f in dataclasses.fields(WorkloadRoute) if f.name != "replicas")


def _same_route(known: WorkloadRoute, read: WorkloadRoute) -> bool:
    """Whether a route read again is the one the table has: the same fields and the very same
    targets (RouteTable._target hands back the table's own for a replica that has not moved)."""
    return (
        all(getattr(known, name) == getattr(read, name) for name in _ROUTE_FIELDS)
        and len(known.replicas) == len(read.replicas)
        and {id(target) for target in known.replicas} == {id(target) for target in read.replicas}
    )


@functools.lru_cache(maxsize=4096)  # a fleet has a few addresses, and each is read per replica
def _host_and_port(address: str | None) -> tuple[str, int]:
    parts = urlsplit(address or "")
    return parts.hostname or "127.0.0.1", parts.port or 80
