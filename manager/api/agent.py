"""The agent protocol: heartbeats in, the desired replica set out (``ik_agent_`` only)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import State

from ik_contracts.protocol import MAX_WAIT_S, Assignments, Heartbeat
from manager import notify
from manager.admission import Admission
from manager.api.border import AgentBorderRoute, authenticated
from manager.auth import Principal, TokenKind, bearer_token, require_kind, token_digest
from manager.custom_backends import service as custom_backends
from manager.db.models import Worker
from manager.db.session import autocommit
from manager.errors import Overloaded, Unauthenticated
from manager.http_errors import database_unavailable
from manager.metrics import ManagerMetrics
from manager.openapi import CUSTOM_BACKEND_PACKAGE_RESPONSES, ERROR_RESPONSES
from manager.services import tokens, workers
from manager.services.timefmt import utcnow
from manager.settings import Settings

# 503 here is also this process shedding agent requests (overloaded), with Retry-After.
AGENT_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    503: {
        **ERROR_RESPONSES[503],
        "description": "database unavailable, or this Manager is shedding agent requests "
        "(database_unavailable, overloaded); retry after Retry-After seconds",
    },
}
WHERE = "the agent protocol (/api/agent)"
log = logging.getLogger("inferencekey.agents")


class AgentCredentials:
    """Each agent credential's worker, by the SHA-256 of the whole credential, so that an
    agent's requests cost no query to say who is calling. An entry goes when its credential's
    revocation is heard (``NOTIFY ik_tokens``, every process; all of them after the listening
    connection came back); after ``TTL_S`` it is looked up again, and until then it still names
    who sent a request shed before its lookup (``last_known``). A revoked credential is refused
    on its next request all the same, however the notification fares: the heartbeat checks it in
    its own statement, the long-poll and the package download with one query first. So the TTL
    is a safety net, not what keeps revocation prompt: each lookup is a request through FastAPI
    and two queries, and at 60 s a fleet of 1,000 agents made 17 of them a second."""

    TTL_S = 300.0
    MAX_ENTRIES = 100_000

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[float, Principal, workers.AgentWorker]] = {}
        self._digests: dict[str, bytes] = {}  # token id -> the digest its entry is under
        self.generation = 0  # bumped by every eviction: a lookup under way stores nothing

    def get(self, digest: bytes) -> tuple[Principal, workers.AgentWorker] | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            return None  # looked up again (and put back) by the request; kept till then
        return entry[1], entry[2]

    def last_known(self, digest: bytes) -> workers.AgentWorker | None:
        """The worker of this credential as last looked up, however long ago, unless its
        revocation was heard since: who sent a request shed before its lookup."""
        entry = self._entries.get(digest)
        return entry[2] if entry is not None else None

    def put(
        self,
        digest: bytes,
        principal: Principal,
        worker: workers.AgentWorker,
        generation: int,
    ) -> None:
        if generation != self.generation:
            return  # a revocation was heard while it was looked up
        if len(self._entries) >= self.MAX_ENTRIES:
            self.evict(notify.ANY)
        self._entries[digest] = (time.monotonic() + self.TTL_S, principal, worker)
        self._digests[principal.token_id] = digest

    def evict(self, token_id: str) -> None:
        self.generation += 1
        if token_id == notify.ANY:
            self._entries.clear()
            self._digests.clear()
            return
        digest = self._digests.pop(token_id, None)
        if digest is not None:
            self._entries.pop(digest, None)


class OneAtATime:
    """One heartbeat per worker at a time in this process; the others wait for their turn,
    holding no admission slot and no connection, as long as a request waits for a slot (then
    503 overloaded). Concurrent heartbeats of one worker (an agent that gave up on a slow answer
    and sent again) each locked its row twice in one statement, and three of them deadlocked in
    Postgres."""

    def __init__(self, admission: Admission, waited: Callable[[float], None] | None = None) -> None:
        self.admission = admission
        self._waited = waited
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, worker_id: str, *, patient: bool = False) -> AsyncIterator[None]:
        lock, users = self._turns.get(worker_id, (asyncio.Lock(), 0))
        self._turns[worker_id] = (lock, users + 1)
        try:
            busy = "this worker's previous heartbeat is still being served; retry shortly"
            await self.admission.take(
                lock,
                patient=patient,
                busy=busy,
                waited=self._waited,
                kind="heartbeats whose worker's previous heartbeat was still being served",
            )
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._turns[worker_id]
            if users == 1:
                del self._turns[worker_id]
            else:
                self._turns[worker_id] = (lock, users - 1)


class ShedHeartbeats:
    """The workers whose heartbeats this process shed (503 overloaded) since they were last
    taken, and when: proof that their agents live, which `keep_shed_leases` writes every few
    seconds in one statement (``workers.keep_leases``), so that a Manager too busy to hear the
    fleet does not judge it lapsed and re-place its replicas."""

    def __init__(self) -> None:
        self._seen: dict[str, datetime] = {}

    def shed(self, worker_id: str) -> None:
        self._seen[worker_id] = utcnow()

    def take(self) -> dict[str, datetime]:
        taken, self._seen = self._seen, {}
        return taken


async def keep_shed_leases(state: State, every_s: float) -> None:
    """Until cancelled: every ``every_s``, keep the leases of the workers whose heartbeats were
    shed meanwhile."""
    while True:
        await asyncio.sleep(every_s)
        seen = protocol_of(state).shed_heartbeats.take()
        if not seen:
            continue
        try:
            async with autocommit(state.engine) as connection:
                kept = await workers.keep_leases(connection, seen)
        except Exception as error:
            if database_unavailable(error) is None:
                log.exception("keeping the leases of shed workers failed")
            else:
                log.warning("keeping the leases of shed workers failed: %s", error)
            continue
        if kept:
            log.info(
                "kept the leases of %d ready worker(s) whose heartbeats this Manager shed "
                "(overloaded)",
                kept,
            )


class AgentProtocol:
    """This process's state for the agent routes, made on their first request. At most
    ``agent_max_concurrent_db`` agent requests use the database at once; one that cannot start
    within ``agent_admission_wait_s`` is answered 503 ``overloaded`` with Retry-After, which the
    agent honours with jitter, instead of queueing on the connection pool for its whole timeout
    and leaving none for the reconciler and the API. A long-poll holds a slot only while it
    reads, never while it waits."""

    def __init__(self, settings: Settings, metrics: ManagerMetrics | None = None) -> None:
        waits = metrics.admission_wait if metrics is not None else None
        self.admission = Admission(
            settings.agent_max_concurrent_db,
            settings.agent_admission_wait_s,
            settings.agent_retry_after_s,
            busy="this Manager has more agent requests than it can serve now; retry shortly",
            waited=waits.labels("agent").observe if waits is not None else None,
            kind="agent requests",
            held=metrics.admission_hold.labels("agent").observe if metrics is not None else None,
        )
        self.credentials = AgentCredentials()
        self.heartbeats = OneAtATime(
            self.admission, waits.labels("heartbeat").observe if waits is not None else None
        )
        self.shed_heartbeats = ShedHeartbeats()


def _protocol(request: Request) -> AgentProtocol:
    return protocol_of(request.app.state)


def protocol_of(state: State) -> AgentProtocol:
    protocol: AgentProtocol | None = getattr(state, "agent_protocol", None)
    if protocol is None:
        protocol = state.agent_protocol = AgentProtocol(state.settings, state.metrics)
        state.hub.on(notify.TOKENS, protocol.credentials.evict)
    return protocol


def _slot(request: Request) -> contextlib.AbstractAsyncContextManager[None]:
    """The request's admission slot. The first one after its credential was looked up is waited
    for without a deadline: a request is shed before it uses the database, not halfway."""
    patient = getattr(request.state, "admitted", False)
    request.state.admitted = False
    return _protocol(request).admission.slot(patient=patient)


@contextlib.asynccontextmanager
async def _database(request: Request) -> AsyncIterator[AsyncSession]:
    """A short session under an admission slot: every database use of the agent routes."""
    async with _slot(request), request.app.state.sessions() as session:
        yield session


@contextlib.asynccontextmanager
async def _reading(request: Request) -> AsyncIterator[AsyncSession]:
    """As ``_database``, for reads only: each statement commits by itself, with no BEGIN
    before them and no ROLLBACK after."""
    async with _slot(request), request.app.state.read_sessions() as session:
        yield session


async def _identify(request: Request) -> None:
    """Who is calling, before the body is read: from the credential cache when it knows the
    credential; else looked up (under an admission slot), answered 401 or 403 as on every route
    when it is not a live agent credential, and remembered."""
    credentials = _protocol(request).credentials
    token = bearer_token(request.headers.get("authorization"))
    digest = token_digest(token) if token is not None else b""
    known = credentials.get(digest)
    if known is not None:
        # As for a lookup: an address over its failed-authentication limit is refused first.
        request.app.state.auth_limiter.check(request.client.host if request.client else None)
        request.state.principal, request.state.agent_worker = known
        return
    generation = credentials.generation
    try:
        async with _protocol(request).admission.slot():
            principal = await authenticated(request)
            require_kind(principal, TokenKind.AGENT, WHERE)
            async with request.app.state.sessions() as session:
                worker = await workers.agent_worker(session, principal)
    except Overloaded:
        # Shed before its lookup: if this credential's worker is known from an earlier one, its
        # agent lives all the same (keep_shed_leases checks the credential's standing).
        known_worker = credentials.last_known(digest)
        if known_worker is not None:
            _protocol(request).shed_heartbeats.shed(known_worker.id)
        raise
    credentials.put(digest, principal, worker, generation)
    request.state.agent_worker = worker
    request.state.credential_checked = True  # just now, in the database
    request.state.admitted = True


def _caller(request: Request) -> workers.AgentWorker:
    """The calling agent's worker (AgentRoute found it)."""
    worker: workers.AgentWorker = request.state.agent_worker
    return worker


async def _check_unrevoked(request: Request, worker: workers.AgentWorker) -> None:
    """Refuse a cached credential revoked a moment ago, whose NOTIFY is not heard yet: a revoked
    agent credential fails on its next request, as every credential does. (The heartbeat checks
    in its own statement instead.)"""
    if getattr(request.state, "credential_checked", False):
        return
    patient = getattr(request.state, "admitted", False)  # as _slot: the first slot waits
    request.state.admitted = False
    if not await still_stands(request.app.state, worker, patient=patient):
        raise Unauthenticated()


async def still_stands(state: State, worker: workers.AgentWorker, *, patient: bool = False) -> bool:
    """Whether a cached credential still stands (the route's check, and agent_fast's), asked
    under an admission slot (503 overloaded when none comes in time); if it was revoked,
    False and the cached credential forgotten."""
    protocol = protocol_of(state)
    async with protocol.admission.slot(patient=patient):
        standing = await tokens.unrevoked(state.direct, worker.token_id)
    if not standing:
        protocol.credentials.evict(worker.token_id)
    return standing


@contextlib.asynccontextmanager
async def slotted_reading(state: State) -> AsyncIterator[AsyncSession]:
    """``_reading`` for agent_fast: a short session in autocommit under an admission slot."""
    async with protocol_of(state).admission.slot(), state.read_sessions() as session:
        yield session


class AgentRoute(AgentBorderRoute):
    """The agent protocol's border: the caller is known (401, 403 otherwise) before the body is
    read, as on every route, but an agent's credential seen before costs no query."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def identified(request: Request) -> Response:
            await _identify(request)
            return await handler(request)

        return identified


router = APIRouter(prefix="/api/agent", route_class=AgentRoute, responses=AGENT_ERROR_RESPONSES)


@dataclass(frozen=True)
class Answer:
    """An Assignments answer, and its JSON as sent (encoded once per change, not per request)."""

    assignments: Assignments
    encoded: bytes

    @property
    def version(self) -> str:
        return self.assignments.version

    def response(self) -> Response:
        return Response(self.encoded, media_type="application/json")


class AssignmentCache:
    """Each worker's last computed answer, until the reconciler says its desired set changed
    (``NOTIFY ik_assignments``, heard by every Manager process) or ``MAX_AGE_S`` passes (a
    notification lost while the listening connection was down). Heartbeats and long-polls of
    a steady fleet then cost no query of their own."""

    # A safety net only (the listening connection's loss clears every answer): longer than the
    # heartbeat interval, or a steady fleet's every heartbeat would read its answer again, and
    # long enough that a thousand agents' answers are not read again 17 times a second (60 s).
    MAX_AGE_S = 300.0

    def __init__(self) -> None:
        self._answers: dict[str, tuple[float, Answer]] = {}
        self._generation: dict[str, int] = {}

    def invalidate(self, worker_id: str) -> None:
        if worker_id == notify.ANY:  # the listening connection came back: anything may have
            self.clear()  # changed meanwhile
            return
        self._answers.pop(worker_id, None)
        self._generation[worker_id] = self._generation.get(worker_id, 0) + 1

    def clear(self) -> None:
        for worker_id in list(self._answers):
            self.invalidate(worker_id)
        self._answers.clear()

    async def answer(
        self,
        worker: workers.AgentWorker,
        sessions: Callable[[], contextlib.AbstractAsyncContextManager[AsyncSession]],
        heartbeat_interval_s: float,
    ) -> Answer:
        """The worker's answer, read with a session of ``sessions`` when none is cached.

        Its callers' sessions are in autocommit (``read_sessions``): the answer's statements
        (the replicas, the GPUs' ids, custom backends' versions) see a snapshot each, as they
        did in a transaction at READ COMMITTED, without the BEGIN and ROLLBACK round trips
        around them, 4% of the serving process's CPU under a fleet's burst of creates (py-spy,
        1,000 agents)."""
        now = time.monotonic()
        cached = self._answers.get(worker.id)
        if cached is not None and now - cached[0] < self.MAX_AGE_S:
            return cached[1]
        generation = self._generation.get(worker.id, 0)
        async with sessions() as session:
            replicas = await workers.assignments(session, worker.id)
        assignments = Assignments(
            worker_id=worker.id,
            version=workers.assignments_version(replicas),
            heartbeat_interval_s=heartbeat_interval_s,
            replicas=replicas,  # type: ignore[arg-type]
            gateway_secret=worker.gateway_secret,
        )
        answer = Answer(assignments, assignments.model_dump_json().encode())
        # Kept only if no change was announced while it was read.
        if self._generation.get(worker.id, 0) == generation:
            self._answers[worker.id] = (now, answer)
        return answer


async def _answer(
    request: Request, worker: workers.AgentWorker, *, admitted: bool = False
) -> Answer:
    """``admitted``: the request already wrote what it reported; its answer is read without
    waiting for an admission slot, so a committed heartbeat is never answered 503.

    The answer is read in autocommit, as everywhere (``AssignmentCache.answer``)."""
    state = request.app.state
    cache: AssignmentCache = state.assignment_cache
    sessions = state.read_sessions if admitted else functools.partial(_reading, request)
    return await cache.answer(worker, sessions, state.settings.heartbeat_interval_s)


async def renew_lease(
    state: State,
    protocol: AgentProtocol,
    worker: workers.AgentWorker,
    address: str | None,
    *,
    patient: bool,
) -> bool:
    """A delta heartbeat's work (here and in agent_fast): the lease renewed in one statement on
    the direct pool (manager/db/direct.py), in the worker's turn and under an admission slot.
    False if the worker's credential was revoked."""
    try:
        async with (
            protocol.heartbeats.turn(worker.id, patient=patient),
            protocol.admission.slot(patient=patient),
        ):
            return await workers.renew_lease(state.direct, worker.id, address, utcnow())
    except Overloaded:
        protocol.shed_heartbeats.shed(worker.id)
        raise


async def store_heartbeat(
    state: State,
    protocol: AgentProtocol,
    worker: workers.AgentWorker,
    body: Heartbeat,
    *,
    patient: bool,
) -> bool:
    """What a heartbeat stores (here and in agent_fast): the lease alone when it reports nothing
    new, else its report. False if the worker's credential was revoked."""
    if body.inventory is None and body.replicas is None:
        return await renew_lease(state, protocol, worker, body.address, patient=patient)
    return await record_report(state, protocol, worker, body, patient=patient)


async def record_report(
    state: State,
    protocol: AgentProtocol,
    worker: workers.AgentWorker,
    report: Heartbeat,
    *,
    patient: bool,
) -> bool:
    """A heartbeat's report (its inventory, its replicas or both; here and in agent_fast),
    stored in the worker's turn and under an admission slot: by
    ``workers.record_report_quickly`` on the direct pool where one statement can write it
    (every agent's full report each minute, a serving replica's engine load, a replica
    starting, ready or failed), else by ``workers.record_heartbeat`` in a session. False if the
    worker's credential was revoked."""
    body = report.model_dump()
    try:
        async with (
            protocol.heartbeats.turn(worker.id, patient=patient),
            protocol.admission.slot(patient=patient),
        ):
            now = utcnow()
            recorded = await workers.record_report_quickly(state.direct, worker.id, body, now)
            if recorded is not None:
                return recorded
            async with state.sessions() as session:
                renewed = await workers.record_heartbeat(session, worker.id, body, now)
                await session.commit()
            return renewed
    except Overloaded:
        protocol.shed_heartbeats.shed(worker.id)
        raise


@router.post("/heartbeat", response_model=Assignments)
async def heartbeat(request: Request, body: Heartbeat) -> Response:
    """Renews the worker's lease and stores what changed (``inventory`` and ``replicas`` only
    when sent); answers the full desired set."""
    worker = _caller(request)
    protocol = _protocol(request)
    patient = getattr(request.state, "admitted", False)  # its credential just looked up
    renewed = await store_heartbeat(request.app.state, protocol, worker, body, patient=patient)
    if not renewed:  # revoked since the credential was cached
        _protocol(request).credentials.evict(worker.token_id)
        raise Unauthenticated()
    return (await _answer(request, worker, admitted=True)).response()


@router.get("/assignments", response_model=Assignments)
async def watch_assignments(
    request: Request,
    version: str = "",
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 25.0,
) -> Response:
    """Answers as soon as the desired set differs from ``version``, or after ``wait`` seconds."""
    worker = _caller(request)
    await _check_unrevoked(request, worker)
    sessions = functools.partial(_reading, request)
    return (await long_poll(request.app.state, worker, version, wait, sessions)).response()


async def long_poll(
    state: State,
    worker: workers.AgentWorker,
    version: str,
    wait: float,
    sessions: Callable[[], contextlib.AbstractAsyncContextManager[AsyncSession]],
) -> Answer:
    """A long-poll's work once its credential's standing is checked (here and in agent_fast):
    the worker's answer as soon as it differs from ``version``, or after ``wait`` seconds;
    ``sessions`` reads an answer not cached."""
    hub: notify.NotificationHub = state.hub
    cache: AssignmentCache = state.assignment_cache
    interval = state.settings.heartbeat_interval_s
    deadline = time.monotonic() + wait
    with hub.subscription(notify.ASSIGNMENTS, worker.id) as changed:
        answer = await cache.answer(worker, sessions, interval)
        while answer.version == version and not state.stopping():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Woken when the reconciler announces a change for this worker, or when the Manager
            # begins to stop (the agent asks again, of another Manager or of this one
            # restarted). An agent that hung up is answered at the deadline, into the void: no
            # timer per long-poll wakes to look for it (a fleet holds a thousand of them).
            if not await notify.wait_for(changed, remaining):
                break
            changed.clear()
            if state.stopping():
                break
            answer = await cache.answer(worker, sessions, interval)
        return answer


@router.get(
    "/custom-backends/{version_id}/package",
    response_class=Response,
    responses=CUSTOM_BACKEND_PACKAGE_RESPONSES,
)
async def custom_backend_package(version_id: str, request: Request) -> StreamingResponse:
    """The package of a custom-backend version (``custom_backend.id`` of an assignment), as
    published; ``X-InferenceKey-Sha256`` is its SHA-256 for the agent to check."""
    worker = _caller(request)
    await _check_unrevoked(request, worker)
    async with _database(request) as session:
        row = await session.get(Worker, worker.id)
        assert row is not None
        version = await custom_backends.package_for_worker(session, version_id, row)
    extension = version.archive_format
    return StreamingResponse(
        custom_backends.package_pieces(request.app.state.sessions, version.id),
        media_type=custom_backends.CONTENT_TYPES[extension],
        headers={
            "Content-Length": str(version.size_bytes),
            "X-InferenceKey-Sha256": version.sha256,
            "Content-Disposition": (
                f'attachment; filename="{version.slug}-{version.version}.{extension}"'
            ),
        },
    )
