"""The agent's endpoint proxy: `/endpoint/{project}/{workload}/...` to a local engine.

Only requests the Manager authorised get through: they carry the worker's gateway credential
(`X-InferenceKey-Gateway`), which the Manager hands this agent over its heartbeat. So an agent
port reachable on the network is not an open model.

A custom backend's runtime speaks `/process` and `/forecast`, not OpenAI: its requests and answers
are mapped by ik_contracts/bridging.py, and its answers are read whole (a backend answers whole).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from ik_contracts.bridging import (
    MAX_BACKEND_ANSWER_BYTES,
    MODELS_ROUTE,
    BridgedAnswer,
    BridgeError,
    bridge_answer,
    bridge_request,
    models_answer,
)
from ik_contracts.endpoint_paths import (
    ROUTE_TASK_TYPES,
    EndpointPathError,
    EndpointTarget,
    parse_endpoint_target,
)
from ik_contracts.errors import problem
from ik_contracts.forwarding import (
    GATEWAY_HEADER,
    REPLICA_HEADER,
    RETRYABLE,
    forwarded_headers,
    log_query,
)
from ik_contracts.logs import ids
from ik_contracts.protocol import ReplicaState
from ik_contracts.relay import (
    NO_BUFFERING,
    BodyTooLarge,
    read_body,
    relay_response,
    send_json,
    until_client_disconnects,
)
from ik_contracts.upstream import (
    Headers,
    UnsafeRequest,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    header_value,
)
from worker_agent.config import AgentConfig
from worker_agent.metrics import AgentMetrics
from worker_agent.replicas import LocalReplica
from worker_agent.runtimes.base import Runtime

log = logging.getLogger("inferencekey.agent")


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


LOGS_PATH = re.compile(r"/replicas/(rep_[A-Za-z0-9]{1,64})/logs\Z")


def _about(target: EndpointTarget, replica: LocalReplica) -> dict[str, object]:
    """A log line's ids for a request to one replica."""
    return ids(project=target.project, workload=target.workload, replica_id=replica.assignment.id)


class ServedHost(Protocol):
    """What the proxy reads of its agent (which satisfies it); the proxy changes none of it."""

    @property
    def worker_id(self) -> str | None: ...
    @property
    def gateway_secret(self) -> str: ...
    @property
    def config(self) -> AgentConfig: ...
    @property
    def runtime(self) -> Runtime | None: ...
    @property
    def replicas(self) -> Mapping[str, LocalReplica]: ...
    @property
    def metrics(self) -> AgentMetrics: ...


class AgentProxy:
    """ASGI app serving the replicas of one agent."""

    def __init__(self, agent: ServedHost, client: UpstreamClient) -> None:
        self.agent = agent
        self.client = client
        # Requests relayed to each replica now, for least-outstanding picking.
        self.outstanding: Counter[str] = Counter()

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
            if replica.state == ReplicaState.READY
            and replica.assignment.workload_slug == target.workload
            and replica.assignment.project_slug == target.project
            and replica.assignment.task_type in ROUTE_TASK_TYPES[target.route]
        ]
        wanted = (header_value(headers, REPLICA_HEADER) or b"").decode()
        for replica in ready:
            if replica.assignment.id == wanted:
                return replica
        return min(ready, key=lambda r: self.outstanding[r.assignment.id], default=None)

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
        tag = [(REPLICA_HEADER, replica.assignment.id.encode())]
        if replica.assignment.custom_backend is not None:
            await self._relayed(
                receive,
                target,
                replica,
                self._bridged(scope, send, target, replica, body, content_type, tag),
            )
            return
        body = rewrite_model(body, content_type, replica.served_model)

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

        await self._relayed(receive, target, replica, exchange())

    async def _relayed(
        self,
        receive: Receive,
        target: EndpointTarget,
        replica: LocalReplica,
        exchange: Coroutine[Any, Any, None],
    ) -> None:
        """Run one exchange with a replica, counted as outstanding on it and timed."""
        self.outstanding[replica.assignment.id] += 1
        started = time.perf_counter()
        try:
            await until_client_disconnects(receive, exchange)
        except UpstreamError as error:
            # Headers were sent already; all we can do is end the response early.
            log.warning(
                "stream from %s broke off: %s",
                replica.assignment.id,
                error,
                extra=_about(target, replica),
            )
        finally:
            self.outstanding[replica.assignment.id] -= 1
            if not self.outstanding[replica.assignment.id]:
                del self.outstanding[replica.assignment.id]
            self.agent.metrics.proxy_duration.labels(target.project, target.workload).observe(
                time.perf_counter() - started
            )

    async def _bridged(
        self,
        scope: Scope,
        send: Send,
        target: EndpointTarget,
        replica: LocalReplica,
        body: bytes,
        content_type: bytes,
        tag: Headers,
    ) -> None:
        """One public request to a custom backend: mapped to /process (or /forecast), the
        answer read whole and mapped back (ik_contracts/bridging.py)."""
        model = replica.served_model or target.workload
        if target.route == MODELS_ROUTE:
            await _send_answer(send, models_answer(model), tag)
            return
        try:
            call = await bridge_request(
                target.route, scope["method"], body, content_type.decode("latin-1")
            )
        except BridgeError as error:
            await _send_answer(send, error.answer(), tag)
            return
        config = self.agent.config
        try:
            response = await self.client.request(
                "127.0.0.1",
                replica.port,
                "POST",
                call.path,
                [(b"content-type", b"application/json")],
                call.body,
                first_byte_timeout=config.engine_first_byte_timeout_s,
                idle_timeout=config.engine_idle_timeout_s,
            )
            answer = await _read_whole(response, MAX_BACKEND_ANSWER_BYTES)
        except UpstreamError as error:
            log.warning(
                "replica %s unreachable: %s",
                replica.assignment.id,
                error,
                extra=_about(target, replica),
            )
            await send_json(send, 502, problem("engine_unreachable", str(error)), [RETRYABLE, *tag])
            return
        except BridgeError as error:
            await _send_answer(send, error.answer(), tag)
            return
        await _send_answer(
            send, await bridge_answer(call, response.status, answer, model=model), tag
        )


async def _read_whole(response: UpstreamResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.chunks():
            size += len(chunk)
            if size > limit:
                raise BridgeError(
                    502, "backend_error", f"the custom backend answered more than {limit} bytes"
                )
            chunks.append(chunk)
    finally:
        response.close()
    return b"".join(chunks)


async def _send_answer(send: Send, answer: BridgedAnswer, extra: Headers) -> None:
    headers: Headers = [
        (b"content-type", answer.content_type.encode("latin-1")),
        (b"content-length", str(len(answer.body)).encode()),
    ]
    headers.extend((name.encode(), value.encode()) for name, value in answer.extra.items())
    if answer.retryable:
        headers.append(RETRYABLE)
    headers.extend(extra)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
