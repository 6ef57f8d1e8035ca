"""The agent protocol's commonest request, served without the FastAPI stack.

A fleet's steady traffic is mostly one request: a delta heartbeat (only ``address``: nothing
changed) from an agent whose credential this process has seen. Through FastAPI it cost about
twice its own work in middleware, routing and dependency solving (py-spy, 1,000 agents). This
layer answers exactly that case itself, by the same steps as the route (``agent.heartbeat``):
the credential cache and the failed-authentication limit, one worker's heartbeats in turn, an
admission slot, the one-statement lease renewal, the cached answer; the same bytes, status
codes, errors and metrics.

Whether to try is decided on the headers, before any body is read: another route or method, a
credential not cached, an address over its failed-authentication limit, a body over
``MAX_BODY``, without a length or not ``application/json`` go on to the FastAPI app untouched.
So do, with their body replayed, a body that is not a valid delta heartbeat (parsed as strictly
as the route parses: no NaN, Infinity or deep nesting) and a credential revoked since it was
cached. The route there stays the one documented (OpenAPI) and the one that
answers every case this layer declines.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ik_contracts import relay
from ik_contracts.protocol import Heartbeat
from ik_contracts.upstream import header_value
from manager.api.agent import AgentProtocol, protocol_of, renew_lease
from manager.api.border import parse_json_strictly
from manager.auth import Principal, bearer_token, token_digest
from manager.errors import ApiProblem
from manager.http_errors import problem_response
from manager.metrics import AnswerStatus
from manager.services.workers import AgentWorker

PATH = "/api/agent/heartbeat"
ROUTE = ("POST", PATH)
# A delta heartbeat is ~50 bytes; one carrying a report goes the long way.
MAX_BODY = 2048


class AgentFastPath:
    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app = app
        self.state = fastapi.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
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
        if not await self._delta_heartbeat(scope, known[1], body, send):
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

    async def _delta_heartbeat(
        self, scope: Scope, worker: AgentWorker, body: bytes, send: Send
    ) -> bool:
        """Answer a delta heartbeat; False to let the route do it."""
        state = self.state
        protocol: AgentProtocol = protocol_of(state)
        try:
            # As strict as the route: no NaN or Infinity, nothing nested too deep.
            report = Heartbeat.model_validate(parse_json_strictly(body))
        except (ApiProblem, ValidationError):
            return False  # the route answers it as it answers every such request
        if report.inventory is not None or report.replicas is not None:
            return False
        answered = AnswerStatus(send)
        counted = answered.send
        try:
            try:
                if not await renew_lease(state, protocol, worker, report.address, patient=False):
                    protocol.credentials.evict(worker.token_id)  # revoked: the route says 401
                    return False
                answer = await state.assignment_cache.answer(
                    worker, state.sessions, state.settings.heartbeat_interval_s
                )
            except ApiProblem as problem:  # shed: 503 overloaded, as the route would
                await problem_response(problem)(scope, _gone, counted)
                return True
            await counted(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-length", str(len(answer.encoded)).encode()),
                        (b"content-type", b"application/json"),
                    ],
                }
            )
            await counted({"type": "http.response.body", "body": answer.encoded})
            return True
        finally:
            if answered.status:  # else the route answers, and counts
                state.metrics.count_api_answer(*ROUTE, answered.status)


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
