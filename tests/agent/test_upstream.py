"""The pooled upstream client, against tiny HTTP/1.1 servers scripted byte by byte on 127.0.0.1.

Reuse, or the lack of it, is counted on the server's side: connections accepted, requests read.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from ik_contracts import upstream
from ik_contracts.upstream import UpstreamClient, UpstreamError, UpstreamResponse, end_to_end
from tests.agent.scripted_http import (
    CHUNKED_HEAD,
    LAST_CHUNK,
    Peer,
    ScriptedServer,
    Serve,
    answer_every_request,
    chunk,
    ok,
)


async def get(
    client: UpstreamClient, server: ScriptedServer, **timeouts: float
) -> UpstreamResponse:
    return await client.request("127.0.0.1", server.port, "GET", "/", [], b"", **timeouts)


async def next_piece(pieces: AsyncIterator[bytes]) -> bytes:
    """The next piece of a body; fails instead of hanging if it does not come."""
    return await asyncio.wait_for(anext(pieces), 2.0)


async def test_the_request_carries_method_target_host_headers_and_body(
    serve: Serve, client: UpstreamClient
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
    serve: Serve, client: UpstreamClient, response: bytes
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
    serve: Serve, client: UpstreamClient
) -> None:
    closed_by_client = asyncio.Semaphore(0)

    async def says_close_but_stays_open(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(ok(b"bye", b"connection: close"))
        closed_by_client.release()

    server = await serve(says_close_but_stays_open)
    for _ in range(3):
        assert await (await get(client, server)).read() == b"bye"
    assert server.accepted == 3
    for _ in range(3):
        await asyncio.wait_for(closed_by_client.acquire(), 2.0)


@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.1"])
async def test_a_response_without_length_is_read_to_the_close(
    serve: Serve, client: UpstreamClient, version: bytes
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


async def test_a_head_response_ends_with_its_headers_despite_its_content_length(
    serve: Serve, client: UpstreamClient
) -> None:
    async def announces_a_length(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")

    server = await serve(announces_a_length)
    for _ in range(2):
        response = await client.request("127.0.0.1", server.port, "HEAD", "/", [], b"")
        assert await asyncio.wait_for(response.read(), 2.0) == b""
        assert response.header(b"content-length") == b"1234"


async def test_interim_1xx_responses_are_skipped_for_the_final_one(
    serve: Serve, client: UpstreamClient
) -> None:
    # uvicorn and llama.cpp answer a forwarded `Expect: 100-continue` (curl sends it for uploads).
    async def continue_then_answer(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            await asyncio.sleep(0.05)  # the client has read the 100 before the rest comes
            await peer.send(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n")
            await peer.send(ok(b"transcribed", b"x-request-id: r1"))

    server = await serve(continue_then_answer)
    for _ in range(2):
        response = await client.request(
            "127.0.0.1", server.port, "POST", "/", [(b"expect", b"100-continue")], b"audio"
        )
        assert response.status == 200
        assert response.headers == [(b"content-length", b"11"), (b"x-request-id", b"r1")]
        assert await response.read() == b"transcribed"
    assert server.accepted == 1


async def test_the_next_request_after_the_upstream_closed_an_idle_connection_succeeds(
    serve: Serve, client: UpstreamClient
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
    serve: Serve, client: UpstreamClient
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
    serve: Serve, client: UpstreamClient
) -> None:
    async def closes_without_answering(peer: Peer) -> None:
        await peer.request()

    server = await serve(closes_without_answering)
    with pytest.raises(UpstreamError, match="closed the connection") as failure:
        await get(client, server)
    assert failure.value.before_response
    assert server.accepted == 1


async def test_a_retry_that_fails_too_is_not_retried_again(
    serve: Serve, client: UpstreamClient
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
    serve: Serve, client: UpstreamClient
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
    assert not failure.value.request_sent  # safe to try another upstream
    assert time.monotonic() - started < 1.0


async def test_a_garbled_response_is_an_error_before_the_response(
    serve: Serve, client: UpstreamClient
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
    serve: Serve, client: UpstreamClient
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
    assert failure.value.request_sent  # it may be running there: not to be sent again
    await asyncio.wait_for(dropped.wait(), 1.0)
    assert await (await get(client, server)).read() == b"ok"
    assert server.accepted == 2


async def test_the_idle_timeout_between_chunks_is_an_error_after_the_response_began(
    serve: Serve, client: UpstreamClient
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
    serve: Serve, client: UpstreamClient
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
    serve: Serve, client: UpstreamClient
) -> None:
    received = [asyncio.Event(), asyncio.Event()]

    async def each_chunk_only_after_the_last_was_received(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"data: one\n\n"))
        await received[0].wait()
        await peer.send(chunk(b"data: two\n\n"))
        await received[1].wait()
        await peer.send(LAST_CHUNK)

    server = await serve(each_chunk_only_after_the_last_was_received)
    response = await get(client, server)
    pieces = response.chunks()
    assert await next_piece(pieces) == b"data: one\n\n"
    received[0].set()
    assert await next_piece(pieces) == b"data: two\n\n"
    received[1].set()
    with pytest.raises(StopAsyncIteration):
        await next_piece(pieces)


async def test_closing_a_response_mid_stream_closes_the_upstream_connection_promptly(
    serve: Serve, client: UpstreamClient
) -> None:
    gone = asyncio.Event()

    async def streams_until_the_client_goes(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"token"))
        await peer.client_gone()
        gone.set()

    server = await serve(streams_until_the_client_goes)
    response = await get(client, server)
    assert await next_piece(response.chunks()) == b"token"
    response.close()
    await asyncio.wait_for(gone.wait(), 1.0)


async def test_a_slow_reader_pauses_the_upstream_instead_of_buffering_the_body(
    serve: Serve, client: UpstreamClient
) -> None:
    size = 128 * 1024 * 1024  # more than the socket buffers and the client's queue together
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
    received = len(await next_piece(pieces))
    connection = response._connection
    async with asyncio.timeout(5):  # the consumer reads nothing meanwhile
        while not connection._paused:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert len(connection._chunks) <= upstream._HIGH_WATER + 1
    assert not sent_all.is_set()
    async with asyncio.timeout(10):
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
    serve: Serve, client: UpstreamClient
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
    serve: Serve,
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


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/v1/models HTTP/1.1\r\nhost: x\r\n\r\nPOST /other", []),
        ("GET", "/v1/models\n", []),
        ("GET", "/v1/models ", []),
        ("GET", "/v1/m\x00dels", []),
        ("GET", "/v1/modèls", []),
        ("GET", "v1/models", []),
        ("GET /x HTTP/1.1\r\n", "/", []),
        ("GET", "/", [(b"x-a\r\nx-b", b"1")]),
        ("GET", "/", [(b"x a", b"1")]),
        ("GET", "/", [(b"x-a", b"1\r\ncontent-length: 0")]),
        ("GET", "/", [(b"x-a", b"1\n")]),
        ("GET", "/", [(b"x-a", b"1\x00")]),
        ("GET", "/", [(b"x-a", b"caf\xc3\xa9")]),
    ],
)
async def test_a_head_that_could_split_into_two_requests_is_refused_before_connecting(
    serve: Serve, client: UpstreamClient, method: str, target: str, headers: upstream.Headers
) -> None:
    server = await serve(answer_every_request)

    with pytest.raises(upstream.UnsafeRequest):
        await client.request("127.0.0.1", server.port, method, target, headers, b"")
    await asyncio.sleep(0.05)
    assert server.accepted == 0


async def test_a_second_unasked_response_poisons_the_connection_it_came_on(
    serve: Serve, client: UpstreamClient
) -> None:
    # What a smuggled request would cause: two answers to one request. The second must never be
    # read as the answer to the next request.
    async def answers_twice_then_honestly(peer: Peer) -> None:
        if peer.server.accepted == 1:
            await peer.request()
            await peer.send(ok(b"mine") + ok(b"someone else's"))
        while await peer.request() is not None:
            await peer.send(ok(b"fresh"))

    server = await serve(answers_twice_then_honestly)
    assert await (await get(client, server)).read() == b"mine"
    assert await (await get(client, server)).read() == b"fresh"
    assert server.accepted == 2


async def test_bytes_arriving_on_an_idle_connection_poison_it(
    serve: Serve, client: UpstreamClient
) -> None:
    async def speaks_out_of_turn(peer: Peer) -> None:
        if peer.server.accepted == 1:
            await peer.request()
            await peer.send(ok(b"mine"))
            await asyncio.sleep(0.05)
            await peer.send(ok(b"someone else's"))
        while await peer.request() is not None:
            await peer.send(ok(b"fresh"))

    server = await serve(speaks_out_of_turn)
    assert await (await get(client, server)).read() == b"mine"
    await asyncio.sleep(0.2)
    assert await (await get(client, server)).read() == b"fresh"
    assert server.accepted == 2
