"""Relaying through an ASGI server, the agent's endpoint proxy, and the gateway's route rules.

The relay runs in a real uvicorn on 127.0.0.1 in front of a scripted upstream, as the gateway and
the agent proxy run in front of agents and engines.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from inferencekey.enums import TaskType
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ik_contracts.engines import engine_for
from ik_contracts.protocol import Assignments, ReplicaAssignment
from ik_contracts.relay import BodyTooLarge, read_body, relay_response, until_client_disconnects
from ik_contracts.upstream import UpstreamClient
from manager.gateway.routes import ROUTE_TASK_TYPES, ReplicaTarget, WorkloadRoute, route_problem
from tests.agent.scripted_http import (
    CHUNKED_HEAD,
    LAST_CHUNK,
    Peer,
    Serve,
    answer_every_request,
    chunk,
    ok,
)
from worker_agent.agent import Agent
from worker_agent.config import AgentConfig
from worker_agent.gpus import NoGpuInventory
from worker_agent.proxy import AgentProxy, rewrite_model
from worker_agent.replicas import LocalReplica

JSON = b"application/json"

# --- rewrite_model: the agent puts the engine's model name where the client put the slug ---


def test_the_model_in_a_json_body_becomes_the_engines_model() -> None:
    body = json.dumps({"model": "chat", "messages": [], "stream": True}).encode()
    rewritten = rewrite_model(body, b"application/json; charset=utf-8", "gemma-3-270m")
    assert json.loads(rewritten) == {"model": "gemma-3-270m", "messages": [], "stream": True}


def test_a_json_body_without_a_model_is_passed_unchanged() -> None:
    body = b'{"input": ["a", "b"]}'
    assert rewrite_model(body, JSON, "gemma") is body


def test_a_body_that_is_not_json_is_passed_unchanged() -> None:
    body = b'--boundary\r\ncontent-disposition: form-data; name="model"\r\n\r\nchat\r\n'
    assert rewrite_model(body, b"multipart/form-data; boundary=boundary", "gemma") is body


def test_invalid_json_is_passed_unchanged_for_the_engine_to_refuse() -> None:
    body = b'{"model": "chat",'
    assert rewrite_model(body, JSON, "gemma") is body


def test_a_body_already_naming_the_engines_model_is_not_reencoded() -> None:
    body = b'{"model":"gemma",  "messages":[]}'
    assert rewrite_model(body, JSON, "gemma") is body


# --- read_body ---


def receiving(*parts: bytes) -> Receive:
    """An ASGI receive that delivers the request body in ``parts``."""
    messages = [
        {"type": "http.request", "body": part, "more_body": number < len(parts) - 1}
        for number, part in enumerate(parts)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return receive


async def test_read_body_joins_the_parts_of_the_request_body() -> None:
    assert await read_body(receiving(b"abc", b"", b"def"), limit=6) == b"abcdef"


async def test_read_body_over_the_limit_raises_body_too_large() -> None:
    with pytest.raises(BodyTooLarge, match="larger than 6 bytes"):
        await read_body(receiving(b"abcd", b"efg"), limit=6)


# --- until_client_disconnects and relay_response, in a real uvicorn ---


class Relay:
    """An ASGI app relaying every request to an upstream, as the gateway and the agent do."""

    def __init__(self, client: UpstreamClient, upstream_port: int) -> None:
        self.client = client
        self.upstream_port = upstream_port
        self.exchanges: list[str] = []  # how each exchange ended: completed or cancelled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"

        async def exchange() -> None:
            try:
                response = await self.client.request(
                    "127.0.0.1", self.upstream_port, scope["method"], scope["path"], [], b""
                )
                await relay_response(response, send, [(b"x-relayed-by", b"test")])
            except asyncio.CancelledError:
                self.exchanges.append("cancelled")
                raise
            self.exchanges.append("completed")

        await until_client_disconnects(receive, exchange())


@pytest.fixture
async def run_asgi() -> AsyncIterator[Callable[[ASGIApp], Awaitable[str]]]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: ASGIApp) -> str:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            app, lifespan="off", log_level="warning", timeout_graceful_shutdown=2
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[listener]))
        servers.append((server, task))
        while not server.started:
            await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for server, task in servers:
        server.should_exit = True
        await task


async def request_then_leave(url: str, *, after: bytes | None) -> None:
    """Send a request to the relay and disconnect, once ``after`` was received if given."""
    reader, writer = await asyncio.open_connection("127.0.0.1", httpx.URL(url).port)
    writer.write(b"GET /v1/chat/completions HTTP/1.1\r\nhost: relay\r\n\r\n")
    if after is not None:
        await asyncio.wait_for(reader.readuntil(after), 2.0)
    else:
        await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()


async def test_a_client_that_disconnects_mid_stream_cancels_the_upstream_exchange(
    serve: Serve, client: UpstreamClient, run_asgi: Callable[[ASGIApp], Awaitable[str]]
) -> None:
    gone = asyncio.Event()

    async def endless_stream(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD)
        sending = asyncio.ensure_future(send_forever(peer))
        await peer.client_gone()
        sending.cancel()
        gone.set()

    async def send_forever(peer: Peer) -> None:
        for number in range(10_000):
            await peer.send(chunk(b"data: %d\n\n" % number))
            await asyncio.sleep(0.02)

    engine = await serve(endless_stream)
    relay = Relay(client, engine.port)
    await request_then_leave(await run_asgi(relay), after=b"data: 0")
    await asyncio.wait_for(gone.wait(), 2.0)
    assert relay.exchanges == ["cancelled"]


async def test_a_client_that_disconnects_before_the_first_byte_cancels_the_exchange(
    serve: Serve, client: UpstreamClient, run_asgi: Callable[[ASGIApp], Awaitable[str]]
) -> None:
    gone = asyncio.Event()

    async def thinks_for_ever(peer: Peer) -> None:
        await peer.request()
        await peer.client_gone()
        gone.set()

    engine = await serve(thinks_for_ever)
    relay = Relay(client, engine.port)
    await request_then_leave(await run_asgi(relay), after=None)
    await asyncio.wait_for(gone.wait(), 2.0)
    assert relay.exchanges == ["cancelled"]


async def test_a_client_that_stays_gets_the_whole_stream_as_it_is_sent(
    serve: Serve, client: UpstreamClient, run_asgi: Callable[[ASGIApp], Awaitable[str]]
) -> None:
    received = [asyncio.Event() for _ in range(3)]

    async def each_event_after_the_last_was_received(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD)
        for number, event in enumerate(received):
            await peer.send(chunk(b"data: %d\n\n" % number))
            await event.wait()
        await peer.send(chunk(b"data: [DONE]\n\n") + LAST_CHUNK)

    engine = await serve(each_event_after_the_last_was_received)
    relay = Relay(client, engine.port)
    url = await run_asgi(relay)
    lines: list[str] = []
    async with (
        httpx.AsyncClient(base_url=url) as http,
        http.stream("GET", "/v1/chat/completions") as response,
    ):
        assert response.headers["x-accel-buffering"] == "no"
        async for line in response.aiter_lines():
            if line:
                lines.append(line)
                if len(lines) <= len(received):
                    received[len(lines) - 1].set()
    assert lines == ["data: 0", "data: 1", "data: 2", "data: [DONE]"]
    assert relay.exchanges == ["completed"]


async def test_the_upstream_status_headers_and_length_are_relayed(
    serve: Serve, client: UpstreamClient, run_asgi: Callable[[ASGIApp], Awaitable[str]]
) -> None:
    async def not_found(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            ok(
                b'{"error": "no such model"}',
                b"content-type: application/json",
                b"x-request-id: r1",
                b"server: engine",
                b"x-accel-buffering: yes",
            ).replace(b"200 OK", b"404 Not Found")
        )

    engine = await serve(not_found)
    async with httpx.AsyncClient(base_url=await run_asgi(Relay(client, engine.port))) as http:
        response = await http.get("/v1/models")
    assert response.status_code == 404
    assert response.json() == {"error": "no such model"}
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["x-request-id"] == "r1"
    assert response.headers["x-relayed-by"] == "test"
    assert response.headers.get_list("x-accel-buffering") == ["no"]
    assert response.headers["server"] != "engine"


async def test_a_relay_cancelled_while_the_client_is_slow_closes_the_upstream_at_once(
    serve: Serve, client: UpstreamClient
) -> None:
    gone = asyncio.Event()

    async def streams_until_the_client_goes(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"data: 0\n\n"))
        await peer.client_gone()
        gone.set()

    engine = await serve(streams_until_the_client_goes)
    response = await client.request("127.0.0.1", engine.port, "GET", "/", [], b"")
    sending = asyncio.Event()

    async def client_that_never_takes_the_body(message: Message) -> None:
        if message["type"] == "http.response.body":
            sending.set()
            await asyncio.Event().wait()

    relaying = asyncio.ensure_future(relay_response(response, client_that_never_takes_the_body))
    await asyncio.wait_for(sending.wait(), 2.0)
    relaying.cancel()
    with pytest.raises(asyncio.CancelledError):
        await relaying
    await asyncio.wait_for(gone.wait(), 1.0)


# --- the agent's endpoint proxy ---

SECRET = "gateway-secret-0123456789"


def agent_with_replicas(*engine_ports: int, state: str = "ready") -> Agent:
    """An agent whose Manager handed it SECRET and replicas replica-1... of demo/chat."""
    agent = Agent(AgentConfig(manager_url="http://127.0.0.1:1", token="t"), NoGpuInventory())
    assignments = [
        ReplicaAssignment(
            id=f"replica-{number}",
            workload_id="workload-1",
            project_slug="demo",
            workload_slug="chat",
            generation=1,
            backend="llamacpp",
            task_type="text2text",
            model_name="gemma-3-270m",
        )
        for number in range(1, len(engine_ports) + 1)
    ]
    agent.desired = Assignments(
        worker_id="worker-1",
        version="1",
        heartbeat_interval_s=1.0,
        replicas=assignments,
        gateway_secret=SECRET,
    )
    for assignment, port in zip(assignments, engine_ports, strict=True):
        agent.replicas[assignment.id] = LocalReplica(
            assignment, engine_for("llamacpp"), port, state=state, served_model="gemma"
        )
    return agent


@pytest.fixture
async def proxied(
    client: UpstreamClient, run_asgi: Callable[[ASGIApp], Awaitable[str]]
) -> AsyncIterator[Callable[[Agent], Awaitable[httpx.AsyncClient]]]:
    https: list[httpx.AsyncClient] = []

    async def start(agent: Agent) -> httpx.AsyncClient:
        https.append(httpx.AsyncClient(base_url=await run_asgi(AgentProxy(agent, client))))
        return https[-1]

    yield start
    for http in https:
        await http.aclose()


@pytest.mark.parametrize("credential", [None, "", "x" * len(SECRET), SECRET + "x"])
async def test_the_proxy_refuses_requests_without_the_gateway_credential(
    serve: Serve, proxied: Callable[[Agent], Awaitable[httpx.AsyncClient]], credential: str | None
) -> None:
    engine = await serve(lambda peer: peer.send(ok()))
    http = await proxied(agent_with_replicas(engine.port))
    headers = {} if credential is None else {"x-inferencekey-gateway": credential}
    response = await http.post("/endpoint/demo/chat/v1/chat/completions", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_credentials"
    assert engine.accepted == 0


async def test_the_proxy_forwards_to_the_engine_with_its_model_and_without_credentials(
    serve: Serve, proxied: Callable[[Agent], Awaitable[httpx.AsyncClient]]
) -> None:
    async def echo(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(ok(request))

    engine = await serve(echo)
    http = await proxied(agent_with_replicas(engine.port))
    response = await http.post(
        "/endpoint/demo/chat/v1/chat/completions?trace=1",
        json={"model": "chat", "messages": []},
        headers={
            "x-inferencekey-gateway": SECRET,
            "x-inferencekey-replica": "replica-1",
            "authorization": "Bearer ik_live_x",
        },
    )
    assert response.status_code == 200
    assert response.headers["x-inferencekey-replica"] == "replica-1"
    head, body = response.content.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v1/chat/completions?trace=1 HTTP/1.1")
    assert b"x-inferencekey" not in head.lower()
    assert b"authorization" not in head.lower()
    assert json.loads(body) == {"model": "gemma", "messages": []}


async def test_the_proxy_serves_the_replica_the_gateway_named_else_the_least_busy(
    serve: Serve, client: UpstreamClient, run_asgi: Callable[[ASGIApp], Awaitable[str]]
) -> None:
    engines = [await serve(answer_every_request), await serve(answer_every_request)]
    proxy = AgentProxy(agent_with_replicas(*(engine.port for engine in engines)), client)
    proxy.outstanding["replica-1"] = 3
    http = httpx.AsyncClient(base_url=await run_asgi(proxy))
    path = "/endpoint/demo/chat/v1/chat/completions"
    named = {"x-inferencekey-gateway": SECRET, "x-inferencekey-replica": "replica-1"}
    assert (await http.post(path, headers=named)).headers["x-inferencekey-replica"] == "replica-1"
    unnamed = {"x-inferencekey-gateway": SECRET}
    assert (await http.post(path, headers=unnamed)).headers["x-inferencekey-replica"] == "replica-2"
    assert [engine.accepted for engine in engines] == [1, 1]
    await http.aclose()


async def test_no_ready_replica_is_a_retryable_503(
    serve: Serve, proxied: Callable[[Agent], Awaitable[httpx.AsyncClient]]
) -> None:
    engine = await serve(lambda peer: peer.send(ok()))
    http = await proxied(agent_with_replicas(engine.port, state="starting"))
    response = await http.post(
        "/endpoint/demo/chat/v1/chat/completions", headers={"x-inferencekey-gateway": SECRET}
    )
    assert response.status_code == 503
    assert response.json()["code"] == "no_ready_replica"
    assert response.headers["x-inferencekey-retryable"] == "1"
    assert engine.accepted == 0


async def test_an_unreachable_engine_is_a_retryable_502(
    proxied: Callable[[Agent], Awaitable[httpx.AsyncClient]],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    http = await proxied(agent_with_replicas(closed_port))
    response = await http.post(
        "/endpoint/demo/chat/v1/chat/completions", headers={"x-inferencekey-gateway": SECRET}
    )
    assert response.status_code == 502
    assert response.json()["code"] == "engine_unreachable"
    assert response.headers["x-inferencekey-retryable"] == "1"


async def test_an_engines_own_503_keeps_its_status_and_is_not_marked_retryable(
    serve: Serve, proxied: Callable[[Agent], Awaitable[httpx.AsyncClient]]
) -> None:
    async def overloaded(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b'{"error": "busy"}').replace(b"200 OK", b"503 Service Unavailable"))

    engine = await serve(overloaded)
    http = await proxied(agent_with_replicas(engine.port))
    response = await http.post(
        "/endpoint/demo/chat/v1/chat/completions", headers={"x-inferencekey-gateway": SECRET}
    )
    assert response.status_code == 503
    assert response.json() == {"error": "busy"}
    assert "x-inferencekey-retryable" not in response.headers


# --- the gateway's route rules ---

T = TaskType
# Which task types each data-plane route serves (contract sections 1c and 5).
SERVED_BY = {
    "v1/chat/completions": {T.TEXT2TEXT.value, T.OMNI.value},
    "v1/completions": {T.TEXT2TEXT.value},
    "v1/embeddings": {T.EMBEDDING.value},
    "v1/rerank": {T.RERANKER.value},
    "v1/images/generations": {T.TEXT2IMAGE.value},
    "v1/images/edits": {T.TEXT2IMAGE.value, T.IMAGE2IMAGE.value},
    "v1/images/variations": {T.TEXT2IMAGE.value, T.IMAGE2IMAGE.value},
    "v1/audio/speech": {T.TEXT2AUDIO.value},
    "v1/audio/generate": {T.TEXT2AUDIO.value},
    "v1/audio/voices": {T.TEXT2AUDIO.value},
    "v1/audio/transcriptions": {T.AUDIO2TEXT.value},
    "forecast": {T.FORECAST.value},
    # The engines' own routes of classification and reward jobs: served to jobs only, never as
    # a sync request (ik_contracts.endpoint_paths, manager.gateway.routes.ASYNC_ONLY).
    "classify": set(),
    "pooling": set(),
    # Listing the model is harmless and lets any client discover it, async-only or not.
    "v1/models": {t.value for t in TaskType},
}


def workload(task_type: str, *replicas: ReplicaTarget) -> WorkloadRoute:
    return WorkloadRoute(
        "w1", "p1", "demo", "chat", task_type, "running", None, replicas=list(replicas)
    )


def test_every_data_plane_route_has_its_task_types_written_down() -> None:
    assert set(ROUTE_TASK_TYPES) == set(SERVED_BY)


@pytest.mark.parametrize("route", sorted(SERVED_BY))
def test_a_route_is_served_by_exactly_its_task_types(route: str) -> None:
    serving = {t.value for t in TaskType if route_problem(route, workload(t.value)) is None}
    assert serving == SERVED_BY[route]


def test_a_wrong_route_names_the_task_types_that_serve_it_and_the_workloads() -> None:
    assert route_problem("v1/chat/completions", workload("embedding")) == (
        'v1/chat/completions is served by task type omni or text2text; workload "chat" is embedding'
    )


@pytest.mark.parametrize("task_type", [T.CLASSIFICATION.value, T.REWARD.value])
@pytest.mark.parametrize("route", ["v1/chat/completions", "v1/anything"])
def test_async_only_task_types_are_sent_to_jobs_on_every_inference_route(
    route: str, task_type: str
) -> None:
    problem = route_problem(route, workload(task_type))
    assert problem is not None
    assert "async jobs (POST .../jobs)" in problem


# --- WorkloadRoute.pick: least outstanding requests, ties at random ---


def replica(name: str, outstanding: int = 0, ejected_until: float = 0.0) -> ReplicaTarget:
    return ReplicaTarget(name, "worker", "127.0.0.1", 1, b"secret", outstanding, ejected_until)


def picks(
    route: WorkloadRoute, now: float = 100.0, exclude: frozenset[str] = frozenset()
) -> set[str | None]:
    chosen = (route.pick(now, set(exclude)) for _ in range(200))
    return {target.id if target else None for target in chosen}


def test_pick_takes_the_replica_with_fewest_outstanding_requests() -> None:
    route = workload("text2text", replica("a", 2), replica("b", 0), replica("c", 1))
    assert picks(route) == {"b"}


def test_pick_breaks_ties_at_random_among_the_least_loaded_only() -> None:
    route = workload("text2text", replica("a", 1), replica("b", 1), replica("c", 2))
    assert picks(route) == {"a", "b"}


def test_an_ejected_replica_is_skipped_until_its_time_passes() -> None:
    route = workload("text2text", replica("a", 0, ejected_until=105.0), replica("b", 3))
    assert picks(route, now=100.0) == {"b"}
    assert picks(route, now=105.0) == {"a"}


def test_pick_skips_excluded_replicas_and_gives_none_when_none_is_left() -> None:
    route = workload("text2text", replica("a", 0), replica("b", 5))
    assert picks(route, exclude=frozenset({"a"})) == {"b"}
    assert picks(route, exclude=frozenset({"a", "b"})) == {None}
    everything_ejected = workload("text2text", replica("a", 0, ejected_until=200.0))
    assert picks(everything_ejected) == {None}
