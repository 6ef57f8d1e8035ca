"""The agent protocol's commonest requests, served without the FastAPI stack.

A fleet's steady traffic is mostly three requests: a delta heartbeat (only ``address``: nothing
changed), a heartbeat that reports (every agent's full report each minute, a replica's state or
engine load) and a long-poll for the assignments, each from an agent whose credential this
process has seen. Through FastAPI each cost about twice its own work in middleware, routing and
dependency solving (py-spy, 1,000 agents). This layer answers exactly those cases itself, by the
same steps as the routes (``agent.heartbeat``, ``agent.watch_assignments``): the credential
cache and the failed-authentication limit, an admission slot, the statements on the direct
pool (the lease renewal, a report's changes; the credential's standing), the cached answer; the
same bytes, status codes, errors and metrics. A heartbeat also waits for its worker's turn.

Whether to try is decided on the headers (and a long-poll's query), before any body is read:
another route or method, a credential not cached, an address over its failed-authentication
limit, a heartbeat body over ``MAX_BODY``, without a length or not ``application/json``, a
long-poll with a body or with a query other than plain ``version`` and ``wait`` go on to the
FastAPI app untouched. So do, with their body replayed, a body that is not a valid heartbeat
(parsed as strictly as the route parses: no NaN, Infinity or deep nesting) and a credential
revoked since it was cached. The routes there stay the ones documented (OpenAPI) and
the ones that answer every case this layer declines.
"""

from __future__ import annotations

import functools
import re
import time
from urllib.parse import parse_qsl

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ik_contracts import relay
from ik_contracts.protocol import MAX_WAIT_S, Heartbeat
from ik_contracts.upstream import header_value
from manager.api.agent import (
    AgentProtocol,
    long_poll,
    protocol_of,
    slotted_reading,
    still_stands,
    store_heartbeat,
)
from manager.api.border import parse_json_strictly
from manager.auth import Principal, bearer_token, token_digest
from manager.errors import ApiProblem, DatabaseUnavailable
from manager.http_errors import database_unavailable, log_unavailable, problem_response
from manager.metrics import AnswerStatus
from manager.services.workers import AgentWorker

PATH = "/api/agent/heartbeat"
ROUTE = ("POST", PATH)
# A delta heartbeat is ~50 bytes, a full report of 8 GPUs and a few replicas a few KiB; a body
# larger than this (thousands of model files, long log tails) goes the long way.
MAX_BODY = 64 * 1024
WATCH_PATH = "/api/agent/assignments"
WATCH_ROUTE = ("GET", WATCH_PATH)
# A long-poll's ``wait`` as this layer takes it: plain decimal seconds (else the route parses).
_SECONDS = re.compile(r"[0-9]{1,3}(\.[0-9]{1,6})?")


class AgentFastPath:
    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app = app
        self.state = fastapi.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WATCH_PATH and scope["method"] == "GET":
            await self._watch(scope, receive, send)
            return
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self._any_heartbeat(scope, receive, send)
        finally:
            self.state.metrics.heartbeat_duration.observe(time.perf_counter() - started)

    async def _any_heartbeat(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A heartbeat, answered here where it can be, else by the route."""
        # Decided on the headers, before any body is read (as the route refuses an unknown
        # credential before it reads one).
        known = self._caller(scope)
        length = _content_length(scope)
        if known is None or length is None or length > MAX_BODY or not _json(scope):
            await self.app(scope, receive, send)
            return
        try:
            body = await relay.read_body(receive, length)
        except relay.BodyTooLarge:  # more than it declared (the server frames by the length)
            body = b""
        if len(body) != length:  # the client went away before all of it came, or lied
            await self.app(scope, _gone, send)
            return
        if not await self._heartbeat(scope, known[1], body, send):
            await self.app(scope, relay.replayed(body, receive), send)

    def _caller(self, scope: Scope) -> tuple[Principal, AgentWorker] | None:
        """The cached agent credential of the request, if its address is under its
        failed-authentication limit; None to let the route decide."""
        token = bearer_token(_text(header_value(scope["headers"], b"authorization")))
        if token is None:
            return None
        known = protocol_of(self.state).credentials.get(token_digest(token))
        if known is None:
            return None
        try:
            self.state.auth_limiter.check(scope["client"][0] if scope.get("client") else None)
        except ApiProblem:
            return None  # the route answers 429, as it answers every such request
        return known

    async def _heartbeat(self, scope: Scope, worker: AgentWorker, body: bytes, send: Send) -> bool:
        """Answer a heartbeat; False to let the route do it."""
        state = self.state
        protocol: AgentProtocol = protocol_of(state)
        try:
            # As strict as the route: no NaN or Infinity, nothing nested too deep.
            report = Heartbeat.model_validate(parse_json_strictly(body))
        except (ApiProblem, ValidationError):
            return False  # the route answers it as it answers every such request
        answered = AnswerStatus(send)
        counted = answered.send
        try:
            try:
                if not await store_heartbeat(state, protocol, worker, report, patient=False):
                    protocol.credentials.evict(worker.token_id)  # revoked: the route says 401
                    return False
                answer = await state.assignment_cache.answer(
                    worker, state.read_sessions, state.settings.heartbeat_interval_s
                )
            except Exception as error:
                await _answer_failure(scope, error, answered)
                return True
            await _answer_json(counted, answer.encoded)
            return True
        finally:
            if answered.status:  # else the route answers, and counts
                state.metrics.count_api_answer(*ROUTE, answered.status)

    async def _watch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A long-poll of a cached credential, with the route's checks and answer; anything
        else (a body, a query the route would parse otherwise or refuse) goes to the route."""
        known = self._caller(scope)
        query = _watch_query(scope)
        headers = scope["headers"]
        if (
            known is None
            or query is None
            or header_value(headers, b"content-length") not in (None, b"0")
            or header_value(headers, b"transfer-encoding") is not None
        ):
            await self.app(scope, receive, send)
            return
        worker = known[1]
        state = self.state
        answered = AnswerStatus(send)
        try:
            try:
                stands = await still_stands(state, worker)
                if stands:
                    version, wait = query
                    answer = await long_poll(
                        state, worker, version, wait, functools.partial(slotted_reading, state)
                    )
            except Exception as error:
                await _answer_failure(scope, error, answered)
                return
            if not stands:  # revoked: the route says 401 (and counts it)
                await self.app(scope, receive, send)
                return
            await _answer_json(answered.send, answer.encoded)
        finally:
            if answered.status:  # else the route answered, and counted
                state.metrics.count_api_answer(*WATCH_ROUTE, answered.status)


async def _answer_failure(scope: Scope, error: Exception, answered: AnswerStatus) -> None:
    """What the route's error handlers would answer: a problem's status (503 overloaded when
    shed, 503 database_unavailable); any other error goes on to the CrashBarrier's 500 (and
    its log), counted as a 500 here as the route's would be."""
    problem = error if isinstance(error, ApiProblem) else database_unavailable(error)
    if problem is None:
        answered.status = 500
        raise error
    if isinstance(problem, DatabaseUnavailable) and problem is not error:
        log_unavailable(scope, problem)
    await problem_response(problem)(scope, _gone, answered.send)


def _watch_query(scope: Scope) -> tuple[str, float] | None:
    """``version`` and ``wait`` of a long-poll's query, each at most once and nothing else,
    ``wait`` plain seconds within the route's bounds; None to let the route parse it (as
    Starlette decodes a query: percent-escapes as UTF-8, blanks kept)."""
    pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    given = dict(pairs)
    if len(given) != len(pairs) or not given.keys() <= {"version", "wait"}:
        return None
    wait = given.get("wait", "25")
    if _SECONDS.fullmatch(wait) is None or float(wait) > MAX_WAIT_S:
        return None
    return given.get("version", ""), float(wait)


async def _answer_json(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _gone() -> Message:
    return {"type": "http.disconnect"}


def _json(scope: Scope) -> bool:
    kind = header_value(scope["headers"], b"content-type") or b""
    return kind.split(b";")[0].strip().lower() == b"application/json"


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _content_length(scope: Scope) -> int | None:
    raw = header_value(scope["headers"], b"content-length")
    if raw is None or not raw.isdigit():
        return None
    return int(raw)
