"""Relaying one HTTP exchange through an ASGI server: the pieces the gateway and agent share.

Bodies pass through as they arrive (no buffering of responses), upstream status codes are kept
(headers are sent only once the upstream's are in), and a client that disconnects cancels the
upstream exchange, even while it is still waiting for the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from typing import Any, Protocol

from starlette.types import Message, Receive, Send

from ik_contracts.upstream import Headers, UpstreamError, UpstreamResponse, end_to_end

# Nothing between the client and us may hold a stream back (nginx honours this header).
NO_BUFFERING = (b"x-accel-buffering", b"no")


class BodyTooLarge(Exception):
    pass


class BodyTap(Protocol):
    """Sees a relayed body chunk by chunk; what ``feed`` returns is sent on (it may hold back
    part of a chunk, which ``rest`` gives once the body ends)."""

    def feed(self, chunk: bytes) -> bytes: ...

    def rest(self) -> bytes: ...


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body is larger than {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replayed(body: bytes, receive: Receive) -> Receive:
    """``receive`` for an app after ``body`` was read here: the body as one message, then
    whatever comes next (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: Headers | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def relay_response(
    response: UpstreamResponse,
    send: Send,
    extra: Headers | None = None,
    tap: BodyTap | None = None,
) -> None:
    """Send the upstream's status and headers, then its body chunk by chunk as it arrives.

    A ``tap`` sees each chunk and says what to send of it; one that may change the body's length
    is only given a body without a content-length.
    """
    headers = end_to_end(response.headers)
    length = response.header(b"content-length")
    if length is not None and response.header(b"transfer-encoding") is None:
        headers.append((b"content-length", length))
    headers.append(NO_BUFFERING)
    headers.extend(extra or ())
    try:
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if tap is None:
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            async for chunk in response.chunks():
                if chunk := tap.feed(chunk):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if rest := tap.rest():
                await send({"type": "http.response.body", "body": rest, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        response.close()  # no-op once complete; cancelled or failed, the upstream hears at once


async def _client_gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_client_disconnects(receive: Receive, exchange: Awaitable[None]) -> bool:
    """Run ``exchange``; cancel it if the client disconnects first. True if it completed."""
    work = asyncio.ensure_future(exchange)
    gone = asyncio.ensure_future(_client_gone(receive))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            work.cancel()
        gone.cancel()
    if work.cancelled() or not work.done():
        with contextlib.suppress(asyncio.CancelledError, UpstreamError):
            await work
        return False
    work.result()
    return True
