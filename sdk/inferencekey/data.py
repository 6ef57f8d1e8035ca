"""The data plane: chat, streamed chat, embeddings and rerank on a workload's endpoint, and
async jobs (submit, read back, wait).

``DataClient`` and ``AsyncDataClient`` share one implementation: each JSON operation is a
generator of HTTP calls (see ``_http``) that the sync client drives with ``httpx.Client`` and
the async client with ``httpx.AsyncClient``; request bodies, local checks and the parsing of
answers are the same functions for both. Routes are OpenAI-compatible, under
``{base_url}/endpoint/{project}/{workload}/v1/``, authenticated with an ``ik_live_`` key; jobs
are under ``{base_url}/endpoint/{project}/{workload}/jobs`` (see ``_jobs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any
from urllib.parse import quote

import httpx

from . import _http, _jobs, _sse
from ._config import DEFAULT_BASE_URL, from_env, present
from ._http import Call, Pause, Steps
from ._jobs import UNSET
from .errors import ApiError, ConfigurationError, PermissionDenied, ValidationError
from .results import EmbedResult, Job, RerankItem, RerankResult, TextChunk, TextResult
from .validation import redact_token

# Generation is slow on small GPUs: a non-streamed answer may take minutes to start arriving.
DEFAULT_TIMEOUT_S = 600.0
# The typed code of the ApiError raised when an answer lacks a field the SDK reads.
DRIFT_CODE = "workload_drifted"
# The typed code of the ApiError raised for an error the engine reports inside a stream.
STREAM_ERROR_CODE = "stream_error"
_STREAM_END = "[DONE]"

Message = Mapping[str, Any]


def check_live_key(api_key: str | None, workload_slug: str) -> str:
    """The key to send for ``workload_slug``; refuses a missing key or a control-plane token.

    >>> check_live_key("ik_sdk_0123abcd_" + "0" * 64, "support-bot")
    Traceback (most recent call last):
    ...
    inferencekey.errors.PermissionDenied: permission denied [wrong_credential_type]: ...
    """
    if api_key is None:
        raise ConfigurationError(
            f'No ik_live_ key for workload "{workload_slug}". '
            "Pass api_key= or set INFERENCEKEY_API_KEY."
        )
    if api_key.startswith("ik_sdk_"):
        raise PermissionDenied(
            f"permission denied [wrong_credential_type]: {redact_token(api_key)} is an SDK "
            "token; the data plane requires an ik_live_ key",
            code="wrong_credential_type",
        )
    return api_key


def _invalid(reason: str) -> ValidationError:
    return ValidationError(f"validation error: {reason}")


def _drifted(field_path: str) -> ApiError:
    return ApiError(f"workload drifted from spec: {field_path}", code=DRIFT_CODE)


def _blank(value: object) -> bool:
    return not isinstance(value, str) or not value.strip()


# --- requests -------------------------------------------------------------------------------


def _chat_messages(prompt: str | None, messages: Sequence[Message] | None) -> list[dict[str, Any]]:
    if prompt is not None and messages is not None:
        raise _invalid("provide either prompt or messages, not both")
    if prompt is not None:
        if _blank(prompt):
            raise _invalid("prompt must not be empty")
        return [{"role": "user", "content": prompt}]
    if messages is None:
        raise _invalid("provide a prompt or messages")
    if not messages:
        raise _invalid("messages must not be empty")
    turns = [dict(message) for message in messages]
    for turn in turns:
        content = turn.get("content")
        # A list is OpenAI's multi-part content; it needs at least one part.
        if content is None or content == [] or (isinstance(content, str) and not content.strip()):
            raise _invalid("message content must not be empty")
    return turns


def _chat_body(
    model: str,
    prompt: str | None,
    messages: Sequence[Message] | None,
    temperature: float | None,
    max_tokens: int | None,
    *,
    stream: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": _chat_messages(prompt, messages),
        "stream": stream,
    }
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def _embed_body(model: str, input: str | Sequence[str]) -> dict[str, Any]:
    texts = [input] if isinstance(input, str) else list(input)
    if not texts or any(isinstance(text, str) and not text.strip() for text in texts):
        raise _invalid("input must not be empty")
    if not all(isinstance(text, str) for text in texts):
        raise _invalid("input must be a string or a list of strings")
    return {"model": model, "input": texts}


def _rerank_body(
    model: str, query: str, documents: Sequence[str], top_n: int | None
) -> dict[str, Any]:
    if _blank(query):
        raise _invalid("query must not be empty")
    if isinstance(documents, str):
        raise _invalid("documents must be a list of strings")
    if not documents:
        raise _invalid("documents must not be empty")
    body: dict[str, Any] = {"model": model, "query": query, "documents": list(documents)}
    if top_n is not None:
        body["top_n"] = top_n
    return body


# --- answers --------------------------------------------------------------------------------


def _object(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise ApiError(f"json error: expected a JSON object, got {type(answer).__name__}")
    return answer


def _model_of(answer: dict[str, Any]) -> str:
    model = answer.get("model")
    if not isinstance(model, str):
        raise _drifted("model")
    return model


def _first_choice(answer: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _drifted("choices[0]")
    return choices[0]


def _finish_reason(choice: dict[str, Any]) -> str | None:
    reason = choice.get("finish_reason")
    return reason if isinstance(reason, str) else None


def _text_result(answer: Any) -> TextResult:
    raw = _object(answer)
    choice = _first_choice(raw)
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise _drifted("choices[0].message.content")
    return TextResult(content, _model_of(raw), _finish_reason(choice), raw)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _embed_result(answer: Any) -> EmbedResult:
    raw = _object(answer)
    items = raw.get("data")
    if not isinstance(items, list):
        raise _drifted("data")
    for position, item in enumerate(items):
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(vector, list) or not all(_is_number(x) for x in vector):
            raise _drifted(f"data[{position}].embedding")
    # OpenAI numbers each vector; put them back in input order when the server says it.
    if all(isinstance(item.get("index"), int) for item in items):
        items = sorted(items, key=lambda item: item["index"])
    embeddings = [[float(x) for x in item["embedding"]] for item in items]
    return EmbedResult(embeddings, _model_of(raw), raw)


def _rerank_result(answer: Any, request_model: str) -> RerankResult:
    raw = _object(answer)
    items = raw.get("results")
    if not isinstance(items, list):
        raise _drifted("results")
    results: list[RerankItem] = []
    for position, item in enumerate(items):
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or isinstance(index, bool):
            raise _drifted(f"results[{position}].index")
        score = item.get("relevance_score", item.get("score"))
        if not _is_number(score):
            raise _drifted(f"results[{position}].relevance_score")
        results.append(RerankItem(index, float(score)))
    # Best first whatever order the engine used; ties keep the engine's order.
    results.sort(key=lambda result: result.relevance_score, reverse=True)
    # ``model`` is optional in rerank answers; the name the request used stands in for it.
    model = raw.get("model")
    return RerankResult(results, model if isinstance(model, str) else request_model, raw)


def _stream_error(payload: dict[str, Any]) -> ApiError:
    error = payload["error"]
    message = error.get("message") if isinstance(error, dict) else error
    return ApiError(f"stream error: {message or error}", code=STREAM_ERROR_CODE)


def _text_chunk(payload: Any) -> TextChunk | None:
    if not isinstance(payload, dict):
        return None
    if "error" in payload and "choices" not in payload:
        raise _stream_error(payload)
    if payload.get("choices") == []:
        return None  # a usage-only frame (OpenAI's stream_options.include_usage)
    choice = _first_choice(payload)
    delta = choice.get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return TextChunk(content if isinstance(content, str) else "", _finish_reason(choice), payload)


def _event_chunks(data: str) -> tuple[list[TextChunk], bool]:
    """The chunks in one SSE event's data, and whether it ended the stream with ``[DONE]``.

    Undecodable frames are skipped. Frames sent as consecutive ``data:`` lines without the
    blank line between them (one event to SSE) are read line by line, as the official client
    reads every stream.
    """
    chunks: list[TextChunk] = []
    for frame in data.split("\n"):
        if frame.strip() == _STREAM_END:
            return chunks, True
        try:
            payload = json.loads(frame)
        except ValueError:
            continue
        chunk = _text_chunk(payload)
        if chunk is not None:
            chunks.append(chunk)
    return chunks, False


def _text_chunks(frames: Generator[str, None, None]) -> Generator[TextChunk, None, None]:
    with contextlib.closing(frames):
        for data in frames:
            chunks, ended = _event_chunks(data)
            yield from chunks
            if ended:
                return


async def _text_chunks_async(frames: AsyncGenerator[str, None]) -> AsyncGenerator[TextChunk, None]:
    async with contextlib.aclosing(frames):
        async for data in frames:
            chunks, ended = _event_chunks(data)
            for chunk in chunks:
                yield chunk
            if ended:
                return


# --- operations -----------------------------------------------------------------------------


def _generate_text_steps(path: str, body: dict[str, Any]) -> Steps[TextResult]:
    return _text_result((yield Call("POST", path, body)))


def _embed_steps(path: str, body: dict[str, Any]) -> Steps[EmbedResult]:
    return _embed_result((yield Call("POST", path, body)))


def _rerank_steps(path: str, body: dict[str, Any]) -> Steps[RerankResult]:
    return _rerank_result((yield Call("POST", path, body)), body["model"])


def _submit_job_steps(path: str, envelope: dict[str, Any]) -> Steps[str]:
    return _jobs.submitted_job_id((yield Call("POST", path, envelope)))


def _get_job_steps(path: str) -> Steps[Job]:
    return _jobs.job_from_answer((yield Call("GET", path)))


class TextStream(Iterator[TextChunk]):
    """The chunks of a streamed chat completion, read as they arrive.

    The request was sent and answered 2xx when this was returned; iterating reads the SSE
    body up to ``data: [DONE]``. Iterate to the end, or ``close()`` it (or use ``with``) to
    free the connection early.

    >>> with ep.generate_text_stream(prompt="Hola") as stream:  # doctest: +SKIP
    ...     text = "".join(chunk.text for chunk in stream)
    """

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks = _text_chunks(_sse.event_data(response))

    def __next__(self) -> TextChunk:
        return next(self._chunks)

    def close(self) -> None:
        """Stop reading and release the connection."""
        self._chunks.close()
        self._response.close()  # the reader closes it too, if it ever started

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncTextStream:
    """The chunks of a streamed chat completion, for ``async for``.

    ``async for`` sends the request at its first step; ``await`` the stream first to send it
    right away, so that an HTTP error raises there.

    >>> async for chunk in ep.generate_text_stream(prompt="Hola"):  # doctest: +SKIP
    ...     print(chunk.text, end="", flush=True)
    >>> stream = await ep.generate_text_stream(prompt="Hola")  # doctest: +SKIP
    """

    def __init__(self, open_response: Callable[[], Awaitable[httpx.Response]]) -> None:
        self._open: Callable[[], Awaitable[httpx.Response]] | None = open_response
        self._response: httpx.Response | None = None
        self._chunks: AsyncGenerator[TextChunk, None] | None = None

    async def _start(self) -> AsyncGenerator[TextChunk, None] | None:
        if self._open is not None:
            opener, self._open = self._open, None  # one request, even if it fails
            self._response = await opener()
            self._chunks = _text_chunks_async(_sse.event_data_async(self._response))
        return self._chunks

    async def _opened(self) -> AsyncTextStream:
        await self._start()
        return self

    def __await__(self) -> Generator[Any, None, AsyncTextStream]:
        return self._opened().__await__()

    def __aiter__(self) -> AsyncTextStream:
        return self

    async def __anext__(self) -> TextChunk:
        chunks = await self._start()
        if chunks is None:
            raise StopAsyncIteration
        return await chunks.__anext__()

    async def aclose(self) -> None:
        """Stop reading and release the connection."""
        self._open = None
        if self._chunks is not None:
            await self._chunks.aclose()
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> AsyncTextStream:
        return await self._opened()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _EndpointBase:
    """What the sync and async endpoints share: where they send, with which key, what."""

    def __init__(self, *, base_url: str, project: str, workload_slug: str, api_key: str) -> None:
        self.base_url = base_url
        self.project = project
        self.workload_slug = workload_slug
        # The official client sends "default" when the slug is blank.
        self._model = workload_slug if workload_slug.strip() else "default"
        self._headers = _http.auth_headers(api_key)
        self._key_display = redact_token(api_key)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(project={self.project!r}, "
            f"workload_slug={self.workload_slug!r}, api_key={self._key_display!r})"
        )

    def _endpoint_path(self) -> str:
        project, workload = quote(self.project, safe=""), quote(self.workload_slug, safe="")
        return f"/endpoint/{project}/{workload}"

    def _path(self, route: str) -> str:
        return f"{self._endpoint_path()}/v1/{route}"

    def _jobs_path(self) -> str:
        return f"{self._endpoint_path()}/jobs"

    def _job_path(self, job_id: str) -> str:
        return f"{self._jobs_path()}/{quote(_jobs.check_job_id(job_id), safe='')}"

    def _chat(
        self,
        prompt: str | None,
        messages: Sequence[Message] | None,
        temperature: float | None,
        max_tokens: int | None,
        *,
        stream: bool,
    ) -> tuple[str, dict[str, Any]]:
        body = _chat_body(self._model, prompt, messages, temperature, max_tokens, stream=stream)
        return self._path("chat/completions"), body


class Endpoint(_EndpointBase):
    """One workload's inference routes, called with an ``ik_live_`` key.

    Get one from ``DataClient.endpoint``; it shares the client's connections.

    >>> from inferencekey import DataClient
    >>> ep = DataClient.from_env(project="acme").endpoint(  # doctest: +SKIP
    ...     "support-bot", api_key="ik_live_...")
    >>> ep.generate_text(prompt="Hola", temperature=0.2, max_tokens=300).text  # doctest: +SKIP
    '¡Hola! ¿En qué puedo ayudarte?'
    """

    def __init__(
        self,
        *,
        http: httpx.Client,
        base_url: str,
        project: str,
        workload_slug: str,
        api_key: str,
    ) -> None:
        super().__init__(
            base_url=base_url, project=project, workload_slug=workload_slug, api_key=api_key
        )
        self._http = http

    def _call(self, call: Call) -> Any:
        return _http.send(self._http, self.base_url, call, self._headers)

    def _step(self, step: Call | Pause) -> Any:
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            return None
        return self._call(step)

    def generate_text(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[Message] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> TextResult:
        """A chat completion. Give a ``prompt`` (one user turn) or ``messages``, not both.

        >>> out = ep.generate_text(prompt="Hola", temperature=0.2, max_tokens=300)  # doctest: +SKIP
        >>> out = ep.generate_text(messages=[  # doctest: +SKIP
        ...     {"role": "system", "content": "Answer in Spanish."},
        ...     {"role": "user", "content": "Hello"}])
        >>> out.text, out.model, out.finish_reason  # doctest: +SKIP
        ('Hola', 'Qwen/Qwen2.5-0.5B-Instruct', 'stop')
        """
        path, body = self._chat(prompt, messages, temperature, max_tokens, stream=False)
        return _http.run_steps(_generate_text_steps(path, body), self._call)

    def generate_text_stream(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[Message] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> TextStream:
        """A chat completion streamed as ``TextChunk`` deltas.

        The request is sent now, so an HTTP error (``AuthError``, ``PermissionDenied``, a 503
        ``ApiError`` while no replica is ready) raises here; the chunks are read as you iterate.

        >>> for chunk in ep.generate_text_stream(prompt="Cuéntame un chiste"):  # doctest: +SKIP
        ...     print(chunk.text, end="", flush=True)
        """
        path, body = self._chat(prompt, messages, temperature, max_tokens, stream=True)
        url = _http.join_url(self.base_url, path)
        return TextStream(
            _sse.open_event_stream(self._http, "POST", url, body=body, headers=self._headers)
        )

    def embed(self, *, input: str | Sequence[str]) -> EmbedResult:
        """Embed one text or a batch; a bare string is a batch of one.

        >>> ep.embed(input=["hola", "adiós"]).embeddings  # doctest: +SKIP
        [[0.0123, ...], [-0.0456, ...]]
        """
        body = _embed_body(self._model, input)
        return _http.run_steps(_embed_steps(self._path("embeddings"), body), self._call)

    def rerank(
        self, *, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> RerankResult:
        """Score ``documents`` against ``query``; results best first, by document index.

        >>> docs = ["Refunds within 30 days.", "We ship worldwide."]
        >>> ep.rerank(query="can I get my money back?", documents=docs).results  # doctest: +SKIP
        [RerankItem(index=0, relevance_score=0.93), RerankItem(index=1, relevance_score=0.02)]
        """
        body = _rerank_body(self._model, query, documents, top_n)
        return _http.run_steps(_rerank_steps(self._path("rerank"), body), self._call)

    def submit_job(
        self,
        kind: str,
        *,
        body: Mapping[str, Any] | None = None,
        body_b64: str | bytes | None = None,
        content_type: str | None = None,
        context: Any = UNSET,
    ) -> str:
        """Queue an async job; returns its id at once (the result comes later).

        ``kind`` names the sync route it stands for (``chat``, ``embeddings``, ``rerank``,
        ``images``, ``audio_transcriptions``, ...). Give ``body``, the JSON request that route
        takes, or ``body_b64`` (bytes, or a base64 string) with its ``content_type``, the raw
        request (multipart for file uploads). ``context`` (any JSON) comes back verbatim with
        the result. The workload's ``jobs`` endpoint and the kind's own must be on.

        >>> job_id = ep.submit_job("chat", body={"messages": [  # doctest: +SKIP
        ...     {"role": "user", "content": "Hola"}]}, context={"ticket": 42})
        >>> job_id = ep.submit_job("audio_transcriptions", body_b64=form,  # doctest: +SKIP
        ...                        content_type="multipart/form-data; boundary=x")
        """
        envelope = _jobs.job_envelope(kind, body, body_b64, content_type, context)
        return _http.run_steps(_submit_job_steps(self._jobs_path(), envelope), self._call)

    def get_job(self, job_id: str) -> Job:
        """The job as it is now: its status, and its result (``data``) once done.

        ``NotFoundError`` (code ``job_not_found``) for an id this workload does not know.

        >>> job = ep.get_job(job_id)  # doctest: +SKIP
        >>> job.status, job.done  # doctest: +SKIP
        ('running', False)
        """
        return _http.run_steps(_get_job_steps(self._job_path(job_id)), self._call)

    def wait_job(self, job_id: str, *, timeout: float = 600.0, poll_interval: float = 0.5) -> Job:
        """Poll the job until it succeeded or failed, and return it.

        The first poll waits 0.1 s, each next one twice as long, up to ``poll_interval``
        seconds. A failed job is returned, not raised: check ``job.status``
        (or ``job.data.error``). Raises ``JobTimeoutError`` (a ``TimeoutError``) after
        ``timeout`` seconds.

        >>> job_id = ep.submit_job("embeddings", body={"input": ["hola"]})  # doctest: +SKIP
        >>> job = ep.wait_job(job_id, timeout=120)  # doctest: +SKIP
        >>> job.status, len(job.data.payload["data"])  # doctest: +SKIP
        ('succeeded', 1)
        """
        steps = _jobs.wait_job_steps(self._job_path(job_id), job_id, timeout, poll_interval)
        return _http.run_steps(steps, self._step)


class AsyncEndpoint(_EndpointBase):
    """``Endpoint`` for asyncio: the same methods, awaited; streams with ``async for``.

    >>> ep = AsyncDataClient.from_env(project="acme").endpoint("support-bot")  # doctest: +SKIP
    >>> (await ep.generate_text(prompt="Hola")).text  # doctest: +SKIP
    '¡Hola!'
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        project: str,
        workload_slug: str,
        api_key: str,
    ) -> None:
        super().__init__(
            base_url=base_url, project=project, workload_slug=workload_slug, api_key=api_key
        )
        self._http = http

    async def _call(self, call: Call) -> Any:
        return await _http.send_async(self._http, self.base_url, call, self._headers)

    async def _step(self, step: Call | Pause) -> Any:
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            return None
        return await self._call(step)

    async def generate_text(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[Message] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> TextResult:
        """A chat completion; see ``Endpoint.generate_text``.

        >>> out = await ep.generate_text(prompt="Hola", max_tokens=300)  # doctest: +SKIP
        """
        path, body = self._chat(prompt, messages, temperature, max_tokens, stream=False)
        return await _http.run_steps_async(_generate_text_steps(path, body), self._call)

    def generate_text_stream(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[Message] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncTextStream:
        """A chat completion streamed as ``TextChunk`` deltas, for ``async for``.

        Local checks raise here; the request goes out at the first ``async for`` step, or
        at ``await`` if you await the stream first.

        >>> async for chunk in ep.generate_text_stream(prompt="Hola"):  # doctest: +SKIP
        ...     print(chunk.text, end="", flush=True)
        """
        path, body = self._chat(prompt, messages, temperature, max_tokens, stream=True)
        url = _http.join_url(self.base_url, path)

        def open_response() -> Awaitable[httpx.Response]:
            return _sse.open_event_stream_async(
                self._http, "POST", url, body=body, headers=self._headers
            )

        return AsyncTextStream(open_response)

    async def embed(self, *, input: str | Sequence[str]) -> EmbedResult:
        """Embed one text or a batch; see ``Endpoint.embed``.

        >>> (await ep.embed(input="hola")).embeddings  # doctest: +SKIP
        """
        body = _embed_body(self._model, input)
        return await _http.run_steps_async(_embed_steps(self._path("embeddings"), body), self._call)

    async def rerank(
        self, *, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> RerankResult:
        """Score ``documents`` against ``query``, best first; see ``Endpoint.rerank``.

        >>> (await ep.rerank(query="refunds", documents=docs, top_n=1)).results  # doctest: +SKIP
        """
        body = _rerank_body(self._model, query, documents, top_n)
        return await _http.run_steps_async(_rerank_steps(self._path("rerank"), body), self._call)

    async def submit_job(
        self,
        kind: str,
        *,
        body: Mapping[str, Any] | None = None,
        body_b64: str | bytes | None = None,
        content_type: str | None = None,
        context: Any = UNSET,
    ) -> str:
        """Queue an async job and return its id; see ``Endpoint.submit_job``.

        >>> job_id = await ep.submit_job("embeddings", body={"input": ["hola"]})  # doctest: +SKIP
        """
        envelope = _jobs.job_envelope(kind, body, body_b64, content_type, context)
        return await _http.run_steps_async(
            _submit_job_steps(self._jobs_path(), envelope), self._call
        )

    async def get_job(self, job_id: str) -> Job:
        """The job as it is now; see ``Endpoint.get_job``.

        >>> (await ep.get_job(job_id)).status  # doctest: +SKIP
        'queued'
        """
        return await _http.run_steps_async(_get_job_steps(self._job_path(job_id)), self._call)

    async def wait_job(
        self, job_id: str, *, timeout: float = 600.0, poll_interval: float = 0.5
    ) -> Job:
        """Poll the job until it succeeded or failed; see ``Endpoint.wait_job``.

        >>> job = await ep.wait_job(job_id, timeout=120)  # doctest: +SKIP
        """
        steps = _jobs.wait_job_steps(self._job_path(job_id), job_id, timeout, poll_interval)
        return await _http.run_steps_async(steps, self._step)


class _DataBase:
    """Configuration shared by the sync and async clients."""

    def __init__(self, *, base_url: str, project: str, api_key: str | None = None) -> None:
        resolved = present(project)
        if resolved is None:
            raise ConfigurationError("DataClient requires a project slug.")
        self.base_url = _http.normalize_base_url(base_url)
        self.project = resolved
        self._default_key = present(api_key)

    def __repr__(self) -> str:
        key = redact_token(self._default_key) if self._default_key else None
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, project={self.project!r}, "
            f"api_key={key!r})"
        )

    @classmethod
    def _env_kwargs(
        cls, base_url: str | None, project: str | None, api_key: str | None
    ) -> dict[str, Any]:
        return {
            "base_url": from_env(base_url, "INFERENCEKEY_BASE_URL") or DEFAULT_BASE_URL,
            "project": from_env(project, "INFERENCEKEY_PROJECT") or "",
            "api_key": from_env(api_key, "INFERENCEKEY_API_KEY"),
        }

    def _key_for(self, workload_slug: str, api_key: str | None) -> str:
        return check_live_key(present(api_key) or self._default_key, workload_slug)


class DataClient(_DataBase):
    """Data-plane client for one project; ``endpoint()`` gives a workload's inference routes.

    The key is per endpoint: ``endpoint(..., api_key=)`` > the client's ``api_key`` >
    ``INFERENCEKEY_API_KEY`` (with ``from_env``). Never reads ``INFERENCEKEY_SDK_TOKEN``.

    >>> from inferencekey import DataClient
    >>> out = (DataClient.from_env(project="acme")  # doctest: +SKIP
    ...        .endpoint("support-bot", api_key="ik_live_...")
    ...        .generate_text(prompt="Hola", temperature=0.2, max_tokens=300))
    >>> print(out.text)  # doctest: +SKIP
    ¡Hola! ¿En qué puedo ayudarte?
    """

    def __init__(
        self,
        *,
        base_url: str,
        project: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(base_url=base_url, project=project, api_key=api_key)
        self._http = httpx.Client(timeout=timeout)

    @classmethod
    def from_env(
        cls,
        *,
        base_url: str | None = None,
        project: str | None = None,
        api_key: str | None = None,
    ) -> DataClient:
        """Build a client from arguments, falling back to the environment.

        Explicit argument > ``INFERENCEKEY_BASE_URL`` (default ``https://api.inferencekey.com``),
        ``INFERENCEKEY_PROJECT``, ``INFERENCEKEY_API_KEY`` (trimmed; blank counts as unset).

        >>> client = DataClient.from_env(project="acme")  # doctest: +SKIP
        """
        return cls(**cls._env_kwargs(base_url, project, api_key))

    def endpoint(self, workload_slug: str, *, api_key: str | None = None) -> Endpoint:
        """The workload's inference routes, using ``api_key`` or the client's default key.

        Makes no request. Raises ``ConfigurationError`` if there is no key, and
        ``PermissionDenied`` (``wrong_credential_type``) for an ``ik_sdk_`` token.

        >>> ep = client.endpoint("support-bot", api_key="ik_live_...")  # doctest: +SKIP
        """
        return Endpoint(
            http=self._http,
            base_url=self.base_url,
            project=self.project,
            workload_slug=workload_slug,
            api_key=self._key_for(workload_slug, api_key),
        )

    def close(self) -> None:
        """Release the connection pool (every endpoint of this client shares it)."""
        self._http.close()

    def __enter__(self) -> DataClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncDataClient(_DataBase):
    """``DataClient`` for asyncio: its endpoints' methods are awaited.

    >>> async with AsyncDataClient.from_env(project="acme") as client:  # doctest: +SKIP
    ...     ep = client.endpoint("support-bot", api_key="ik_live_...")
    ...     out = await ep.generate_text(prompt="Hola", temperature=0.2, max_tokens=300)
    ...     async for chunk in ep.generate_text_stream(prompt="Hola"):
    ...         print(chunk.text, end="")
    """

    def __init__(
        self,
        *,
        base_url: str,
        project: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(base_url=base_url, project=project, api_key=api_key)
        self._http = httpx.AsyncClient(timeout=timeout)

    @classmethod
    def from_env(
        cls,
        *,
        base_url: str | None = None,
        project: str | None = None,
        api_key: str | None = None,
    ) -> AsyncDataClient:
        """Build a client from arguments, falling back to the environment (as the sync one).

        >>> client = AsyncDataClient.from_env(project="acme")  # doctest: +SKIP
        """
        return cls(**cls._env_kwargs(base_url, project, api_key))

    def endpoint(self, workload_slug: str, *, api_key: str | None = None) -> AsyncEndpoint:
        """The workload's inference routes; see ``DataClient.endpoint``. Makes no request.

        >>> ep = client.endpoint("support-bot")  # doctest: +SKIP
        """
        return AsyncEndpoint(
            http=self._http,
            base_url=self.base_url,
            project=self.project,
            workload_slug=workload_slug,
            api_key=self._key_for(workload_slug, api_key),
        )

    async def close(self) -> None:
        """Release the connection pool (every endpoint of this client shares it)."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncDataClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
