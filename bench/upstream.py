"""An OpenAI-compatible upstream that answers at once, so a benchmark measures the proxy, not it.

    python bench/upstream.py --port 18000 [--chunks 10] [--chunk-gap-ms 2]

Serves, on 127.0.0.1 only:

- ``POST /v1/chat/completions``: a small ``chat.completion``; with ``"stream": true`` in the body,
  an SSE stream of ``--chunks`` ``chat.completion.chunk`` events ``--chunk-gap-ms`` apart, then a
  usage-only chunk and ``data: [DONE]`` as llama.cpp ends a stream (chunked transfer encoding, so
  proxies must pass chunks through as they come);
- ``GET /v1/models`` and ``GET /health``.

It is a bare asyncio ``Protocol`` over ``httptools`` (uvloop when installed) with every response
built once at start: a framework would cost more CPU per request than the proxies under test.
HTTP/1.1 keep-alive and pipelining are honoured; a request that arrives while a stream is being
written waits for that stream to end, so responses leave in order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import deque
from dataclasses import dataclass
from typing import cast

import httptools

MODEL = "bench-model"
# Fixed id and timestamp: the body is built once, and no client here checks them.
COMPLETION_ID = "chatcmpl-bench"
CREATED = 1_700_000_000


def _http_response(status: str, content_type: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


def _json_response(status: str, payload: object) -> bytes:
    return _http_response(status, "application/json", json.dumps(payload).encode())


def _chunk_frame(data: bytes) -> bytes:
    """One piece of a chunked-encoded body: size in hex, CRLF, data, CRLF."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse_event(payload: object) -> bytes:
    return _chunk_frame(b"data: " + json.dumps(payload).encode() + b"\n\n")


def _stream_chunk(delta: dict[str, str], finish_reason: str | None) -> dict[str, object]:
    return {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


@dataclass(frozen=True)
class Responses:
    """Every byte the upstream sends, built once."""

    completion: bytes
    models: bytes
    health: bytes
    not_found: bytes
    bad_request: bytes
    stream_head: bytes
    stream_events: tuple[bytes, ...]
    stream_end: bytes

    @classmethod
    def build(cls, chunks: int) -> Responses:
        completion = {
            "id": COMPLETION_ID,
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
        }
        models = {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}],
        }
        # First event carries the role, the last one the finish reason, the ones between a token.
        events = [_stream_chunk({"role": "assistant", "content": ""}, None)]
        events += [_stream_chunk({"content": f"tok{i} "}, None) for i in range(1, chunks - 1)]
        events.append(_stream_chunk({}, "stop"))
        usage_chunk = {**_stream_chunk({}, None), "choices": [], "usage": completion["usage"]}
        return cls(
            completion=_json_response("200 OK", completion),
            models=_json_response("200 OK", models),
            health=_json_response("200 OK", {"status": "ok"}),
            not_found=_json_response("404 Not Found", {"error": "not_found"}),
            bad_request=_json_response("400 Bad Request", {"error": "bad_request"}),
            stream_head=(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            stream_events=tuple(_sse_event(event) for event in events),
            # As llama.cpp ends a stream: a usage-only chunk, then [DONE] (the gateway reads it).
            stream_end=_sse_event(usage_chunk) + _chunk_frame(b"data: [DONE]\n\n") + b"0\r\n\r\n",
        )


@dataclass(frozen=True)
class Request:
    method: bytes
    path: bytes
    body: bytes
    keep_alive: bool


def wants_stream(body: bytes) -> bool:
    # The cheap substring test keeps JSON parsing off the non-streamed hot path.
    if b'"stream"' not in body:
        return False
    try:
        return json.loads(body).get("stream") is True
    except (ValueError, AttributeError):
        return False


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer from `Responses`."""

    def __init__(self, responses: Responses, chunk_gap_s: float) -> None:
        self.responses = responses
        self.chunk_gap_s = chunk_gap_s
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body_parts: list[bytes] = []
        self.waiting: deque[Request] = deque()
        self.stream_task: asyncio.Task[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.send(self.responses.bad_request, keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream_task is not None:
            self.stream_task.cancel()
        self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body_parts = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        request = Request(
            method=self.parser.get_method(),
            path=self.url.split(b"?", 1)[0],
            body=b"".join(self.body_parts),
            keep_alive=self.parser.should_keep_alive(),
        )
        if self.stream_task is None:
            self.respond(request)
        else:
            self.waiting.append(request)

    # answering
    def respond(self, request: Request) -> None:
        if request.path == b"/v1/chat/completions" and request.method == b"POST":
            if wants_stream(request.body):
                self.stream_task = asyncio.get_running_loop().create_task(self.stream(request))
                return
            self.send(self.responses.completion, request.keep_alive)
        elif request.path == b"/health" and request.method == b"GET":
            self.send(self.responses.health, request.keep_alive)
        elif request.path == b"/v1/models" and request.method == b"GET":
            self.send(self.responses.models, request.keep_alive)
        else:
            self.send(self.responses.not_found, request.keep_alive)

    def send(self, response: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(response)
        if not keep_alive:
            self.transport.close()

    async def stream(self, request: Request) -> None:
        events = self.responses.stream_events
        try:
            # Headers and the first event leave together: time to first chunk is pure proxy cost.
            self.send(self.responses.stream_head + events[0], keep_alive=True)
            for event in events[1:]:
                await asyncio.sleep(self.chunk_gap_s)
                self.send(event, keep_alive=True)
            self.send(self.responses.stream_end, request.keep_alive)
        finally:
            self.stream_task = None
        while self.waiting and self.stream_task is None and self.transport is not None:
            self.respond(self.waiting.popleft())


async def serve(port: int, chunks: int, chunk_gap_s: float) -> None:
    responses = Responses.build(chunks)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(responses, chunk_gap_s), "127.0.0.1", port, backlog=1024
    )
    print(f"upstream listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=10, help="SSE events per stream (>= 2)")
    parser.add_argument("--chunk-gap-ms", type=float, default=2.0, help="pause between events")
    args = parser.parse_args()
    if args.chunks < 2:
        parser.error("--chunks must be at least 2 (a role event and a finish event)")
    try:
        # Optional (uvicorn[standard] brings it): cheaper per request than asyncio's own loop.
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args.port, args.chunks, args.chunk_gap_ms / 1000))


if __name__ == "__main__":
    main()
