"""The pooled upstream client, against tiny HTTP/1.1 servers scripted byte by byte on 127.0.0.1.

Each server counts the connections it accepted and the requests it read, so reuse (or the lack of
it) is seen from the upstream's side, as an engine would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from worker_agent import upstream
from worker_agent.upstream import UpstreamClient, UpstreamError, UpstreamResponse, end_to_end

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def ok(body: bytes = b"ok", *headers: bytes) -> bytes:
    """A complete 200 response framed by content-length."""
    extra = b"".join(header + b"\r\n" for header in headers)
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Peer:
    """The server's side of one accepted connection."""

    def __init__(
        self, server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server, self.reader, self.writer = server, reader, writer

    async def request(self) -> bytes | None:
        """The next request, head and body; None once the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            body = await self.reader.readexactly(int(length[1]) if length else 0)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        self.server.requests.append(head + body)
        return head + body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def client_gone(self) -> None:
        """Return once the client closed or reset the connection."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass

    def close(self) -> None:
        self.writer.close()


Script = Callable[[Peer], Awaitable[None]]


class ScriptedServer:
    """Runs ``script`` for every connection it accepts."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.accepted = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._scripts: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        script = asyncio.ensure_future(self.script(Peer(self, reader, writer)))
        self._scripts.add(script)
        try:
            await script
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            self._scripts.discard(script)
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for script in list(self._scripts):
            script.cancel()
        await asyncio.gather(*self._scripts, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[ScriptedServer]]]:
    servers: list[ScriptedServer] = []

    async def start(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
def client() -> Iterator[UpstreamClient]:
    upstream_client = UpstreamClient()
    yield upstream_client
    upstream_client.close()


async def get(
    client: UpstreamClient, server: ScriptedServer, **timeouts: float
) -> UpstreamResponse:
    return await client.request("127.0.0.1", server.port, "GET", "/", [], b"", **timeouts)


async def answer_every_request(peer: Peer) -> None:
    while await peer.request() is not None:
        await peer.send(ok())


async def test_the_request_carries_method_target_host_headers_and_body(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    async def echo(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(ok(request))

    server = await serve(echo)
    response = await client.request(
        "127.0.0.1", server.port, "POST", "/v1/embeddings?x=1", [(b"x-trace", b"abc")], b"hello"
    )
    seen = await response.read()
    assert response.status == 200
    assert seen.startswith(b"POST /v1/embeddings?x=1 HTTP/1.1\r\n")
    assert b"host: 127.0.0.1:%d\r\n" % server.port in seen
    assert b"x-trace: abc\r\n" in seen
    assert seen.endswith(b"content-length: 5\r\n\r\nhello")


@pytest.mark.parametrize(
    "response",
    [ok(b"hello"), CHUNKED_HEAD + chunk(b"hel") + chunk(b"lo") + LAST_CHUNK],
    ids=["content-length", "chunked"],
)
async def test_sequential_requests_reuse_one_connection(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient, response: bytes
) -> None:
    async def keep_alive(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(response)

    server = await serve(keep_alive)
    for _ in range(5):
        assert await (await get(client, server)).read() == b"hello"
    assert len(server.requests) == 5
    assert server.accepted == 1


async def test_a_connection_close_response_is_not_reused(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    closed_by_client = 0

    async def says_close_but_stays_open(peer: Peer) -> None:
        nonlocal closed_by_client
        while await peer.request() is not None:
            await peer.send(ok(b"bye", b"connection: close"))
        closed_by_client += 1

    server = await serve(says_close_but_stays_open)
    for _ in range(3):
        assert await (await get(client, server)).read() == b"bye"
    assert server.accepted == 3
    await asyncio.sleep(0.05)
    assert closed_by_client == 3


@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.1"])
async def test_a_response_without_length_is_read_to_the_close(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient, version: bytes
) -> None:
    async def body_until_close(peer: Peer) -> None:
        await peer.request()
        await peer.send(version + b" 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst ")
        await asyncio.sleep(0.05)
        await peer.send(b"second")
        peer.close()

    server = await serve(body_until_close)
    for _ in range(2):
        assert await (await get(client, server)).read() == b"first second"
    assert server.accepted == 2


async def test_the_next_request_after_the_upstream_closed_an_idle_connection_succeeds(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    async def closes_when_idle(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok())
        await asyncio.sleep(0.05)

    server = await serve(closes_when_idle)
    assert await (await get(client, server)).read() == b"ok"
    await asyncio.sleep(0.2)
    assert await (await get(client, server)).read() == b"ok"
    assert server.accepted == 2


async def test_a_kept_alive_connection_closed_before_any_response_byte_is_retried_on_a_new_one(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    # The race the retry is for: the upstream closes an idle connection as a request arrives.
    async def first_connection_closes_on_its_second_request(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok())
        if server.accepted == 1:
            await peer.request()
            return
        await answer_every_request(peer)

    server = await serve(first_connection_closes_on_its_second_request)
    assert await (await get(client, server)).read() == b"ok"
    assert await (await get(client, server)).read() == b"ok"
    assert server.accepted == 2
    assert len(server.requests) == 3


async def test_a_failure_on_a_new_connection_is_not_retried(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    async def closes_without_answering(peer: Peer) -> None:
        await peer.request()

    server = await serve(closes_without_answering)
    with pytest.raises(UpstreamError, match="closed the connection") as failure:
        await get(client, server)
    assert failure.value.before_response
    assert server.accepted == 1


async def test_a_retry_that_fails_too_is_not_retried_again(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    async def answers_only_the_first_request(peer: Peer) -> None:
        await peer.request()
        if len(server.requests) == 1:
            await peer.send(ok())
            await peer.request()

    server = await serve(answers_only_the_first_request)
    assert await (await get(client, server)).read() == b"ok"
    with pytest.raises(UpstreamError) as failure:
        await get(client, server)
    assert failure.value.before_response
    assert server.accepted == 2
    assert len(server.requests) == 3


async def test_a_kept_alive_connection_that_began_answering_is_not_retried(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    # The upstream got the request and started on it: sending it again could run it twice.
    async def dies_mid_status_line_on_the_second_request(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok())
        await peer.request()
        await peer.send(b"HTTP/1.1 200 O")

    server = await serve(dies_mid_status_line_on_the_second_request)
    assert await (await get(client, server)).read() == b"ok"
    with pytest.raises(UpstreamError) as failure:
        await get(client, server)
    assert failure.value.before_response
    assert server.accepted == 1
    assert len(server.requests) == 2


async def test_connection_refused_fails_fast_before_the_response(client: UpstreamClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UpstreamError, match=f"cannot connect to 127.0.0.1:{port}") as failure:
        await client.request("127.0.0.1", port, "GET", "/", [], b"")
    assert failure.value.before_response
    assert time.monotonic() - started < 1.0


async def test_a_garbled_response_is_an_error_before_the_response(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    async def not_http(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await peer.client_gone()

    server = await serve(not_http)
    with pytest.raises(UpstreamError, match="bad response") as failure:
        await get(client, server)
    assert failure.value.before_response


async def test_the_first_byte_timeout_fails_the_request_and_drops_the_connection(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    dropped = asyncio.Event()

    async def silent_first_then_prompt(peer: Peer) -> None:
        await peer.request()
        if server.accepted == 1:
            await peer.client_gone()
            dropped.set()
            return
        await peer.send(ok())

    server = await serve(silent_first_then_prompt)
    with pytest.raises(UpstreamError, match=r"no response within 0\.2s") as failure:
        await get(client, server, first_byte_timeout=0.2)
    assert failure.value.before_response
    await asyncio.wait_for(dropped.wait(), 1.0)
    assert await (await get(client, server)).read() == b"ok"
    assert server.accepted == 2


async def test_the_idle_timeout_between_chunks_is_an_error_after_the_response_began(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    async def stalls_after_one_chunk(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"data: 1\n\n"))
        await peer.client_gone()

    server = await serve(stalls_after_one_chunk)
    response = await get(client, server, idle_timeout=0.2)
    received: list[bytes] = []
    with pytest.raises(UpstreamError, match=r"sent nothing for 0\.2s") as failure:
        async for piece in response.chunks():
            received.append(piece)
    assert received == [b"data: 1\n\n"]
    assert not failure.value.before_response


async def test_a_body_cut_short_is_an_error_after_the_response_began(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    async def promises_ten_sends_four(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfour")

    server = await serve(promises_ten_sends_four)
    response = await get(client, server)
    with pytest.raises(UpstreamError, match="broke off") as failure:
        await response.read()
    assert not failure.value.before_response


async def test_a_chunked_body_is_decoded_and_delivered_as_each_chunk_arrives(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    first_received = asyncio.Event()

    async def second_chunk_only_after_the_first_was_received(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"data: one\n\n"))
        await first_received.wait()
        await peer.send(chunk(b"data: two\n\n") + LAST_CHUNK)

    server = await serve(second_chunk_only_after_the_first_was_received)
    response = await get(client, server)
    pieces = response.chunks()
    assert await asyncio.wait_for(anext(pieces), 2.0) == b"data: one\n\n"
    first_received.set()
    assert await asyncio.wait_for(anext(pieces), 2.0) == b"data: two\n\n"
    with pytest.raises(StopAsyncIteration):
        await anext(pieces)


async def test_closing_a_response_mid_stream_closes_the_upstream_connection_promptly(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    gone = asyncio.Event()

    async def streams_until_the_client_goes(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"token"))
        await peer.client_gone()
        gone.set()

    server = await serve(streams_until_the_client_goes)
    response = await get(client, server)
    assert await anext(response.chunks()) == b"token"
    response.close()
    await asyncio.wait_for(gone.wait(), 1.0)


async def test_a_slow_reader_pauses_the_upstream_instead_of_buffering_the_body(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    size = 64 * 1024 * 1024  # more than the socket buffers and the client's queue together
    sent_all = asyncio.Event()

    async def large_body(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            await peer.send(piece)
        sent_all.set()

    server = await serve(large_body)
    response = await get(client, server)
    pieces = response.chunks()
    received = len(await anext(pieces))
    await asyncio.sleep(0.5)  # the consumer reads nothing meanwhile
    queued = response._connection._chunks
    assert len(queued) <= upstream._HIGH_WATER + 1
    assert not sent_all.is_set()
    async for piece in pieces:
        received += len(piece)
    assert received == size
    assert sent_all.is_set()


def test_end_to_end_drops_hop_by_hop_and_framing_headers() -> None:
    headers = [
        (b"content-type", b"text/event-stream"),
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"12"),
        (b"te", b"trailers"),
        (b"trailer", b"x-checksum"),
        (b"upgrade", b"h2c"),
        (b"proxy-authenticate", b"Basic"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"host", b"engine:8000"),
        (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
        (b"server", b"uvicorn"),
        (b"x-accel-buffering", b"yes"),
        (b"x-request-id", b"r1"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    assert end_to_end(headers) == [
        (b"content-type", b"text/event-stream"),
        (b"x-request-id", b"r1"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]


async def test_concurrent_requests_each_get_a_connection_then_share_the_pool(
    serve: Callable[[Script], Awaitable[ScriptedServer]], client: UpstreamClient
) -> None:
    async def slow_echo_of_the_target(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await asyncio.sleep(0.1)
            await peer.send(ok(request.split(b" ")[1]))

    server = await serve(slow_echo_of_the_target)

    async def fetch(number: int) -> bytes:
        target = f"/{number}"
        response = await client.request("127.0.0.1", server.port, "GET", target, [], b"")
        return await response.read()

    for _ in range(2):
        bodies = await asyncio.gather(*(fetch(number) for number in range(10)))
        assert bodies == [f"/{number}".encode() for number in range(10)]
    assert server.accepted == 10
    assert len(server.requests) == 20


async def test_closing_the_client_closes_its_idle_connections(
    serve: Callable[[Script], Awaitable[ScriptedServer]],
) -> None:
    gone = asyncio.Event()

    async def answers_then_waits(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok())
        await peer.client_gone()
        gone.set()

    server = await serve(answers_then_waits)
    own_client = UpstreamClient()
    assert await (await get(own_client, server)).read() == b"ok"
    own_client.close()
    await asyncio.wait_for(gone.wait(), 1.0)
