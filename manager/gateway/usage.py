"""Token usage per project, workload and key, as the engines report it.

The gateway reads each answer's `usage` as the bytes pass through (a JSON body: its last
`"usage"` object; an event stream: its last usage chunk), counts it in memory per minute, and
writes the counts every couple of seconds in one statement that adds them to the stored rows.
Nothing is parsed in full and nothing is held back from the client.

Engines that report a stream's usage only when asked (vLLM, SGLang: OpenAI's
`stream_options.include_usage`) are asked; the extra usage-only chunk that answer brings is then
kept from a client that did not ask for it, so what the client receives is unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from manager.db.models import UsageCount

from .flushing import PeriodicFlush

log = logging.getLogger("inferencekey.gateway")

# The usage object is at the end of an answer (OpenAI's order, and llama.cpp's sorted keys); the
# tail kept must hold the last chunk of a stream whole.
TAIL_BYTES = 16 * 1024
_USAGE = b'"usage"'
_DECODER = json.JSONDecoder()
_SEPARATORS = (b"\r\n\r\n", b"\n\n")  # what ends a server-sent event


@dataclass(frozen=True)
class TokenCounts:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


def read_usage(tail: bytes) -> TokenCounts | None:
    """The last `"usage": {...}` object in ``tail`` with token counts; None if there is none."""
    end = len(tail)
    while (at := tail.rfind(_USAGE, 0, end)) >= 0:
        end = at
        rest = tail[at + len(_USAGE) :].lstrip()
        if not rest.startswith(b":"):
            continue
        try:
            value, _ = _DECODER.raw_decode(rest[1:].lstrip().decode("utf-8", "replace"))
        except ValueError:
            continue
        if isinstance(value, dict) and (counts := _counts(value)) is not None:
            return counts
    return None


def _counts(usage: dict[str, object]) -> TokenCounts | None:
    def number(*names: str) -> int | None:
        for name in names:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    prompt = number("prompt_tokens", "input_tokens")
    completion = number("completion_tokens", "output_tokens")
    total = number("total_tokens")
    if prompt is None and completion is None and total is None:
        return None
    prompt, completion = prompt or 0, completion or 0
    return TokenCounts(prompt, completion, total if total is not None else prompt + completion)


def ask_for_stream_usage(body: bytes) -> bytes | None:
    """The request with `stream_options.include_usage` set, for an engine that reports a
    stream's usage only when asked; None when it is not a stream or the client already chose."""
    if b'"stream"' not in body:
        return None
    try:
        request = json.loads(body)
    except ValueError:
        return None  # the engine answers it with its own 400
    if not isinstance(request, dict) or request.get("stream") is not True:
        return None
    options = request.get("stream_options")
    if options is None:
        # The common case: one key added at the end of the object, the client's bytes kept.
        end = body.rindex(b"}")
        return body[:end] + b',"stream_options":{"include_usage":true}' + body[end:]
    if not isinstance(options, dict) or "include_usage" in options:
        return None
    options["include_usage"] = True
    return json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode()


class UsageTap:
    """Sees one answer's body as it is relayed and finds the usage the engine put in it.

    With ``hide_usage_chunk`` (the gateway asked for a stream's usage on the client's behalf),
    events are passed on whole and the usage-only event (`"choices": []` with a usage object) is
    kept back; any incomplete event at the end of a chunk waits for the rest of it.
    """

    __slots__ = ("_hidden", "_pending", "_tail", "hide_usage_chunk", "responded")

    def __init__(self, *, hide_usage_chunk: bool = False) -> None:
        self.hide_usage_chunk = hide_usage_chunk
        self.responded = False
        self._tail = b""
        self._pending = b""
        self._hidden: TokenCounts | None = None

    def answered_with(self, content_type: bytes | None, content_length: bytes | None) -> None:
        """Only a stream of events is filtered; any other answer passes as it is."""
        self.responded = True
        streamed = (content_type or b"").startswith(b"text/event-stream")
        self.hide_usage_chunk = self.hide_usage_chunk and streamed and content_length is None

    def feed(self, chunk: bytes) -> bytes:
        # A one-chunk answer is kept as it is, without a copy.
        tail = self._tail
        self._tail = tail[-TAIL_BYTES:] + chunk if tail else chunk
        if not self.hide_usage_chunk:
            return chunk
        data = self._pending + chunk
        ends = [at + len(sep) for sep in _SEPARATORS if (at := data.rfind(sep)) >= 0]
        if not ends:
            self._pending = data
            return b""
        cut = max(ends)
        whole, self._pending = data[:cut], data[cut:]
        if _USAGE not in whole:
            return whole
        return b"".join(event for event in _events(whole) if not self._usage_only(event))

    def rest(self) -> bytes:
        """What is still held when the answer ends (an event the engine never finished)."""
        pending, self._pending = self._pending, b""
        return pending

    def usage(self) -> TokenCounts | None:
        return self._hidden or read_usage(self._tail)

    def _usage_only(self, event: bytes) -> bool:
        if _USAGE not in event:
            return False
        for line in event.splitlines():
            if not line.startswith(b"data:"):
                continue
            try:
                chunk = json.loads(line[5:])
            except ValueError:
                return False
            if not isinstance(chunk, dict) or chunk.get("choices") != []:
                return False
            usage = chunk.get("usage")
            counts = _counts(usage) if isinstance(usage, dict) else None
            if counts is None:
                return False
            self._hidden = counts
            return True
        return False


def _events(data: bytes) -> list[bytes]:
    """``data`` (whole events only) split after each blank line, separators kept."""
    events, start = [], 0
    for separator in _SEPARATORS:
        if separator in data:
            while (end := data.find(separator, start)) >= 0:
                events.append(data[start : end + len(separator)])
                start = end + len(separator)
            break
    if start < len(data):
        events.append(data[start:])
    return events


# (project id, workload id, workload slug, key id, minute since the epoch): a plain tuple, as
# it is built for every request.
UsageKey = tuple[str, str, str, str, int]


class UsageMeter(PeriodicFlush):
    """Counts requests and tokens per (project, workload, key, minute); writes them in batches.

    A failed write keeps its counts for the next one, and stopping writes what is left: what is
    lost is at most the last couple of seconds before a crash.
    """

    task_name = "gateway-usage"
    failure = "writing usage counts failed; keeping them for the next try"

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__()
        self._sessions = sessions
        self._counts: dict[UsageKey, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        self._lock = asyncio.Lock()

    def record(
        self,
        project_id: str,
        workload_id: str,
        workload_slug: str,
        key_id: str,
        usage: TokenCounts | None,
    ) -> None:
        minute = int(time.time() // 60)
        row = self._counts[(project_id, workload_id, workload_slug, key_id, minute)]
        row[0] += 1
        if usage is not None:
            row[1] += usage.prompt_tokens
            row[2] += usage.completion_tokens
            row[3] += usage.total_tokens

    async def stop(self) -> None:
        await super().stop()
        try:
            await self.flush()
        except Exception:
            log.exception("writing the last usage counts failed; %d rows lost", len(self._counts))

    async def flush(self) -> None:
        async with self._lock:
            counts, self._counts = self._counts, defaultdict(lambda: [0, 0, 0, 0])
            if not counts:
                return
            rows = [
                {
                    "project_id": project_id,
                    "workload_id": workload_id,
                    "workload_slug": workload_slug,
                    "key_id": key_id,
                    "minute": datetime.fromtimestamp(minute * 60, UTC),
                    "requests": n[0],
                    "prompt_tokens": n[1],
                    "completion_tokens": n[2],
                    "total_tokens": n[3],
                }
                for (project_id, workload_id, workload_slug, key_id, minute), n in counts.items()
            ]
            statement = insert(UsageCount).values(rows)
            added = statement.excluded
            statement = statement.on_conflict_do_update(
                index_elements=["project_id", "workload_id", "key_id", "minute"],
                set_={
                    "requests": UsageCount.requests + added.requests,
                    "prompt_tokens": UsageCount.prompt_tokens + added.prompt_tokens,
                    "completion_tokens": UsageCount.completion_tokens + added.completion_tokens,
                    "total_tokens": UsageCount.total_tokens + added.total_tokens,
                },
            )
            try:
                async with self._sessions() as session:
                    await session.execute(statement)
                    await session.commit()
            except BaseException:
                for key, n in counts.items():  # put them back, added to what came meanwhile
                    row = self._counts[key]
                    for i, value in enumerate(n):
                        row[i] += value
                raise
