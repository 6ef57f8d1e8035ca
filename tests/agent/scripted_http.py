"""Tiny HTTP/1.1 servers on 127.0.0.1 whose every byte a test scripts.

They stand in for an engine or an agent: a script decides what each connection answers, when it
stalls and when it closes; the server counts the connections it accepted and the requests it read,
so connection reuse is seen from the upstream's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable

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


async def answer_every_request(peer: Peer) -> None:
    """A kept-alive upstream answering every request with 200 ok."""
    while await peer.request() is not None:
        await peer.send(ok())


Serve = Callable[[Script], Awaitable[ScriptedServer]]
