"""Server-sent events: the decoder, opening and reading a stream, and the drivers for
operations that follow one.

A streaming operation is written once, as a generator (like the JSON operations in ``_http``)
that yields ``OpenStream``, ``NextFrame`` and ``Pause`` steps. ``run_stream_steps`` performs
them with an ``httpx.Client``, ``run_stream_steps_async`` with an ``httpx.AsyncClient``.

Each open stream is read by a background thread (sync) or task (async) into a queue, so that
waiting for a frame can give up after a second, to redraw a clock or honour a deadline,
without cutting the connection: an httpx read timeout closes the stream it fires on.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import httpx

from ._http import Pause, join_url, network_error, response_error, run_steps, run_steps_async

T = TypeVar("T")

SSE_HEADERS = {"Accept": "text/event-stream"}


class SseDecoder:
    """Turns ``text/event-stream`` text, fed in arbitrary chunks, into each event's data.

    Lines end at LF (a CR before it is dropped); a blank line ends an event; ``:`` lines are
    comments (keep-alives); fields other than ``data`` are ignored; one space after the colon
    is stripped; an event's several ``data`` lines are joined with LF. ``flush()`` at the end
    of the stream also delivers an unterminated last line.

    >>> decoder = SseDecoder()
    >>> decoder.feed('data: {"phase": "ready"}\\r\\n\\r\\n: ping\\r\\ndata: a\\ndata: b')
    ['{"phase": "ready"}']
    >>> decoder.flush()
    ['a\\nb']
    """

    def __init__(self) -> None:
        self._partial_line = ""
        self._data_lines: list[str] = []

    def feed(self, text: str) -> list[str]:
        """The data of every event that ``text`` completes."""
        *lines, self._partial_line = (self._partial_line + text).split("\n")
        return [data for line in lines if (data := self._take_line(line)) is not None]

    def flush(self) -> list[str]:
        """The data of the event left open when the stream ended, if any."""
        line, self._partial_line = self._partial_line, ""
        return [data for data in (self._take_line(line), self._take_line("")) if data is not None]

    def _take_line(self, line: str) -> str | None:
        line = line.removesuffix("\r")
        if not line:
            if not self._data_lines:
                return None
            data, self._data_lines = "\n".join(self._data_lines), []
            return data
        name, _, value = line.partition(":")
        if name == "data":
            self._data_lines.append(value.removeprefix(" "))
        return None


def _request(
    client: httpx.Client | httpx.AsyncClient,
    method: str,
    url: str,
    body: Any,
    headers: dict[str, str] | None,
    timeout: float | None,
) -> httpx.Request:
    # A timeout of None here means the client's own, not "wait forever".
    extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    return client.build_request(
        method, url, json=body, headers={**(headers or {}), **SSE_HEADERS}, **extra
    )


def open_event_stream(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
) -> httpx.Response:
    """Send the request and return the open 2xx response, its body unread.

    A non-2xx answer raises its typed error (the response is closed); so does a failure
    below HTTP (``ApiError`` with code ``network_error``).
    """
    request = _request(client, method, url, body, headers, timeout)
    try:
        response = client.send(request, stream=True)
        if not response.is_success:
            with contextlib.closing(response):
                response.read()
            raise response_error(response)
    except httpx.TransportError as exc:
        raise network_error(exc, url) from exc
    return response


async def open_event_stream_async(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
) -> httpx.Response:
    """``open_event_stream`` with an async client."""
    request = _request(client, method, url, body, headers, timeout)
    try:
        response = await client.send(request, stream=True)
        if not response.is_success:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise response_error(response)
    except httpx.TransportError as exc:
        raise network_error(exc, url) from exc
    return response


def event_data(response: httpx.Response) -> Generator[str, None, None]:
    """Each event's data as it arrives, until the server ends the stream.

    Closes the response when exhausted or closed; a failure below HTTP mid-stream raises
    ``ApiError`` with code ``network_error``.
    """
    decoder = SseDecoder()
    try:
        for chunk in response.iter_text():
            yield from decoder.feed(chunk)
        yield from decoder.flush()
    except httpx.TransportError as exc:
        raise network_error(exc, str(response.request.url)) from exc
    finally:
        response.close()


async def event_data_async(response: httpx.Response) -> AsyncGenerator[str, None]:
    """``event_data`` for a response of an async client."""
    decoder = SseDecoder()
    try:
        async for chunk in response.aiter_text():
            for data in decoder.feed(chunk):
                yield data
        for data in decoder.flush():
            yield data
    except httpx.TransportError as exc:
        raise network_error(exc, str(response.request.url)) from exc
    finally:
        await response.aclose()


class StreamSignal(Enum):
    """What ``NextFrame`` answers when it has no event data to give."""

    ENDED = "ended"  # the server closed the stream
    IDLE = "idle"  # no event arrived within the wait; the stream is still open


@dataclass(frozen=True)
class OpenStream:
    """Open the SSE at ``path`` (closing the open one); no network wait may exceed ``timeout``."""

    path: str
    timeout: float


@dataclass(frozen=True)
class NextFrame:
    """Answered with the next event's data or a ``StreamSignal``, waiting at most ``wait`` s.

    A stream that failed has its typed error thrown in instead: ``ApiError`` with code
    ``network_error`` below HTTP, or the error for the Manager's non-2xx answer.
    """

    wait: float


StreamStep = OpenStream | NextFrame | Pause
StreamSteps = Generator[StreamStep, Any, T]
_Item = str | StreamSignal | BaseException


def _frame_or_raise(item: _Item) -> str | StreamSignal:
    if isinstance(item, BaseException):
        raise item
    return item


class _ThreadStream:
    """One SSE response, read into a queue by a daemon thread."""

    def __init__(self, client: httpx.Client, url: str, timeout: float) -> None:
        self._items: queue.Queue[_Item] = queue.Queue()
        self._closed = threading.Event()
        reader = threading.Thread(
            target=self._pump, args=(client, url, timeout), name="inferencekey-sse", daemon=True
        )
        reader.start()

    def _pump(self, client: httpx.Client, url: str, timeout: float) -> None:
        try:
            response = open_event_stream(client, "GET", url, timeout=timeout)
            with contextlib.closing(event_data(response)) as frames:
                for data in frames:
                    if self._closed.is_set():
                        return
                    self._items.put(data)
            self._items.put(StreamSignal.ENDED)
        except Exception as exc:  # handed over, so the waiting caller raises it
            self._items.put(exc)

    def next(self, wait: float) -> str | StreamSignal:
        try:
            return _frame_or_raise(self._items.get(timeout=wait))
        except queue.Empty:
            return StreamSignal.IDLE

    def close(self) -> None:
        # The reader stops at its next chunk, or when its read timeout (<= the deadline) fires.
        self._closed.set()


class _TaskStream:
    """One SSE response, read into a queue by an asyncio task."""

    def __init__(self, client: httpx.AsyncClient, url: str, timeout: float) -> None:
        self._items: asyncio.Queue[_Item] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._pump(client, url, timeout))

    async def _pump(self, client: httpx.AsyncClient, url: str, timeout: float) -> None:
        try:
            response = await open_event_stream_async(client, "GET", url, timeout=timeout)
            async with contextlib.aclosing(event_data_async(response)) as frames:
                async for data in frames:
                    self._items.put_nowait(data)
            self._items.put_nowait(StreamSignal.ENDED)
        except Exception as exc:  # handed over, so the waiting caller raises it
            self._items.put_nowait(exc)

    async def next(self, wait: float) -> str | StreamSignal:
        try:
            item = await asyncio.wait_for(self._items.get(), wait)
        except asyncio.TimeoutError:  # noqa: UP041 -- not the builtin before Python 3.11
            return StreamSignal.IDLE
        return _frame_or_raise(item)

    async def close(self) -> None:
        self._reader.cancel()
        # wait() rather than await: a cancellation of our caller must still propagate.
        await asyncio.wait({self._reader})


def run_stream_steps(steps: StreamSteps[T], client: httpx.Client, base_url: str) -> T:
    """Drive a streaming operation to its result with a sync client."""
    current: _ThreadStream | None = None

    def perform(step: StreamStep) -> str | StreamSignal | None:
        nonlocal current
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            return None
        if isinstance(step, NextFrame):
            assert current is not None, "NextFrame before OpenStream"
            return current.next(step.wait)
        if current is not None:
            current.close()
        current = _ThreadStream(client, join_url(base_url, step.path), step.timeout)
        return None

    try:
        return run_steps(steps, perform)
    finally:
        if current is not None:
            current.close()


async def run_stream_steps_async(
    steps: StreamSteps[T], client: httpx.AsyncClient, base_url: str
) -> T:
    """Drive a streaming operation to its result with an async client."""
    current: _TaskStream | None = None

    async def perform(step: StreamStep) -> str | StreamSignal | None:
        nonlocal current
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            return None
        if isinstance(step, NextFrame):
            assert current is not None, "NextFrame before OpenStream"
            return await current.next(step.wait)
        if current is not None:
            await current.close()
        current = _TaskStream(client, join_url(base_url, step.path), step.timeout)
        return None

    try:
        return await run_steps_async(steps, perform)
    finally:
        if current is not None:
            await current.close()
