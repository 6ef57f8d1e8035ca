"""A small pooled HTTP/1.1 client for proxying: keep-alive, streamed bodies, cancellable.

Why not httpx or aiohttp: proxying an instant upstream on these 2-core machines, httpx sustained
about 365 req/s at concurrency 32 and aiohttp about 5,600; this client, with httptools (the C
parser uvicorn uses) doing the parsing, about 10,700 (see bench/gateway.py). It does exactly what
the gateway and the agent proxy need and nothing else: one request per connection at a time,
response bodies as a stream of chunks (chunked encoding decoded), and `close()` to abort, which
tells the upstream the client went away.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import AsyncIterator

import httptools

Headers = list[tuple[bytes, bytes]]

# Queued body pieces (each one socket read, up to 256 KiB) above which we stop reading the
# socket until the client catches up.
_HIGH_WATER = 64
_LOW_WATER = 16


# RFC 9110 tokens (methods, header names), a request target of printable ASCII, and header
# values of printable ASCII and tabs: nothing that could end a line or a field early.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e]*\Z")


class UnsafeRequest(ValueError):
    """A method, target or header that would not survive as one line of HTTP/1.1; nothing was
    sent. The message names the part, never its bytes."""


def request_head(method: str, target: str, host: str, port: int, headers: Headers) -> bytes:
    """The request line and headers, every byte checked: a CR, LF, NUL, space or non-ASCII byte
    anywhere would let one request become two (request smuggling)."""
    if not method.isascii() or not _TOKEN.match(method_bytes := method.encode("ascii")):
        raise UnsafeRequest("the request method is not an HTTP token")
    if not target.isascii() or not _TARGET.match(target_bytes := target.encode("ascii")):
        raise UnsafeRequest("the request target holds a byte outside printable ASCII")
    head = [
        b"%s %s HTTP/1.1\r\nhost: %s:%d\r\n" % (method_bytes, target_bytes, host.encode(), port)
    ]
    for name, value in headers:
        if not _TOKEN.match(name):
            raise UnsafeRequest("a header name is not an HTTP token")
        if not _FIELD_VALUE.match(value):
            raise UnsafeRequest(
                f"header {name.decode('ascii')!r} holds a control or non-ASCII byte"
            )
        head.append(b"%s: %s\r\n" % (name, value))
    return b"".join(head)


class UpstreamError(Exception):
    """The upstream could not be reached or broke off.

    ``before_response``: no byte of the response came. ``request_sent``: the request may have
    reached the upstream, so sending it again elsewhere could run it twice.
    """

    def __init__(self, message: str, *, before_response: bool, request_sent: bool = True) -> None:
        super().__init__(message)
        self.before_response = before_response
        self.request_sent = request_sent


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def _wait(waiter: asyncio.Future[None], timeout: float | None) -> None:
    """Await ``waiter`` with a timeout, without the task asyncio.wait_for would create."""
    if timeout is None:
        await waiter
        return
    timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.answered = False  # a byte of the current response came
        self._headers_ready: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._chunk_waiter: asyncio.Future[None] | None = None
        self._ended = False  # the response is complete, or the connection gone
        self._paused = False
        self._interim = False
        self.complete = False
        self.keep_alive = False
        self.ends_at_close = False
        self.expects_body = True  # False for HEAD: the headers then announce a body never sent
        self.status = 0
        self.headers: Headers = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        # httptools cannot be told of the end of input, so it never completes such a body itself.
        if self.ends_at_close and exc is None and not self.closed:
            self.complete = True
        self.closed = True
        if self._headers_ready is not None and not self._headers_ready.done():
            self._headers_ready.set_exception(
                UpstreamError("upstream closed the connection", before_response=True)
            )
        self._ended = True
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self.complete or self._headers_ready is None:
            # Bytes nobody asked for (a second response to one request, or a word while idle):
            # this connection's framing can no longer be trusted, so it is never used again.
            self.abort()
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if self._headers_ready is not None and not self._headers_ready.done():
                self._headers_ready.set_exception(
                    UpstreamError(f"bad response from upstream: {error}", before_response=True)
                )
            self.abort()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            self.abort()  # a second response in the same read: see data_received

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.closed:
            return  # the rest of an unsolicited response
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.closed:
            return
        if 100 <= self.parser.get_status_code() < 200:
            # An interim response (100 Continue, 103 Early Hints): the final one follows.
            self._interim = True
            self.headers = []
            return
        self.status = self.parser.get_status_code()
        # Asked now: once the message is complete the parser no longer says.
        self.keep_alive = self.parser.should_keep_alive()
        # With neither a length nor chunked framing, the body ends when the upstream closes.
        self.ends_at_close = not any(
            name == b"content-length"
            or (name == b"transfer-encoding" and b"chunked" in value.lower())
            for name, value in self.headers
        )
        if self._headers_ready is not None and not self._headers_ready.done():
            self._headers_ready.set_result(None)
        if not self.expects_body:
            # httptools cannot be told so, and would wait for the body: end here, do not reuse.
            self.keep_alive = False
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self.closed:
            return
        self._chunks.append(bytes(body))
        self._wake()
        if not self._paused and len(self._chunks) > _HIGH_WATER and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.closed and self.complete:
            return
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._chunk_waiter is not None and not self._chunk_waiter.done():
            self._chunk_waiter.set_result(None)

    # use
    def start(self, request: bytes, *, expects_body: bool = True) -> asyncio.Future[None]:
        self.expects_body = expects_body
        self._headers_ready = asyncio.get_running_loop().create_future()
        self._chunks.clear()
        self._ended = self.complete = self.keep_alive = self.ends_at_close = self.answered = False
        self.status = 0
        self.headers = []
        assert self.transport is not None
        self.transport.write(request)
        return self._headers_ready

    async def next_chunk(self, idle_timeout: float | None) -> bytes | None:
        """The next piece of the body, or None at its end."""
        while not self._chunks:
            if self._ended:
                return None
            self._chunk_waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(self._chunk_waiter, idle_timeout)
            finally:
                self._chunk_waiter = None
        chunk = self._chunks.popleft()
        if self._paused and len(self._chunks) < _LOW_WATER and self.transport:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        return self.complete and not self.closed and self.keep_alive

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """Status, headers, and the body as it arrives. Iterate ``chunks()`` or ``read()``."""

    def __init__(self, connection: _Connection, pool: _Pool, idle_timeout: float | None) -> None:
        self._connection = connection
        self._pool = pool
        self._idle_timeout = idle_timeout
        self._finished = False
        self.status = connection.status
        self.headers = connection.headers

    def header(self, name: bytes) -> bytes | None:
        return header_value(self.headers, name)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    chunk = await self._connection.next_chunk(self._idle_timeout)
                except TimeoutError:
                    raise UpstreamError(
                        f"upstream sent nothing for {self._idle_timeout:g}s",
                        before_response=False,
                    ) from None
                if chunk is None:
                    break
                yield chunk
            if not self._connection.complete:
                raise UpstreamError("upstream broke off the response", before_response=False)
        finally:
            self._finish()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        """Abort the exchange (the client went away): the upstream sees its connection close."""
        if not self._finished:
            self._connection.abort()
            self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._pool.release(self._connection)


class _Pool:
    def __init__(self, host: str, port: int, max_idle: int) -> None:
        self.host, self.port, self.max_idle = host, port, max_idle
        self._idle: collections.deque[_Connection] = collections.deque()

    async def acquire(self, connect_timeout: float) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                connection.reused = True
                return connection
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port), connect_timeout
            )
        except (OSError, TimeoutError) as error:
            raise UpstreamError(
                f"cannot connect to {self.host}:{self.port}: {error or 'timed out'}",
                before_response=True,
                request_sent=False,
            ) from None
        return connection

    def release(self, connection: _Connection) -> None:
        if connection.reusable() and len(self._idle) < self.max_idle:
            self._idle.append(connection)
        elif not connection.closed:
            connection.abort()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()


_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        # Set by the server relaying the response; passing the upstream's on would double them.
        b"date",
        b"server",
        b"x-accel-buffering",
    }
)


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case, as ASGI and our parser give names)."""
    for key, value in headers:
        if key == name:
            return value
    return None


def end_to_end(headers: Headers) -> Headers:
    """Headers worth passing on: not hop-by-hop, not the framing we set ourselves."""
    return [(name, value) for name, value in headers if name not in _HOP_BY_HOP]


class UpstreamClient:
    """Connection pools keyed by (host, port)."""

    def __init__(self, *, max_idle_per_host: int = 256) -> None:
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._max_idle = max_idle_per_host

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        *,
        connect_timeout: float = 10.0,
        first_byte_timeout: float | None = 600.0,
        idle_timeout: float | None = 300.0,
    ) -> UpstreamResponse:
        pool = self._pools.get((host, port))
        if pool is None:
            pool = self._pools[(host, port)] = _Pool(host, port, self._max_idle)
        """Send one request; return once the response headers are in.

        Raises UnsafeRequest, before connecting, for a head that is not plain HTTP/1.1."""
        head = request_head(method, target, host, port, headers)
        request = b"%scontent-length: %d\r\n\r\n%s" % (head, len(body), body)
        expects_body = method != "HEAD"
        # A kept-alive connection the upstream closed meanwhile fails before any response byte;
        # that one failure is retried once on a fresh connection.
        for attempt in (1, 2):
            connection = await pool.acquire(connect_timeout)
            try:
                headers_in = connection.start(request, expects_body=expects_body)
                await _wait(headers_in, first_byte_timeout)
            except TimeoutError:
                connection.abort()
                raise UpstreamError(
                    f"upstream sent no response within {first_byte_timeout:g}s",
                    before_response=True,
                ) from None
            except UpstreamError:
                connection.abort()
                if connection.reused and not connection.answered and attempt == 1:
                    continue
                raise
            except BaseException:
                connection.abort()
                raise
            return UpstreamResponse(connection, pool, idle_timeout)
        raise AssertionError("unreachable")

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
