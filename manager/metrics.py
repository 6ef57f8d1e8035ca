"""Prometheus metrics of one Manager (prometheus-client; of all its processes together when it
runs several, ``manager/processes.py``), served at ``/metrics`` to the admin credential, or
without one on a separate address (``INFERENCEKEY_METRICS_ADDRESS``).

Labels name projects and workloads only once a request is authorised, so no unauthenticated
client can grow the series; the rest is labelled ``-``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ik_contracts.metrics import LATENCY_BUCKETS, MetricsServer
from ik_contracts.protocol import ReplicaState
from manager.accept_queue import Listening, accept_queue
from manager.db.models import Replica, Worker
from manager.processes import gathered_registry, metrics_directory
from manager.states import WorkerState

UNKNOWN = "-"
REFRESH_S = 5.0
LOOP_LAG_PERIOD_S = 0.1
ACCEPT_QUEUE_PERIOD_S = 0.5
_API_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ManagerMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.gateway_requests = Counter(
            "inferencekey_gateway_requests",
            "Data-plane requests answered, by workload, route and status.",
            ["project", "workload", "route", "status"],
            registry=registry,
        )
        self.gateway_duration = Histogram(
            "inferencekey_gateway_request_duration_seconds",
            "Data-plane requests, from arrival to the last byte of the answer.",
            ["project", "workload"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.gateway_first_byte = Histogram(
            "inferencekey_gateway_time_to_first_byte_seconds",
            "Data-plane requests, from arrival to the first byte of the answer's body.",
            ["project", "workload"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.gateway_in_flight = Gauge(
            "inferencekey_gateway_in_flight_requests",
            "Data-plane requests being relayed now.",
            ["project", "workload"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.api_requests = Counter(
            "inferencekey_api_requests",
            "Control-plane requests answered, by route and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.api_duration = Histogram(
            "inferencekey_api_request_duration_seconds",
            "Control-plane requests, from the route's first layer to the last byte of the answer.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.heartbeat_duration = Histogram(
            "inferencekey_agent_heartbeat_duration_seconds",
            "Agent heartbeats, from the Manager's first layer to the last byte of the answer.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.admission_wait = Histogram(
            "inferencekey_admission_wait_seconds",
            "How long requests waited for a turn (manager/admission.py), answered or shed with"
            " 503 overloaded: kind agent (an agent request's database slot), heartbeat (its"
            " worker's previous heartbeat still served) and api (a control-API request).",
            ["kind"],
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self.admission_hold = Histogram(
            "inferencekey_admission_hold_seconds",
            "How long requests held the turn they were given (manager/admission.py), from the"
            " turn to its release: kind agent (an agent request's database slot) and api (a"
            " control-API request). Slots held long make the next requests wait.",
            ["kind"],
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self.loop_lag = Histogram(
            "inferencekey_event_loop_lag_seconds",
            "How late this Manager's event loop ran a timer due every 0.1 s: the wait a request"
            " has before it is read, and at each of its awaits.",
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )
        # Read from the database: every process of a Manager shows the same.
        self.replicas = Gauge(
            "inferencekey_replicas",
            "Replicas by state.",
            ["state"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.workers = Gauge(
            "inferencekey_workers",
            "Workers by state.",
            ["state"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.heartbeat_age = Gauge(
            "inferencekey_worker_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat.",
            ["worker"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.gc_pause = Histogram(
            "inferencekey_gc_pause_seconds",
            "Collections of Python's cyclic garbage collector in this process, by generation:"
            " each holds the event loop for its whole length.",
            ["generation"],
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "inferencekey_reconcile_pass_duration_seconds",
            "Reconcile passes of the leading Manager.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.reconcile_leader = Gauge(
            "inferencekey_reconcile_leader",
            "1 while this Manager leads the reconcile loop, else 0.",
            registry=registry,
            multiprocess_mode="livesum",  # of a Manager's processes, the one that leads
        )
        self.accept_queue = Gauge(
            "inferencekey_accept_queue_connections",
            "Connections the kernel has accepted for the Manager that wait for it to take them:"
            " not yet served, shed or timed (manager/accept_queue.py).",
            registry=registry,
            multiprocess_mode="livemax",  # the processes share one socket: each reads the same
        )
        self.accept_queue_limit = Gauge(
            "inferencekey_accept_queue_limit",
            "The most connections that may wait there; past it the kernel drops new ones.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.reconcile_full_reads = Counter(
            "inferencekey_reconcile_full_reads",
            "Reconcile passes that read the whole fleet (the others read what changed).",
            registry=registry,
        )
        self.server = MetricsServer(registry)
        self._gateway_series: dict[tuple[str, str, str], GatewaySeries] = {}
        self._api_durations: dict[tuple[str, str], Any] = {}
        self._gc_pauses: collections.deque[tuple[int, float]] = collections.deque(maxlen=10_000)
        self._gc_series = [self.gc_pause.labels(str(generation)) for generation in range(3)]

    def gateway_series(self, project: str, workload: str, route: str) -> GatewaySeries:
        """The gateway's series for one workload and route, looked up once: ``labels()`` on
        every request would cost the data plane more than all the rest of its metrics."""
        key = (project, workload, route)
        series = self._gateway_series.get(key)
        if series is None:
            series = self._gateway_series[key] = GatewaySeries(self, project, workload, route)
        return series

    def api_duration_of(self, method: str, template: str) -> Any:
        """The duration series of one route template, looked up once (methods the API does
        not serve as ``other``: no caller can grow the series with made-up ones)."""
        key = (method if method in _API_METHODS else "other", template)
        series = self._api_durations.get(key)
        if series is None:
            series = self._api_durations[key] = self.api_duration.labels(*key)
        return series

    def count_api_answer(self, method: str, template: str, status: int) -> None:
        """A control-plane answer, by route template and status (0: the client went first)."""
        shown = str(status) if status else "disconnected"
        self.api_requests.labels(method, template, shown).inc()

    def render(self) -> bytes:
        """This process's series; those of all its Manager's processes when it is one of
        several (``inferencekey manager --processes N``)."""
        directory = metrics_directory()
        if directory is not None:
            return generate_latest(gathered_registry(directory))
        return generate_latest(self.registry)

    async def refresh(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        """Replicas and workers by state, and heartbeat ages, from the database (any Manager
        process shows the same)."""
        async with sessions() as session:
            replicas = (
                await session.execute(select(Replica.state, func.count()).group_by(Replica.state))
            ).all()
            workers = (
                await session.execute(select(Worker.id, Worker.state, Worker.last_heartbeat_at))
            ).all()
        # Every state, 0 where none is in it: a series set once stays in the files of a Manager
        # of several processes, so a state emptied must read 0, not its last count.
        counts = dict.fromkeys(ReplicaState, 0) | {state: count for state, count in replicas}
        for state, count in counts.items():
            self.replicas.labels(state).set(count)
        if metrics_directory() is None:
            # Several processes: prometheus-client cannot clear a series from their files, so a
            # deleted worker's age stays until the Manager restarts (docs/DESIGN.md).
            self.heartbeat_age.clear()
        now = datetime.now(UTC)
        by_state: dict[str, int] = dict.fromkeys(WorkerState, 0)
        for worker_id, state, last_heartbeat in workers:
            by_state[state] = by_state.get(state, 0) + 1
            if last_heartbeat is not None:
                self.heartbeat_age.labels(worker_id).set((now - last_heartbeat).total_seconds())
        for state, count in by_state.items():
            self.workers.labels(state).set(count)

    async def keep_fresh(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.refresh(sessions)
            await asyncio.sleep(REFRESH_S)

    async def time_the_loop(self) -> None:
        """Observe how late the event loop runs a timer, every ``LOOP_LAG_PERIOD_S``: when it
        is late, every request waits that long before it is read and at each of its awaits."""
        loop = asyncio.get_running_loop()
        observe = self.loop_lag.observe
        while True:
            due = loop.time() + LOOP_LAG_PERIOD_S
            await asyncio.sleep(LOOP_LAG_PERIOD_S)
            observe(max(0.0, loop.time() - due))
            self._observe_gc_pauses()

    async def watch_the_accept_queue(self, listening: Callable[[], Iterable[Listening]]) -> None:
        """Read the listening sockets' accept queue every ``ACCEPT_QUEUE_PERIOD_S`` (one
        system call; nothing where the system does not say)."""
        while True:
            figures = accept_queue(listening())
            if figures is not None:
                self.accept_queue.set(figures[0])
                self.accept_queue_limit.set(figures[1])
            await asyncio.sleep(ACCEPT_QUEUE_PERIOD_S)

    def time_the_collector(self) -> Callable[[], None]:
        """Time each collection (``gc.callbacks``) until the function returned is called; the
        pauses are observed by ``time_the_loop``. The hook itself only appends to a deque: a
        collection can start inside prometheus-client while it holds the lock of its values (a
        Manager of several processes), and observing there would wait for that lock forever."""
        pauses = self._gc_pauses
        started = 0.0

        def collection(phase: str, info: dict[str, int]) -> None:
            nonlocal started
            if phase == "start":
                started = time.perf_counter()
            else:
                pauses.append((info["generation"], time.perf_counter() - started))

        gc.callbacks.append(collection)
        return lambda: gc.callbacks.remove(collection)

    def _observe_gc_pauses(self) -> None:
        pauses = self._gc_pauses
        while pauses:
            generation, seconds = pauses.popleft()
            self._gc_series[generation].observe(seconds)

    def serve_separately(self, address: str) -> None:
        """Serve these metrics without a credential on ``HOST:PORT``."""
        host, _, port = address.rpartition(":")
        self.server.serve(host or "127.0.0.1", int(port))


class GatewaySeries:
    __slots__ = ("_labels", "_metrics", "_requests", "duration", "first_byte", "in_flight")

    def __init__(self, metrics: ManagerMetrics, project: str, workload: str, route: str) -> None:
        self._metrics = metrics
        self._labels = (project, workload, route)
        self._requests: dict[int, Any] = {}
        self.duration = metrics.gateway_duration.labels(project, workload)
        self.first_byte = metrics.gateway_first_byte.labels(project, workload)
        self.in_flight = metrics.gateway_in_flight.labels(project, workload)

    def answered(self, status: int) -> None:
        counter = self._requests.get(status)
        if counter is None:
            shown = str(status) if status else "disconnected"
            counter = self._metrics.gateway_requests.labels(*self._labels, shown)
            self._requests[status] = counter
        counter.inc()


class ApiRequestMetrics:
    """Counts control-plane answers by route template (never the raw path: ids would make a
    series each) and status."""

    def __init__(self, app: ASGIApp, metrics: ManagerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = AnswerStatus(send)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, answer.send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.count_api_answer(scope["method"], template, answer.status)
            self.metrics.api_duration_of(scope["method"], template).observe(
                time.perf_counter() - started
            )


class AnswerStatus:
    """The status a response starts with, seen as it is sent (0 until then)."""

    def __init__(self, send: Send) -> None:
        self.status = 0
        self._send = send

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
