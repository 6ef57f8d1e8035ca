"""OpenAI routes onto a custom backend's runtime, and its answers back (contract sections 1d, 11).

A custom backend serves `POST /process` (`{"id", "input"}` → `{"output"}`) and `POST /forecast`,
not OpenAI. What each data-plane route becomes:

=============================  ==========================================  =====================
route                          sent to the backend                          answered as
=============================  ==========================================  =====================
v1/chat/completions            /process ``input.messages``                  chat.completion from
                                                                            ``output.text``
v1/completions                 /process ``input.prompt``                    text_completion
v1/embeddings                  /process ``input.input``                     ``{"object": "list",
                                                                            "data": [{embedding}]}``
                                                                            from
                                                                            ``output.embeddings``
v1/audio/transcriptions,       /process ``input.raw_body_b64`` +            transcription
v1/images/edits|variations     ``input.raw_body_content_type`` (the         ``{"text", …}``; the
                               caller's multipart body, byte for byte)      image shape
v1/images/generations,         /process ``input.passthrough_body`` (the     ``{"created", "data":
v1/audio/speech|generate,      caller's JSON, verbatim)                     [{"b64_json"}]}``; raw
v1/rerank, classify, pooling                                                audio bytes; the
                                                                            output as it is
GET v1/audio/voices            /process ``input.list_voices = true``        ``{"voices": [...]}``
forecast                       /forecast, the caller's body (an ``id`` is   the backend's answer
                               added when it has none)                      as it is
GET v1/models                  nothing: answered from the served model
=============================  ==========================================  =====================

Choices the contract leaves open:
- ``stream: true`` on chat or completions is answered as one SSE event holding the whole answer,
  then ``data: [DONE]``: a backend answers whole, and every streaming client still works.
- Images: an output already in OpenAI's shape (``data`` a list) passes as it is (``created``
  added when missing); ``{"b64_json": …}`` or ``{"images": [b64, …]}`` are wrapped into it.
- Audio: ``{"audio_b64", "content_type"}`` is answered as the raw bytes with that Content-Type
  (``application/octet-stream`` when it names none).
- Voices: ``GET v1/audio/voices`` sends ``{"list_voices": true}`` and expects ``output.voices``.

The backend's errors: 400 → 400 ``invalid_input`` with its message; 501 → 501
``not_implemented``; 503 → 503 ``backend_not_ready`` (another replica may serve it); 500 or any
other status → 502 ``backend_error`` with its message. A request whose bridged body would pass the
runtime's 16 MiB cap is refused here with 413, an answer past 64 MiB with 502. Bodies past 256 KiB
(images, audio) are mapped on a thread (``bridge_request``, ``bridge_answer``), not on the event
loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ik_contracts.errors import problem

# The custom-backend runtime's request body cap (contract section 1d).
MAX_BACKEND_BODY_BYTES = 16 * 1024 * 1024
# The most of a backend's answer the agent reads (it is held whole, then mapped).
MAX_BACKEND_ANSWER_BYTES = 64 * 1024 * 1024
# Bodies larger than this are mapped (base64, JSON) on a thread rather than the event loop.
OFF_LOOP_BYTES = 256 * 1024
PROCESS_PATH = "/process"
FORECAST_PATH = "/forecast"
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
# Routes answered without a /process call.
MODELS_ROUTE = "v1/models"

_JSON_ROUTES = frozenset(
    {
        "v1/chat/completions",
        "v1/completions",
        "v1/embeddings",
        "v1/rerank",
        "v1/images/generations",
        "v1/audio/speech",
        "v1/audio/generate",
        "forecast",
        "classify",
        "pooling",
    }
)
_MULTIPART_ROUTES = frozenset(
    {"v1/audio/transcriptions", "v1/images/edits", "v1/images/variations"}
)
_GET_ROUTES = frozenset({"v1/audio/voices", MODELS_ROUTE})
_PASSTHROUGH_ROUTES = frozenset(
    {
        "v1/images/generations",
        "v1/audio/speech",
        "v1/audio/generate",
        "v1/rerank",
        "classify",
        "pooling",
    }
)
BRIDGED_ROUTES = _JSON_ROUTES | _MULTIPART_ROUTES | _GET_ROUTES
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,255}\Z")


class BridgeError(Exception):
    """A request the bridge refuses, or a backend answer it cannot map; answered as ``problem``."""

    def __init__(self, status: int, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retryable = status, code, message, retryable

    def answer(self) -> BridgedAnswer:
        body = json.dumps(problem(self.code, self.message)).encode()
        return BridgedAnswer(self.status, JSON_TYPE, body, retryable=self.retryable)


@dataclass(frozen=True)
class BackendCall:
    """What to send the backend for one public request, and what the answer is mapped to."""

    route: str
    path: str  # PROCESS_PATH or FORECAST_PATH; always POSTed as JSON
    body: bytes
    job_id: str
    stream: bool = False  # the caller asked for server-sent events


@dataclass(frozen=True)
class BridgedAnswer:
    status: int
    content_type: str
    body: bytes
    # Another replica may serve the request (the gateway's retry marker).
    retryable: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def backend_call(
    route: str, method: str, body: bytes, content_type: str, *, job_id: str | None = None
) -> BackendCall:
    """The backend request for a public one; raises BridgeError (a 4xx) for a request it cannot
    carry. ``content_type`` is the caller's, verbatim."""
    if route not in BRIDGED_ROUTES or route == MODELS_ROUTE:
        raise BridgeError(404, "route_not_found", f"a custom backend does not serve {route}")
    expected = "GET" if route in _GET_ROUTES else "POST"
    if method != expected:
        raise BridgeError(405, "method_not_allowed", f"{route} takes {expected}")
    job_id = job_id or uuid.uuid4().hex
    stream = False
    path = PROCESS_PATH
    if route == "v1/audio/voices":
        payload: Any = {"id": job_id, "input": {"list_voices": True}}
    elif route in _MULTIPART_ROUTES:
        payload = {
            "id": job_id,
            "input": {
                "raw_body_b64": base64.b64encode(body).decode("ascii"),
                "raw_body_content_type": content_type or "application/octet-stream",
            },
        }
    else:
        request = _json_object(body)
        if route == "forecast":
            path = FORECAST_PATH
            payload = request if request.get("id") else {**request, "id": job_id}
        elif route in _PASSTHROUGH_ROUTES:
            payload = {"id": job_id, "input": {"passthrough_body": request}}
        elif route == "v1/chat/completions":
            messages = request.get("messages")
            if not isinstance(messages, list):
                raise BridgeError(400, "invalid_input", "messages must be a list of messages")
            payload = {"id": job_id, "input": {"messages": messages, **_params(request)}}
            stream = request.get("stream") is True
        elif route == "v1/completions":
            prompt = _prompt(request.get("prompt"))
            payload = {"id": job_id, "input": {"prompt": prompt, **_params(request)}}
            stream = request.get("stream") is True
        else:  # v1/embeddings
            if "input" not in request:
                raise BridgeError(400, "invalid_input", "input is required")
            payload = {"id": job_id, "input": {"input": request["input"]}}
    encoded = json.dumps(payload, separators=(",", ":")).encode()
    if len(encoded) > MAX_BACKEND_BODY_BYTES:
        raise BridgeError(
            413,
            "body_too_large",
            f"a custom backend takes request bodies of at most {MAX_BACKEND_BODY_BYTES} bytes; "
            f"this one is {len(encoded)} bytes once encoded for it (multipart bodies grow by a "
            "third in base64)",
        )
    return BackendCall(route=route, path=path, body=encoded, job_id=job_id, stream=stream)


def backend_answer(
    call: BackendCall, status: int, body: bytes, *, model: str, now: float | None = None
) -> BridgedAnswer:
    """The public answer for the backend's ``status`` and ``body``; ``model`` is the name the
    answers carry (the served model, else the workload slug)."""
    try:
        if status != 200:
            raise _backend_error(status, body)
        created = int(time.time() if now is None else now)
        if call.path == FORECAST_PATH:
            answer = _json_object(body, who="the backend's answer", status=502)
            if not isinstance(answer.get("forecast"), dict):
                raise _bad_output("its answer has no forecast object")
            return _json(answer)
        output = _json_object(body, who="the backend's answer", status=502).get("output")
        if not isinstance(output, dict):
            raise _bad_output("its answer has no output object")
        shape = _SHAPES[call.route]
        return shape(call, output, model, created)
    except BridgeError as error:
        return error.answer()


async def bridge_request(
    route: str, method: str, body: bytes, content_type: str, *, job_id: str | None = None
) -> BackendCall:
    """``backend_call``, on a thread when the body is large."""
    if len(body) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(
            backend_call, route, method, body, content_type, job_id=job_id
        )
    return backend_call(route, method, body, content_type, job_id=job_id)


async def bridge_answer(
    call: BackendCall, status: int, body: bytes, *, model: str
) -> BridgedAnswer:
    """``backend_answer``, on a thread when the body is large."""
    if len(body) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(backend_answer, call, status, body, model=model)
    return backend_answer(call, status, body, model=model)


def models_answer(model: str, now: float | None = None) -> BridgedAnswer:
    """``GET v1/models`` of a custom backend: the one model it serves."""
    created = int(time.time() if now is None else now)
    return _json(
        {
            "object": "list",
            "data": [{"id": model, "object": "model", "created": created, "owned_by": "custom"}],
        }
    )


# --- requests ----------------------------------------------------------------------------------


def _json_object(
    body: bytes, *, who: str = "the request body", status: int = 400
) -> dict[str, Any]:
    code = "invalid_input" if status == 400 else "backend_error"
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BridgeError(status, code, f"{who} is not JSON: {error}"[:300]) from None
    except RecursionError:
        raise BridgeError(status, code, f"{who} is nested too deeply") from None
    if not isinstance(value, dict):
        raise BridgeError(status, code, f"{who} must be a JSON object")
    return value


# The sampling settings of a chat or completion request a backend may honour, passed on as
# ``input.params`` beside the contract's ``messages`` / ``prompt``.
_SAMPLING = ("temperature", "top_p", "max_tokens", "stop", "seed")


def _params(request: dict[str, Any]) -> dict[str, Any]:
    params = {name: request[name] for name in _SAMPLING if request.get(name) is not None}
    return {"params": params} if params else {}


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BridgeError(400, "invalid_input", "prompt must be a string")
    return prompt


# --- answers -----------------------------------------------------------------------------------


def _backend_error(status: int, body: bytes) -> BridgeError:
    message = _error_message(body) or f"HTTP {status}"
    if status == 400:
        return BridgeError(400, "invalid_input", message)
    if status == 501:
        return BridgeError(501, "not_implemented", message)
    if status == 503:
        return BridgeError(503, "backend_not_ready", message, retryable=True)
    return BridgeError(502, "backend_error", f"the custom backend failed: {message}")


def _error_message(body: bytes) -> str:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body[:300].decode("utf-8", errors="replace").strip()
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return value["error"][:1000]
    return ""


def _bad_output(why: str) -> BridgeError:
    return BridgeError(502, "backend_error", f"the custom backend's answer is unusable: {why}")


def _json(value: dict[str, Any]) -> BridgedAnswer:
    return BridgedAnswer(200, JSON_TYPE, json.dumps(value).encode())


def _text(output: dict[str, Any]) -> str:
    text = output.get("text")
    if not isinstance(text, str):
        raise _bad_output("output.text is not a string")
    return text


def _usage(output: dict[str, Any]) -> dict[str, Any]:
    usage = output.get("usage")
    return {"usage": usage} if isinstance(usage, dict) else {}


def _sse(event: dict[str, Any]) -> BridgedAnswer:
    body = b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n"
    return BridgedAnswer(200, SSE_TYPE, body, extra={"cache-control": "no-cache"})


def _chat(call: BackendCall, output: dict[str, Any], model: str, created: int) -> BridgedAnswer:
    text = _text(output)
    head = {"id": f"chatcmpl-{call.job_id}", "created": created, "model": model}
    if call.stream:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        return _sse(
            {**head, "object": "chat.completion.chunk", "choices": [choice], **_usage(output)}
        )
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
    }
    return _json({**head, "object": "chat.completion", "choices": [choice], **_usage(output)})


def _completion(
    call: BackendCall, output: dict[str, Any], model: str, created: int
) -> BridgedAnswer:
    answer = {
        "id": f"cmpl-{call.job_id}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": _text(output), "finish_reason": "stop"}],
        **_usage(output),
    }
    return _sse(answer) if call.stream else _json(answer)


def _embeddings(
    call: BackendCall, output: dict[str, Any], model: str, created: int
) -> BridgedAnswer:
    if isinstance(output.get("data"), list):
        return _json({"object": "list", "model": model, **output})
    vectors = output.get("embeddings")
    if not isinstance(vectors, list) or not all(isinstance(v, list) for v in vectors):
        raise _bad_output("output.embeddings is not a list of vectors")
    data = [
        {"object": "embedding", "index": index, "embedding": vector}
        for index, vector in enumerate(vectors)
    ]
    return _json({"object": "list", "data": data, "model": model, **_usage(output)})


def _images(call: BackendCall, output: dict[str, Any], model: str, created: int) -> BridgedAnswer:
    if isinstance(output.get("data"), list):
        return _json({"created": created, **output})
    if isinstance(output.get("b64_json"), str):
        items = [{"b64_json": output["b64_json"]}]
    elif isinstance(output.get("images"), list) and all(
        isinstance(image, str) for image in output["images"]
    ):
        items = [{"b64_json": image} for image in output["images"]]
    else:
        raise _bad_output("expected OpenAI's image shape, data[].b64_json")
    return _json({"created": created, "data": items})


def _audio(call: BackendCall, output: dict[str, Any], model: str, created: int) -> BridgedAnswer:
    encoded = output.get("audio_b64")
    if not isinstance(encoded, str):
        raise _bad_output("output.audio_b64 is not a base64 string")
    try:
        audio = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _bad_output("output.audio_b64 is not valid base64") from None
    content_type = output.get("content_type") or "application/octet-stream"
    if not isinstance(content_type, str) or not _HEADER_VALUE.match(content_type):
        raise _bad_output("output.content_type is not a media type")
    return BridgedAnswer(200, content_type, audio)


def _voices(call: BackendCall, output: dict[str, Any], model: str, created: int) -> BridgedAnswer:
    voices = output.get("voices")
    if not isinstance(voices, list):
        raise _bad_output("output.voices is not a list")
    return _json({"voices": voices})


def _transcription(
    call: BackendCall, output: dict[str, Any], model: str, created: int
) -> BridgedAnswer:
    return _json({"text": _text(output), **{k: v for k, v in output.items() if k != "text"}})


def _as_is(call: BackendCall, output: dict[str, Any], model: str, created: int) -> BridgedAnswer:
    return _json(output)


_SHAPES: dict[str, Callable[[BackendCall, dict[str, Any], str, int], BridgedAnswer]] = {
    "v1/chat/completions": _chat,
    "v1/completions": _completion,
    "v1/embeddings": _embeddings,
    "v1/rerank": _as_is,
    "v1/images/generations": _images,
    "v1/images/edits": _images,
    "v1/images/variations": _images,
    "v1/audio/speech": _audio,
    "v1/audio/generate": _audio,
    "v1/audio/voices": _voices,
    "v1/audio/transcriptions": _transcription,
    "classify": _as_is,
    "pooling": _as_is,
}
