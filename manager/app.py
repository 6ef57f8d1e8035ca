"""The Manager's FastAPI application."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from manager import notify
from manager import stopping as stopping_steps
from manager.accept_queue import Listening
from manager.admission import Admission
from manager.api import admin, agent, custom_backends, webhooks, workers, workloads
from manager.api import metrics as metrics_api
from manager.api.agent import AssignmentCache
from manager.api.agent_fast import AgentFastPath
from manager.auth_limiter import FailedAuthLimiter
from manager.body_limit import BodyLimitMiddleware
from manager.db.direct import DirectPool
from manager.db.migrate import upgrade_to_head_async
from manager.db.session import make_engine, make_sessionmaker
from manager.gateway.app import Gateway, GatewayMiddleware
from manager.http_errors import CrashBarrier, install_error_handlers
from manager.jobs.dispatcher import JobDispatcher
from manager.metrics import ApiRequestMetrics, ManagerMetrics
from manager.notify import NotificationHub
from manager.openapi import install_openapi
from manager.reconciler import Reconciler, run_reconciler
from manager.services import projects, tokens
from manager.services import workloads as workloads_service
from manager.settings import Settings
from manager.webhooks.deliverer import WebhookDeliverer

log = logging.getLogger("inferencekey.manager")


async def _bootstrap(app: FastAPI, settings: Settings) -> None:
    async with app.state.sessions() as session:
        await projects.ensure_default_tenant(session)
        generated = await tokens.bootstrap_admin(session, settings.admin_token, settings.data_dir)
        await session.commit()
    if generated:
        path = settings.data_dir / tokens.ADMIN_TOKEN_FILE
        # Printed once, on first start, so the operator can copy it; also kept in a 0600 file.
        print(
            f"InferenceKey admin token (shown once, also saved to {path}):\n{generated}",
            file=sys.stdout,
            flush=True,
        )


async def _wake_waiters_on_stop(stopping: Callable[[], bool], hub: NotificationHub) -> None:
    """One watcher for the whole process: when the server begins to stop, every waiting
    long-poll is woken to answer at once (instead of each polling the flag)."""
    while not stopping():
        await asyncio.sleep(STOP_CHECK_S)
    while True:  # long-polls that came in meanwhile too, until the process ends
        hub.wake_all()
        await asyncio.sleep(STOP_CHECK_S)


STOP_CHECK_S = 0.25

# The cyclic collector's thresholds once a process is up: a collection of the young generation
# every 20,000 allocations (Python's default is 700). A request's objects live across its awaits;
# at 700 the collector ran about 20 times a second under 1,000 agents, moved what those requests
# held into the older generations, and so ran a full collection every few seconds that held the
# event loop for 100-280 ms (bench/control_plane.py, 1,000 agents, a gc callback timing each). At
# 20,000 they are freed by their reference counts first. What is left for the collector (cycles)
# waits longer: the largest RSS at 1,000 agents and 10 workloads went from 189 to 206 MB.
GC_THRESHOLDS = (20_000, 10, 10)


def settle_collector() -> None:
    """Once start-up is done: what it made lives as long as the process, out of the collector's
    sight (``gc.freeze``, after a collection so that no garbage is frozen with it), and the
    young generation is collected less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def reconcile_until_stopped(settings: Settings) -> None:
    """The reconcile loop alone, until SIGTERM or SIGINT: the reconciler process of a Manager of
    several processes (manager/processes.py). It stands for the leader lock as any Manager
    does, hears the same notifications, and writes its metrics with the others'."""
    assert settings.database_url is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=1, pool_timeout_s=60.0)
    hub = NotificationHub(settings.database_url)
    try:
        await hub.start()
        reconciler = Reconciler(make_sessionmaker(engine), hub, settings, ManagerMetrics())
        settle_collector()
        running = asyncio.create_task(run_reconciler(reconciler), name="reconciler")
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        await stopping_steps.tasks_ended((running, stopped))
        failure = running.exception() if running.done() and not running.cancelled() else None
        if failure is not None:
            raise failure  # the loop itself failed: the process says so and ends
    finally:
        await stopping_steps.step("the notification hub", hub.stop())
        await stopping_steps.step("the database engine", engine.dispose())


def create_app(
    settings: Settings,
    stopping: Callable[[], bool] = lambda: False,
    listening: Callable[[], Iterable[Listening]] = tuple,
) -> ASGIApp:
    """The Manager's ASGI app. ``stopping`` says whether the server running it is shutting down
    (uvicorn's ``should_exit``); ``listening``, the sockets it accepts on (for
    ``inferencekey_accept_queue_connections``). ``settings.database_url`` must be set (the CLI
    starts an embedded one).

    The gateway wraps the FastAPI app: `/endpoint` requests, the hot path, skip every layer of
    the control plane; everything else (and the lifespan) goes on to FastAPI.
    """
    if not settings.database_url:
        raise ValueError("create_app needs settings.database_url")
    if settings.admin_token:
        tokens.configured_admin_token_id(settings.admin_token)
    database_url = settings.database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.run_migrations:
            await upgrade_to_head_async(database_url)
        engine = make_engine(
            database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout_s=settings.db_pool_timeout_s,
        )
        app.state.engine = engine
        app.state.sessions = make_sessionmaker(engine)
        # Read-only requests' sessions (api/deps.py ReadSession): the same pool, no transaction.
        app.state.read_sessions = make_sessionmaker(
            engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        # The agent requests' one-statement steps (manager/db/direct.py); every statement on it
        # runs under one of their admission slots, so it needs no more connections than those.
        direct = DirectPool(
            database_url,
            size=settings.agent_max_concurrent_db,
            acquire_timeout_s=settings.db_pool_timeout_s,
        )
        app.state.direct = direct
        # Every request's credential lookup (one statement, before its admission slot): a few
        # connections of their own, so a flood of lookups leaves the engine's to the work.
        credential_lookups = DirectPool(
            database_url,
            size=settings.db_credential_pool_size,
            acquire_timeout_s=settings.db_pool_timeout_s,
        )
        app.state.credential_lookups = credential_lookups
        hub = NotificationHub(database_url)
        app.state.hub = hub
        app.state.assignment_cache = AssignmentCache()
        hub.on(notify.ASSIGNMENTS, app.state.assignment_cache.invalidate)
        background: list[asyncio.Task[None]] = []
        stop_timing_the_collector: Callable[[], None] | None = None
        engines = [engine]
        try:
            await direct.start()
            await credential_lookups.start()
            await _bootstrap(app, settings)
            await hub.start()
            await gateway.start(app.state.sessions, hub)
            background.append(
                stopping_steps.background(metrics.keep_fresh(app.state.sessions), name="metrics")
            )
            background.append(stopping_steps.background(metrics.time_the_loop(), name="loop-lag"))
            background.append(
                stopping_steps.background(
                    metrics.watch_the_accept_queue(listening), name="accept-queue"
                )
            )
            stop_timing_the_collector = metrics.time_the_collector()
            assert gateway.routes is not None and gateway.demand is not None
            dispatcher = JobDispatcher(
                app.state.sessions,
                gateway.routes,
                gateway.client,
                settings,
                hub,
                manager_id=gateway.demand.manager_id,
            )
            background.append(stopping_steps.background(dispatcher.run_forever(), name="jobs"))
            deliverer = WebhookDeliverer(app.state.sessions, settings, hub)
            background.append(stopping_steps.background(deliverer.run_forever(), name="webhooks"))
            background.append(
                stopping_steps.background(_wake_waiters_on_stop(stopping, hub), name="stop-watch")
            )
            # Shed heartbeats still prove their agents alive: a third of the not-ready lease.
            keep_every_s = min(5.0, settings.worker_not_ready_after_s / 3)
            background.append(
                stopping_steps.background(
                    agent.keep_shed_leases(app.state, keep_every_s), name="shed-leases"
                )
            )
            if settings.metrics_address:
                metrics.serve_separately(settings.metrics_address)
            if settings.run_reconciler:
                # Connections of its own: no flood of requests can starve the reconcile loop
                # of the pool (a pass uses one at a time, the resync's read beside it the other;
                # its leader lock holds another outside).
                reconcile_engine = make_engine(
                    database_url, pool_size=1, max_overflow=1, pool_timeout_s=60.0
                )
                engines.append(reconcile_engine)
                reconciler = Reconciler(make_sessionmaker(reconcile_engine), hub, settings, metrics)
                background.append(
                    stopping_steps.background(run_reconciler(reconciler), name="reconciler")
                )
            # What start-up made lives as long as the process: out of the collector's sight, so
            # a large answer's garbage no longer makes it walk every object the Manager holds.
            settle_collector()
            yield
        finally:
            if stop_timing_the_collector is not None:
                stop_timing_the_collector()
            # Each step bounded in time (manager/stopping.py), and each taken even when one
            # before it fails or sticks: no pool's connections are left open.
            await stopping_steps.tasks_ended(background)
            metrics.server.stop()
            closers: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("the gateway", gateway.stop),
                ("the notification hub", hub.stop),
                ("the agent requests' pool", direct.close),
                ("the credential lookups' pool", credential_lookups.close),
                *(("a database engine", each.dispose) for each in engines),
            ]
            for name, close in closers:
                await stopping_steps.step(name, close())

    app = FastAPI(
        title="InferenceKey Manager",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.settings = settings
    # The long-polls of the agent protocol end on it instead of holding a shutdown for its
    # grace period.
    app.state.stopping = stopping
    metrics = ManagerMetrics()
    app.state.metrics = metrics
    # One count of failed authentications per client address for both planes.
    app.state.auth_limiter = FailedAuthLimiter(
        settings.auth_failures_per_window, settings.auth_failure_window_s
    )
    # What the plain list of workloads wrote, to write again only what changed.
    app.state.listed_workloads = workloads_service.ListedWorkloads()
    # The control API's turns (manager.admission); the agent protocol has its own.
    app.state.api_admission = Admission(
        settings.api_max_concurrent,
        settings.api_admission_wait_s,
        settings.agent_retry_after_s,
        busy="this Manager has more API requests than it can serve now; retry shortly",
        waited=metrics.admission_wait.labels("api").observe,
        kind="control-API requests",
        held=metrics.admission_hold.labels("api").observe,
    )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        exempt=custom_backends.is_upload,  # streamed, capped by custom_backend_max_bytes
    )
    gateway = Gateway(settings, app.state.auth_limiter, metrics)
    install_error_handlers(app)
    app.add_middleware(ApiRequestMetrics, metrics=metrics)
    install_openapi(app)
    app.include_router(workloads.router)
    app.include_router(admin.router)
    app.include_router(agent.router)
    app.include_router(workers.router)
    app.include_router(webhooks.router)
    app.include_router(webhooks.admin_router)
    app.include_router(custom_backends.router)
    app.include_router(custom_backends.upload_router)
    app.include_router(metrics_api.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Agents' delta heartbeats, a fleet's steady traffic, skip the control plane's layers too
    # (behind a barrier of their own: an unexpected error is the JSON 500, as on every route).
    return GatewayMiddleware(CrashBarrier(AgentFastPath(app, app)), gateway)
