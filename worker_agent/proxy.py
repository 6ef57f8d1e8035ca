"""The agent's endpoint proxy: `/endpoint/{project}/{workload}/...` to a local engine.

Only requests the Manager authorised get through: they carry the worker's gateway credential
(`X-InferenceKey-Gateway`), which the Manager hands this agent over its heartbeat. So an agent
port reachable on the network is not an open model.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from worker_agent.endpoint_paths import (
    ROUTE_TASK_TYPES,
    EndpointPathError,
    EndpointTarget,
    parse_endpoint_target,
)
from worker_agent.logs import ids
from worker_agent.relay import (
    NO_BUFFERING,
    BodyTooLarge,
    problem,
    read_body,
    relay_response,
    send_json,
    until_client_disconnects,
)
from worker_agent.upstream import (
    Headers,
    UnsafeRequest,
    UpstreamClient,
    UpstreamError,
    end_to_end,
    header_value,
)

if TYPE_CHECKING:
    from worker_agent.agent import Agent, LocalReplica

log = logging.getLogger("inferencekey.agent")

GATEWAY_HEADER = b"x-inferencekey-gateway"
REPLICA_HEADER = b"x-inferencekey-replica"
# On a 502/503 from an agent, this tells the gateway that another replica may serve the request.
RETRYABLE = (b"x-inferencekey-retryable", b"1")
_NOT_FORWARDED = frozenset({b"authorization", GATEWAY_HEADER, REPLICA_HEADER})


def rewrite_model(body: bytes, content_type: bytes, model: str) -> bytes:
    """Put the engine's model name where the client put the workload slug (JSON bodies only)."""
    if not body or not content_type.startswith(b"application/json"):
        return body
    try:
        payload = json.loads(body)
    except ValueError:
        return body  # the engine will say what is wrong with it
    if not isinstance(payload, dict) or "model" not in payload or payload["model"] == model:
        return body
    payload["model"] = model
    return json.dumps(payload).encode()


def forwarded_headers(headers: Headers) -> Headers:
    return [(k, v) for k, v in end_to_end(headers) if k not in _NOT_FORWARDED]


LOGS_PATH = re.compile(r"/replicas/(rep_[A-Za-z0-9]{1,64})/logs\Z")
MAX_LOG_TAIL = 10_000


def log_query(query: bytes) -> tuple[int, bool]:
    """``tail`` (1 to 10,000 lines, default 100) and ``follow`` (0 or 1) of a logs request;
    ValueError names what is wrong. The Manager's route reads the same."""
    params = parse_qs(query.decode("latin-1"))
    raw_tail = params.get("tail", ["100"])[-1]
    if not raw_tail.isdigit() or not 1 <= int(raw_tail) <= MAX_LOG_TAIL:
        raise ValueError(f"tail must be a whole number from 1 to {MAX_LOG_TAIL}")
    raw_follow = params.get("follow", ["0"])[-1]
    if raw_follow not in ("0", "1", "true", "false"):
        raise ValueError("follow must be 0 or 1")
    return int(raw_tail), raw_follow in ("1", "true")


def _about(target: EndpointTarget, replica: LocalReplica) -> dict[str, object]:
    """A log line's ids for a request to one replica."""
    return ids(project=target.project, workload=target.workload, replica_id=replica.assignment.id)


class AgentProxy:
    """ASGI app serving the replicas of one agent."""

    def __init__(self, agent: Agent, client: UpstreamClient) -> None:
        self.agent = agent
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await send_json(send, 200, {"status": "ok", "worker_id": self.agent.worker_id})
            return
        headers: Headers = scope["headers"]
        presented = header_value(headers, GATEWAY_HEADER) or b""
        secret = self.agent.gateway_secret.encode()
        if not secret or not hmac.compare_digest(presented, secret):
            await send_json(
                send,
                401,
                problem(
                    "invalid_credentials",
                    "this agent serves only requests authorised by its Manager's gateway",
                ),
            )
            return
        logs = LOGS_PATH.match(scope["path"])
        if logs is not None:
            await self._logs(scope, receive, send, logs[1])
            return
        try:
            target = parse_endpoint_target(
                scope.get("raw_path") or scope["path"].encode(), scope.get("query_string", b"")
            )
        except EndpointPathError as error:
            await send_json(send, 404, problem("route_not_found", str(error)))
            return
        await self._serve(scope, receive, send, target, headers)

    async def _logs(self, scope: Scope, receive: Receive, send: Send, replica_id: str) -> None:
        """An engine's log: the last ``tail`` lines, then (``follow=1``) what it writes next."""
        if scope["method"] != "GET":
            await send_json(
                send, 405, problem("method_not_allowed", "use GET"), [(b"allow", b"GET")]
            )
            return
        try:
            tail, follow = log_query(scope.get("query_string", b""))
        except ValueError as error:
            await send_json(send, 400, problem("validation_error", str(error)))
            return
        runtime = self.agent.runtime
        if runtime is None or replica_id not in await asyncio.to_thread(runtime.running):
            message = f"replica {replica_id} runs no engine on this worker"
            await send_json(send, 404, problem("replica_not_found", message))
            return
        stream = await asyncio.to_thread(runtime.log_stream, replica_id, tail, follow)
        pieces = iter(stream)

        async def pump() -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), NO_BUFFERING],
                }
            )
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        try:
            await until_client_disconnects(receive, pump())
        finally:
            stream.close()

    def _pick(self, target: EndpointTarget, headers: Headers) -> LocalReplica | None:
        ready = [
            replica
            for replica in self.agent.replicas.values()
            if replica.state == "ready"
            and replica.assignment.workload_slug == target.workload
            and replica.assignment.project_slug == target.project
            and replica.assignment.task_type in ROUTE_TASK_TYPES[target.route]
        ]
        wanted = (header_value(headers, REPLICA_HEADER) or b"").decode()
        for replica in ready:
            if replica.assignment.id == wanted:
                return replica
        return min(ready, key=lambda r: r.outstanding, default=None)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        target: EndpointTarget,
        headers: Headers,
    ) -> None:
        replica = self._pick(target, headers)
        if replica is None:
            message = (
                f"no ready replica of {target.project}/{target.workload} serving "
                f"{target.route} on this worker"
            )
            await send_json(send, 503, problem("no_ready_replica", message), [RETRYABLE])
            return
        config = self.agent.config
        try:
            body = await read_body(receive, config.max_request_bytes)
        except BodyTooLarge as error:
            await send_json(send, 413, problem("body_too_large", str(error)))
            return
        content_type = header_value(headers, b"content-type") or b""
        body = rewrite_model(body, content_type, replica.served_model)
        tag = [(REPLICA_HEADER, replica.assignment.id.encode())]

        async def exchange() -> None:
            try:
                response = await self.client.request(
                    "127.0.0.1",
                    replica.port,
                    scope["method"],
                    target.upstream_target(with_prefix=False),
                    forwarded_headers(headers),
                    body,
                    first_byte_timeout=config.engine_first_byte_timeout_s,
                    idle_timeout=config.engine_idle_timeout_s,
                )
            except UnsafeRequest as error:
                await send_json(send, 400, problem("invalid_header", str(error)))
                return
            except UpstreamError as error:
                log.warning(
                    "replica %s unreachable: %s",
                    replica.assignment.id,
                    error,
                    extra=_about(target, replica),
                )
                await send_json(
                    send, 502, problem("engine_unreachable", str(error)), [RETRYABLE, *tag]
                )
                return
            await relay_response(response, send, tag)

        replica.outstanding += 1
        started = time.perf_counter()
        try:
            await until_client_disconnects(receive, exchange())
        except UpstreamError as error:
            # Headers were sent already; all we can do is end the response early.
            log.warning(
                "stream from %s broke off: %s",
                replica.assignment.id,
                error,
                extra=_about(target, replica),
            )
        finally:
            replica.outstanding -= 1
            self.agent.metrics.proxy_duration.labels(target.project, target.workload).observe(
                time.perf_counter() - started
            )
