"""The job envelope of contract section 8: ``{kind, body | body_b64 + content_type, context}``.

Every rule is a 400 that says which; what passes is the request the sync twin would get.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from manager.errors import ValidationFailed

# Each kind (and alias) and the sync route it is sent to.
KINDS: dict[str, str] = {
    "chat": "v1/chat/completions",
    "chat_completions": "v1/chat/completions",
    "embeddings": "v1/embeddings",
    "rerank": "v1/rerank",
    "reranking": "v1/rerank",
    "audio_speech": "v1/audio/speech",
    "audio_generate": "v1/audio/generate",
    "audio_transcriptions": "v1/audio/transcriptions",
    "images": "v1/images/generations",
    "images_generations": "v1/images/generations",
    "images_edits": "v1/images/edits",
    "images_variations": "v1/images/variations",
    "forecast": "forecast",
    # Async only; the route is the engine's own (Engine.job_routes), these are vLLM's.
    "classification": "classify",
    "reward": "pooling",
}
ASYNC_ONLY_KINDS = frozenset({"classification", "reward"})
CHAT_ROUTE = "v1/chat/completions"
JSON = "application/json"
MAX_CONTENT_TYPE = 1024
# What the job's request may carry as its Content-Type header (sent as it is, boundary and all).
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+")


@dataclass(frozen=True)
class Envelope:
    kind: str
    route: str  # the sync twin the job is sent to
    body: bytes
    content_type: str
    context: str | None  # the caller's context as JSON text; None when none was sent


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_envelope(raw: bytes) -> Envelope:
    try:
        # NaN and Infinity are not JSON: a context holding one could not be delivered.
        envelope = json.loads(raw, parse_constant=_refuse_constant)
    except ValueError as error:
        raise ValidationFailed(f"the job envelope is not JSON: {error}"[:200]) from None
    except RecursionError:
        raise ValidationFailed("the job envelope is nested too deeply") from None
    if not isinstance(envelope, dict):
        raise ValidationFailed("the job envelope must be a JSON object")
    unknown = sorted(set(envelope) - {"kind", "body", "body_b64", "content_type", "context"})
    if unknown:
        raise ValidationFailed(f"unknown envelope field(s): {', '.join(unknown)}", field=unknown[0])
    kind = envelope.get("kind")
    if kind == "audio_voices":
        raise ValidationFailed(
            "kind 'audio_voices' cannot be submitted as a job: call GET .../v1/audio/voices",
            field="kind",
        )
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValidationFailed(
            f"kind must be one of {', '.join(KINDS)}; got {str(kind)[:40]!r}", field="kind"
        )
    route = KINDS[kind]
    has_body, has_b64 = "body" in envelope, "body_b64" in envelope
    if has_body == has_b64:
        raise ValidationFailed(
            "give exactly one of body (a JSON object) or body_b64 with content_type",
            field="body",
        )
    context = json.dumps(envelope["context"]) if "context" in envelope else None
    if has_body:
        if "content_type" in envelope:
            raise ValidationFailed("content_type goes with body_b64 only", field="content_type")
        body = envelope["body"]
        if not isinstance(body, dict):
            raise ValidationFailed("body must be a JSON object", field="body")
        if route == CHAT_ROUTE:
            _check_chat(body)
        body = {key: value for key, value in body.items() if key != "stream"}  # never streamed
        return Envelope(kind, route, json.dumps(body).encode(), JSON, context)
    if route == CHAT_ROUTE:
        raise ValidationFailed("a chat job takes body, not body_b64", field="body_b64")
    content_type = envelope.get("content_type")
    if not isinstance(content_type, str) or not content_type.strip():
        raise ValidationFailed("content_type is required with body_b64", field="content_type")
    if len(content_type) > MAX_CONTENT_TYPE or not _HEADER_VALUE.fullmatch(content_type):
        raise ValidationFailed(
            f"content_type must be a header value: printable ASCII, at most {MAX_CONTENT_TYPE} "
            "characters",
            field="content_type",
        )
    encoded = envelope["body_b64"]
    if not isinstance(encoded, str):
        raise ValidationFailed("body_b64 must be a base64 string", field="body_b64")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed("body_b64 is not valid base64", field="body_b64") from None
    return Envelope(kind, route, data, content_type, context)


def _check_chat(body: dict[str, Any]) -> None:
    """The chat request's shape (OpenAI's): a non-empty list of messages with a role each."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValidationFailed(
            "a chat body needs messages: a non-empty list", field="body.messages"
        )
    for index, message in enumerate(messages):
        where = f"body.messages[{index}]"
        if not isinstance(message, dict):
            raise ValidationFailed(f"{where} must be an object", field=where)
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise ValidationFailed(f"{where}.role must be a string", field=f"{where}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ValidationFailed(
                f"{where}.content must be a string, a list of parts or null",
                field=f"{where}.content",
            )
