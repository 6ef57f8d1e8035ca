"""The HTTP server both the Manager and the agent listen with: uvicorn's httptools protocol,
with the limits it lacks, so no unauthenticated client can hold the server's memory or sockets.

- the request line and headers: a size and a count cap (431), and a deadline for the whole head
  from the first byte, or from the connection for a client that sends nothing (408);
- the body: an idle deadline between its pieces (408);
- keep-alive: uvicorn's own idle timeout;
- connections: a cap, past which a new connection gets a 503 with Retry-After and is closed;
- every refusal is the platform's JSON error body, and a connection closed with a request body
  still arriving is closed lingeringly (the rest read and dropped for a moment), so the client
  reads the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ik_contracts.errors import problem

# How long a connection closed mid-body keeps reading (and dropping) what the client still sends.
_LINGER_S = 2.0


@dataclass(frozen=True)
class ServerLimits:
    """Settings, from ``INFERENCEKEY_HTTP_<NAME>`` (e.g. INFERENCEKEY_HTTP_MAX_CONNECTIONS) in
    the Manager's and the agent's environment; each is documented in SECURITY.md."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    # Longer than the idle expiry of the clients we ship (httpx, the Python SDK's: 5 s; the
    # agent's: 12 s, ik_contracts.protocol.AGENT_KEEPALIVE_S; Node's fetch, the TypeScript
    # SDK's: 4 s), so that they close an idle connection before the server does. At 5 s
    # (uvicorn's default) bench/agent_requests.py lost a heartbeat with no answer (ReadError)
    # in 5 of 18 runs; at 15 s or 60 s in none of 16. A
    # client that keeps idle connections longer (urllib3, curl, a proxy) still meets a server
    # closing one now and then, and must retry (the gateway's client to the agents does, once).
    keepalive_timeout_s: float = 15.0
    max_connections: int = 2048

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerLimits:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = f"INFERENCEKEY_HTTP_{spec.name.upper()}"
            raw = environ.get(name, "").strip()
            if not raw:
                continue
            kind = int if spec.type in ("int", int) else float
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None
            if not value > 0:
                raise ValueError(f"{name} must be greater than 0, got {raw!r}")
            values[spec.name] = value
        return cls(**values)


class _Refused(Exception):
    pass


def _problem(status: int, code: str, message: str, extra: bytes = b"") -> bytes:
    body = json.dumps(problem(code, message)).encode()
    reason = {
        400: b"Bad Request",
        408: b"Request Timeout",
        431: b"Request Header Fields Too Large",
        503: b"Service Unavailable",
    }[status]
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n%s" % (status, reason, len(body), extra, body)
    )


class _LingeringTransport:
    """The real transport, except that close() lets a client still sending finish reading.

    It knows its protocol by a weak reference: the protocol holds it (and so does its flow
    control), so a strong one made every closed connection a cycle of some thirty objects
    (protocol, transports, request cycle, its scope) that only the cyclic garbage collector
    could free; under a fleet whose agents connect anew for each heartbeat that was most of
    what the collector found, in full collections that held the event loop for up to 0.8 s."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpProtocol) -> None:
        self._transport = transport
        self._protocol = weakref.ref(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        protocol = self._protocol()
        if protocol is not None and protocol.mid_body() and not self._transport.is_closing():
            protocol.linger()
            return
        self._transport.close()


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ServerLimits; make one with ``guarded_protocol()``."""

    limits = ServerLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._header_count = 0
        self._in_body = False
        self._refusal: tuple[int, str, str] | None = None
        self._lingering = False
        self._raw_transport: asyncio.Transport | None = None

    # connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw_transport = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                503,
                "too_many_connections",
                f"this server holds {self.limits.max_connections} connections already; retry",
                b"retry-after: 1\r\n",
            )
            return
        self._arm(self.limits.header_timeout_s, "header")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a body we no longer read
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "invalid_request", "protocol upgrades are not supported here")
            return
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
            else:
                self.send_400_response("the request is not valid HTTP/1.1")
            return
        if self._in_head:
            # Bytes of a head not finished yet, which the parser holds in memory meanwhile.
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > self.limits.max_header_bytes:
                self._refuse(*self._head_too_large())

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "invalid_request", msg)

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._raw_head_bytes, self._header_count = True, 0, 0, 0
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s, "header")

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = (
                431,
                "too_many_headers",
                f"a request may carry at most {self.limits.max_headers} headers",
            )
            raise _Refused
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        self._in_body = self.parser is not None and _has_body(self.headers)
        if self._in_body:
            self._arm(self.limits.body_timeout_s, "body")

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm(self.limits.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()

    # limits
    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.limits.max_header_bytes:
            self._refusal = self._head_too_large()
            raise _Refused

    def _head_too_large(self) -> tuple[int, str, str]:
        return (
            431,
            "header_too_large",
            f"the request line and headers may be at most {self.limits.max_header_bytes} bytes",
        )

    def _arm(self, seconds: float, part: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._timed_out, part, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self, part: str, seconds: float) -> None:
        self._deadline = None
        if part == "body" and self.flow is not None and self.flow.read_paused:
            self._arm(seconds, part)  # we stopped reading, not the client stopped sending
            return
        if self.cycle is not None and self.cycle.response_started and not self._in_head:
            self._close_now()  # an answer is under way: nothing more can be said
            return
        what = "request headers" if part == "header" else "more of the request body"
        self._refuse(408, "request_timeout", f"no {what} within {seconds:g}s")

    def _refuse(self, status: int, code: str, message: str, extra: bytes = b"") -> None:
        self._disarm()
        transport = self._raw_transport
        if transport is None or transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's request ends here
        transport.write(_problem(status, code, message, extra))
        if self._in_body or self._in_head:
            self.linger()
        else:
            transport.close()

    # closing
    def mid_body(self) -> bool:
        return self._in_body

    def linger(self) -> None:
        """Stop answering, read and drop what still comes for a moment, then close: closing
        with unread bytes would reset the connection and lose the answer already written."""
        transport = self._raw_transport
        if transport is None or self._lingering:
            return
        self._lingering = True
        self._disarm()
        if transport.can_write_eof():
            transport.write_eof()
        self._deadline = self.loop.call_later(_LINGER_S, self._close_now)

    def _close_now(self) -> None:
        self._deadline = None
        if self._raw_transport is not None:
            self._raw_transport.close()


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
        if name == b"transfer-encoding":
            return True
    return False


def guarded_protocol(limits: ServerLimits) -> type[GuardedHttpProtocol]:
    """The protocol class to give uvicorn (``http=``), with these limits."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits})


def uvicorn_options(limits: ServerLimits) -> dict[str, Any]:
    """uvicorn.Config keyword arguments that go with the guarded protocol."""
    raise_open_files_limit(limits.max_connections)
    return {
        "http": guarded_protocol(limits),
        "timeout_keep_alive": limits.keepalive_timeout_s,
    }


def raise_open_files_limit(connections: int) -> None:
    """Let the process hold its connections plus room for files and the database (the soft
    limit is often 1024); never past the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
