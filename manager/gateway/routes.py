"""Where a data-plane request may go: which routes a task type serves, and the ready replicas.

The table is kept in memory and reloaded from Postgres when a notification says something
changed (a phase, an assignment, a replica state) and at least every second, so a request
never waits on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from inferencekey.enums import ExecutionPolicy, TaskType
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ik_contracts.endpoint_paths import JOBS_TOGGLE, ROUTE_TASK_TYPES, ROUTE_TOGGLES
from ik_contracts.engines import ENGINES
from ik_contracts.engines.custom import CustomBackendEngine
from ik_contracts.protocol import ReplicaState
from manager.db.models import Project, Replica, Worker, Workload
from manager.states import DesiredState, WorkerState

log = logging.getLogger("inferencekey.gateway")

T = TaskType
ASYNC_ONLY = frozenset({T.CLASSIFICATION.value, T.REWARD.value})
EJECT_S = 5.0  # a replica that failed a request is skipped this long (or until reloaded ready)


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


class RouteTable:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], refresh_s: float = 1.0) -> None:
        self._sessions = sessions
        self._refresh_s = refresh_s
        self.projects: dict[str, str] = {}  # slug and id -> id
        self.workloads: dict[tuple[str, str], WorkloadRoute] = {}  # (project id, slug) -> route
        self.by_id: dict[str, WorkloadRoute] = {}  # workload id -> route
        self._targets: dict[str, ReplicaTarget] = {}
        self._dirty = asyncio.Event()
        self._reloaded = asyncio.Event()  # set (and replaced) after every reload
        self._task: asyncio.Task[None] | None = None

    def changed(self, _payload: str = "") -> None:
        self._dirty.set()

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

    async def _keep_fresh(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self._refresh_s)
            await asyncio.sleep(0.02)  # let a burst of notifications settle into one reload
            self._dirty.clear()
            try:
                await self.reload()
            except Exception:
                log.exception("reloading the route table failed; keeping the last one")
                await asyncio.sleep(1.0)

    async def reload(self) -> None:
        async with self._sessions() as session:
            projects = (await session.execute(select(Project.id, Project.slug))).all()
            rows = (
                await session.execute(
                    select(Workload, Project.slug, Replica.id, Worker)
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
                    .where(Workload.deleted_at.is_(None))
                )
            ).all()
        self.projects = {slug: pid for pid, slug in projects} | {pid: pid for pid, _ in projects}
        workloads: dict[tuple[str, str], WorkloadRoute] = {}
        targets: dict[str, ReplicaTarget] = {}
        for workload, project_slug, replica_id, worker in rows:
            key = (workload.project_id, workload.slug)
            route = workloads.get(key)
            if route is None:
                route = workloads[key] = WorkloadRoute(
                    workload.id,
                    workload.project_id,
                    project_slug,
                    workload.slug,
                    workload.task_type,
                    workload.phase,
                    workload.phase_reason,
                    _asks_stream_usage(workload.backend),
                    workload.execution_policy == ExecutionPolicy.AUTOSCALING,
                    frozenset(workload.endpoints_off or ()),
                    _job_routes(workload.backend),
                )
            if replica_id is None or worker is None:
                continue
            target = self._target(replica_id, worker)
            targets[replica_id] = target
            route.replicas.append(target)
        self.workloads, self._targets = workloads, targets
        self.by_id = {route.id: route for route in workloads.values()}
        reloaded, self._reloaded = self._reloaded, asyncio.Event()
        reloaded.set()

    def _target(self, replica_id: str, worker: Worker) -> ReplicaTarget:
        address = urlsplit(worker.address or "")
        host, port = address.hostname or "127.0.0.1", address.port or 80
        secret = worker.gateway_secret.encode()
        target = self._targets.get(replica_id)
        if target is None or (target.host, target.port, target.gateway_secret) != (
            host,
            port,
            secret,
        ):
            return ReplicaTarget(replica_id, worker.id, host, port, secret)
        target.ejected_until = 0.0  # the Manager says it is ready again
        return target
