"""The gateway's request path, as plain ASGI in front of the FastAPI app (it is the hot path).

Per request: check the ik_live_ key (cached), find the workload and a ready replica (in memory),
check the route fits the task type, then relay to the replica's agent, unbuffered. A replica that
cannot be reached before any byte is sent back is skipped and another one tried.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ik_contracts.endpoint_paths import (
    ROUTE_TASK_TYPES,
    EndpointPathError,
    EndpointTarget,
    parse_endpoint_target,
)
from ik_contracts.errors import problem
from ik_contracts.forwarding import GATEWAY_HEADER, REPLICA_HEADER, RETRYABLE, forwarded_headers
from ik_contracts.logs import ids
from ik_contracts.relay import (
    BodyTooLarge,
    read_body,
    relay_response,
    send_json,
    until_client_disconnects,
)
from ik_contracts.upstream import UnsafeRequest, UpstreamClient, UpstreamError, header_value
from manager import notify
from manager.auth import ALL_WORKLOADS, Principal, TokenKind
from manager.auth_limiter import FailedAuthLimiter
from manager.errors import (
    ApiProblem,
    EndpointDisabled,
    InvalidHeader,
    JobNotFound,
    MethodNotAllowed,
    ProjectScopeMismatch,
    RouteNotFound,
    RouteNotServed,
    ScopeInsufficient,
    WorkloadNotFound,
    WrongCredentialType,
)
from manager.errors import BodyTooLarge as BodyTooLargeProblem
from manager.jobs.envelope import ASYNC_ONLY_KINDS, Envelope, parse_envelope
from manager.jobs.service import JobsPath, find_job, job_view, parse_jobs_path, submit
from manager.metrics import UNKNOWN, ManagerMetrics
from manager.settings import Settings

from .demand import DemandMeter
from .keys import KeyCache
from .routes import (
    EJECT_S,
    STREAM_USAGE_ROUTES,
    RouteTable,
    WorkloadRoute,
    jobs_disabled,
    route_disabled,
    route_problem,
)
from .usage import UsageMeter, UsageTap, ask_for_stream_usage

log = logging.getLogger("inferencekey.gateway")

PREFIX = "/endpoint/"
MAX_ATTEMPTS = 3
WAKE_EVERY_S = 1.0  # held requests wake their workload's reconcile at most this often
RETRY_AFTER_S = b"5"


class Gateway:
    """What the gateway needs at run time; started and stopped with the app's lifespan."""

    def __init__(
        self, settings: Settings, auth_limiter: FailedAuthLimiter, metrics: ManagerMetrics
    ) -> None:
        self.settings = settings
        self.auth_limiter = auth_limiter
        self.metrics = metrics
        self.keys: KeyCache | None = None
        self.routes: RouteTable | None = None
        self.demand: DemandMeter | None = None
        self.usage: UsageMeter | None = None
        self.sessions: async_sessionmaker[AsyncSession] | None = None
        self.client = UpstreamClient()

    async def start(
        self, sessions: async_sessionmaker[AsyncSession], hub: notify.NotificationHub
    ) -> None:
        self.sessions = sessions
        self.keys = KeyCache(sessions)
        self.routes = RouteTable(sessions, resync_s=self.settings.gateway_routes_resync_s)
        self.demand = DemandMeter(sessions)
        self.usage = UsageMeter(sessions)
        hub.on(notify.TOKENS, self.keys.evict)
        # Each names a workload or a worker whose routes may have changed.
        for channel in (
            notify.WORKLOAD_STATUS,
            notify.ASSIGNMENTS,
            notify.RECONCILE,
            notify.WORKERS,
        ):
            hub.on(channel, self.routes.changed)
        await self.routes.start()
        await self.demand.start()
        await self.usage.start()

    async def stop(self) -> None:
        if self.routes is not None:
            await self.routes.stop()
        if self.demand is not None:
            await self.demand.stop()
        if self.usage is not None:
            await self.usage.stop()
        self.client.close()


class GatewayMiddleware:
    """Serves `/endpoint/...` itself; everything else goes on to the FastAPI app."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self._woken: dict[str, float] = {}  # workload id -> when a request last woke it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        seen = _Seen(time.perf_counter())

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = message["status"]
            elif not seen.first_byte_at:
                seen.first_byte_at = time.perf_counter()
            await send(message)

        try:
            await self._handle(scope, receive, observed, seen)
        except ApiProblem as failure:
            await send_json(
                observed,
                failure.status,
                failure.body(),
                [(k.encode(), v.encode()) for k, v in failure.headers.items()],
            )
        finally:
            seen.record(self.gateway.metrics)

    async def _authorise(
        self, scope: Scope, project: str, workload: str
    ) -> tuple[Principal, WorkloadRoute]:
        gateway = self.gateway
        assert gateway.keys is not None and gateway.routes is not None
        authorization = header_value(scope["headers"], b"authorization")
        address = scope["client"][0] if scope.get("client") else None
        principal = await gateway.auth_limiter.authenticate(
            address,
            gateway.keys.authenticate(authorization.decode("latin-1") if authorization else None),
        )
        _require_live_key(principal)
        # "Not yours" and "not there" get the same answer, so a key cannot discover other
        # projects' or ungranted workloads' names.
        own_project = principal.project_id
        named = await gateway.routes.project_id(project, own_project) if own_project else None
        if own_project is None or named != own_project:
            raise ProjectScopeMismatch(f'this key is not scoped to project "{project}"')
        granted = ALL_WORKLOADS in principal.workload_grants
        if not granted and workload not in principal.workload_grants:
            raise ScopeInsufficient(f'this key is not granted workload "{project}/{workload}"')
        key = (own_project, workload)
        route = gateway.routes.workloads.get(key) or await gateway.routes.find(*key)
        if route is None:
            raise WorkloadNotFound(f'workload "{workload}" not found in project "{project}"')
        return principal, route

    async def _handle(self, scope: Scope, receive: Receive, send: Send, seen: _Seen) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        jobs_path = parse_jobs_path(raw_path) if b"/jobs" in raw_path else None
        if jobs_path is not None:
            await self._jobs(scope, receive, send, seen, jobs_path)
            return
        try:
            target = parse_endpoint_target(raw_path, scope.get("query_string", b""))
        except EndpointPathError as error:
            raise RouteNotFound(str(error)) from None
        project, workload, rest = target.project, target.workload, target.route
        principal, route = await self._authorise(scope, project, workload)
        seen.project, seen.workload, seen.route = project, workload, rest
        wrong_route = route_problem(rest, route)
        if wrong_route:
            raise RouteNotServed(wrong_route)
        if route.endpoints_off and (disabled := route_disabled(rest, route, as_job=False)):
            raise EndpointDisabled(disabled)
        settings = self.gateway.settings
        try:
            body = await read_body(receive, settings.gateway_max_body_bytes)
        except BodyTooLarge as error:
            raise BodyTooLargeProblem(str(error)) from None
        demand, usage = self.gateway.demand, self.gateway.usage
        assert demand is not None and usage is not None
        asked = (
            ask_for_stream_usage(body)
            if route.asks_stream_usage and rest in STREAM_USAGE_ROUTES
            else None
        )
        tap = UsageTap(hide_usage_chunk=asked is not None)
        demand.started(route.id)
        in_flight = self.gateway.metrics.gateway_series(project, workload, rest).in_flight
        in_flight.inc()
        try:
            await until_client_disconnects(
                receive, self._forward(scope, send, route, target, asked or body, tap)
            )
        except UpstreamError as error:
            log.warning(
                "stream of %s/%s broke off: %s",
                project,
                workload,
                error,
                extra=ids(project=project, workload=workload, workload_id=route.id),
            )
        finally:
            demand.finished(route.id)
            in_flight.dec()
            if tap.responded:
                usage.record(
                    route.project_id, route.id, route.slug, principal.token_id, tap.usage()
                )

    async def _jobs(
        self, scope: Scope, receive: Receive, send: Send, seen: _Seen, path: JobsPath
    ) -> None:
        """``POST .../jobs`` queues a job (202 with its id once committed); ``GET
        .../jobs/{id}`` shows it to a key that may call the workload."""
        principal, route = await self._authorise(scope, path.project, path.workload)
        seen.project, seen.workload, seen.route = path.project, path.workload, "jobs"
        gateway = self.gateway
        assert gateway.sessions is not None
        method = scope["method"]
        if path.job_id is not None:
            if method != "GET":
                raise MethodNotAllowed("read a job with GET .../jobs/{job_id}")
            job = await find_job(gateway.sessions, route.id, path.job_id)
            if job is None:
                raise JobNotFound(f'job "{path.job_id}" not found for workload "{route.slug}"')
            await send_json(send, 200, job_view(job))
            return
        if method != "POST":
            raise MethodNotAllowed("submit a job with POST .../jobs")
        if off := jobs_disabled(route):  # before reading a body that cannot be queued
            raise EndpointDisabled(off)
        try:
            raw = await read_body(receive, gateway.settings.gateway_max_body_bytes)
        except BodyTooLarge as error:
            raise BodyTooLargeProblem(str(error)) from None
        envelope = job_target(parse_envelope(raw), route)
        if disabled := route_disabled(envelope.route, route, as_job=True):
            raise EndpointDisabled(disabled)
        job_id = await submit(
            gateway.sessions,
            envelope,
            project_id=route.project_id,
            workload_id=route.id,
            key_id=principal.token_id,
            wake=route.wakes and not route.replicas,
        )
        await send_json(send, 202, {"job_id": job_id})

    async def _forward(
        self,
        scope: Scope,
        send: Send,
        route: WorkloadRoute,
        target: EndpointTarget,
        body: bytes,
        tap: UsageTap,
    ) -> None:
        settings = self.gateway.settings
        project, workload = target.project, target.workload
        if route.wakes and not route.replicas:
            route = await self._wake(route)
        upstream_target = target.upstream_target(with_prefix=True)
        headers = forwarded_headers(scope["headers"])
        tried: set[str] = set()
        last_error = "no replica answered"
        for _ in range(MAX_ATTEMPTS):
            replica = route.pick(time.monotonic(), tried)
            if replica is None:
                break
            tried.add(replica.id)
            replica.outstanding += 1
            try:
                try:
                    response = await self.gateway.client.request(
                        replica.host,
                        replica.port,
                        scope["method"],
                        upstream_target,
                        [
                            *headers,
                            (GATEWAY_HEADER, replica.gateway_secret),
                            (REPLICA_HEADER, replica.id.encode()),
                        ],
                        body,
                        connect_timeout=settings.gateway_connect_timeout_s,
                        first_byte_timeout=settings.gateway_first_byte_timeout_s,
                        idle_timeout=settings.gateway_idle_timeout_s,
                    )
                except UnsafeRequest as error:
                    raise InvalidHeader(str(error)) from None
                except UpstreamError as error:
                    replica.ejected_until = time.monotonic() + EJECT_S
                    replica.last_error = f"worker {replica.worker_id}: {error}"
                    if error.request_sent:
                        # It may be running there: never run a generation twice.
                        await send_json(send, 502, problem("replica_failed", str(error)))
                        return
                    last_error = str(error)
                    continue
                if response.status in (502, 503) and response.header(RETRYABLE[0]) == RETRYABLE[1]:
                    last_error = (await response.read()).decode(errors="replace")
                    replica.ejected_until = time.monotonic() + EJECT_S
                    replica.last_error = f"worker {replica.worker_id}: {last_error[:200]}"
                    continue
                replica.last_error = None
                tap.answered_with(
                    response.header(b"content-type"), response.header(b"content-length")
                )
                await relay_response(response, send, tap=tap)
                return
            finally:
                replica.outstanding -= 1
        if not tried:
            if route.replicas:
                # Ready as far as the database knows, but each failed us a moment ago.
                failures = "; ".join(sorted({r.last_error for r in route.replicas if r.last_error}))
                code = "worker_unreachable"
                message = (
                    f'the worker(s) serving "{workload}" cannot be reached '
                    f"({failures or 'no answer'}); they are retried within {EJECT_S:g}s"
                )
            else:
                state = f"{route.phase}: {route.reason}" if route.reason else route.phase
                waited = (
                    f" after waiting {settings.gateway_wake_timeout_s:g}s for it to wake"
                    if route.wakes
                    else ""
                )
                code, message = (
                    "no_ready_replica",
                    f'workload "{workload}" has no ready replica{waited} ({state})',
                )
            await send_json(
                send,
                503,
                problem(code, message, phase=route.phase, reason=route.reason),
                [(b"retry-after", RETRY_AFTER_S)],
            )
            return
        await send_json(
            send,
            502,
            problem(
                "worker_unreachable",
                f"no worker serving {project}/{workload} could be reached: {last_error}",
            ),
            [(b"retry-after", RETRY_AFTER_S)],
        )

    async def _wake(self, route: WorkloadRoute) -> WorkloadRoute:
        """Hold the request while its workload gets a ready replica (scale-from-zero): report
        the demand and wake the reconciler now, then wait for a route table that has one, up to
        the wake timeout. A client that gives up cancels the wait, and stops counting."""
        gateway = self.gateway
        assert gateway.routes is not None and gateway.demand is not None
        now = time.monotonic()
        if now - self._woken.get(route.id, -WAKE_EVERY_S) >= WAKE_EVERY_S:
            self._woken[route.id] = now
            try:
                await gateway.demand.wake(route.id)
            except Exception:
                # The periodic report still carries this request's demand within seconds.
                log.exception("could not wake workload %s at once", route.id)
        deadline = now + gateway.settings.gateway_wake_timeout_s
        key = (route.project_id, route.slug)
        while (left := deadline - time.monotonic()) > 0:
            await gateway.routes.next_reload(left)
            # A route read on a miss and left out by a full read begun before it: read again.
            fresh = gateway.routes.workloads.get(key) or await gateway.routes.find(*key)
            if fresh is None or fresh.id != route.id:
                return route  # deleted meanwhile: answered as no ready replica
            route = fresh
            if route.replicas:
                break
        return route


class _Seen:
    """What the metrics record of one data-plane request. Project and workload are named only
    once the key was accepted for them, so made-up names never become series."""

    __slots__ = ("first_byte_at", "project", "route", "started", "status", "workload")

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_byte_at = 0.0
        self.status = 0
        self.project = self.workload = self.route = UNKNOWN

    def record(self, metrics: ManagerMetrics) -> None:
        done = time.perf_counter()
        series = metrics.gateway_series(self.project, self.workload, self.route)
        series.answered(self.status)
        series.duration.observe(done - self.started)
        if self.first_byte_at:
            series.first_byte.observe(self.first_byte_at - self.started)


def job_target(envelope: Envelope, route: WorkloadRoute) -> Envelope:
    """The envelope with the route its kind takes on this workload's engine; RouteNotServed
    when the workload's task type (or engine) has no such route."""
    if envelope.kind in ASYNC_ONLY_KINDS:
        engine_route = route.job_routes.get(envelope.kind)
        if engine_route is None:
            raise RouteNotServed(
                f"jobs of kind {envelope.kind!r} need an engine with a {envelope.kind} route; "
                f'the engine of workload "{route.slug}" has none'
            )
        envelope = replace(envelope, route=engine_route)
    if route.task_type not in ROUTE_TASK_TYPES[envelope.route]:
        serving = " or ".join(sorted(ROUTE_TASK_TYPES[envelope.route]))
        raise RouteNotServed(
            f"jobs of kind {envelope.kind!r} go to {envelope.route}, which task type "
            f'{serving} serves; workload "{route.slug}" is {route.task_type}'
        )
    return envelope


def _require_live_key(principal: Principal) -> None:
    if principal.kind is not TokenKind.LIVE:
        raise WrongCredentialType(
            f"the data plane (/endpoint) requires an ik_live_ key; got {principal.display}"
        )
