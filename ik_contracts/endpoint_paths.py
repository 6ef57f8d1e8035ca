"""What a data-plane request may ask for, checked the same way at the gateway and at the agent.

The path is split on its raw bytes, each segment percent-decoded once, dot segments resolved,
and the result must be one of the contract's routes, so what is forwarded is always one of a
few known ASCII strings. A percent-encoded CR/LF or space can never become part of a request
line, and engine management paths (`/health`, `/slots`, `/metrics`, Ollama's `/api/*`) are never
reachable with a data-plane key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from inferencekey.enums import TaskType

T = TaskType
# The data-plane routes and the task types that serve them (contract sections 1c and 5).
ROUTE_TASK_TYPES: dict[str, frozenset[str]] = {
    "v1/chat/completions": frozenset({T.TEXT2TEXT.value, T.OMNI.value}),
    "v1/completions": frozenset({T.TEXT2TEXT.value}),
    "v1/embeddings": frozenset({T.EMBEDDING.value}),
    "v1/rerank": frozenset({T.RERANKER.value}),
    "v1/images/generations": frozenset({T.TEXT2IMAGE.value}),
    "v1/images/edits": frozenset({T.TEXT2IMAGE.value, T.IMAGE2IMAGE.value}),
    "v1/images/variations": frozenset({T.TEXT2IMAGE.value, T.IMAGE2IMAGE.value}),
    "v1/audio/speech": frozenset({T.TEXT2AUDIO.value}),
    "v1/audio/generate": frozenset({T.TEXT2AUDIO.value}),
    "v1/audio/voices": frozenset({T.TEXT2AUDIO.value}),
    "v1/audio/transcriptions": frozenset({T.AUDIO2TEXT.value}),
    "forecast": frozenset({T.FORECAST.value}),
    # Async only (jobs of kind classification and reward), on engines that have them.
    "classify": frozenset({T.CLASSIFICATION.value}),
    "pooling": frozenset({T.REWARD.value}),
    "v1/models": frozenset(t.value for t in TaskType),
}
# Each route's endpoint toggle (a workload may switch it off); v1/models has none. The async
# surface's master switch is JOBS_TOGGLE; a job's kind is governed by its route's toggle too.
ROUTE_TOGGLES: dict[str, str] = {
    "v1/chat/completions": "chat",
    "v1/completions": "completions",
    "v1/embeddings": "embeddings",
    "v1/rerank": "rerank",
    "v1/images/generations": "images",
    "v1/images/edits": "images_edits",
    "v1/images/variations": "images_variations",
    "v1/audio/speech": "audio_speech",
    "v1/audio/generate": "audio_generate",
    "v1/audio/voices": "audio_voices",
    "v1/audio/transcriptions": "audio_transcriptions",
    "forecast": "forecast",
    "classify": "classification",
    "pooling": "reward",
}
JOBS_TOGGLE = "jobs"


def task_type_toggles(task_type: str) -> list[str]:
    """The toggles a workload of this task type has: ``jobs`` and one per route it serves."""
    return [JOBS_TOGGLE] + [
        toggle for route, toggle in ROUTE_TOGGLES.items() if task_type in ROUTE_TASK_TYPES[route]
    ]


PREFIX = b"/endpoint/"
# Project ids and slugs, workload slugs: what the control plane lets one be named.
NAME_PATTERN = rb"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"
_NAME = re.compile(NAME_PATTERN.decode() + r"\Z")
# A path with no escapes, dot segments or doubled slashes: taken as it is.
_PLAIN_PATH = re.compile(
    rb"/endpoint/(" + NAME_PATTERN + rb")/(" + NAME_PATTERN + rb")/"
    rb"((?:[A-Za-z0-9_-]+/)*[A-Za-z0-9_-]+)\Z"
)
# Bytes a query string may carry on as they are; any other is percent-encoded.
_QUERY_UNSAFE = re.compile(rb"[^\x21-\x7e]|#")


class EndpointPathError(ValueError):
    """The path names no route this data plane serves (answered as a typed 404)."""


@dataclass(frozen=True)
class EndpointTarget:
    project: str
    workload: str
    route: str  # one of ROUTE_TASK_TYPES' keys
    query: bytes  # printable ASCII only

    def upstream_target(self, *, with_prefix: bool) -> str:
        """The request target to send on: the canonical route and the re-encoded query."""
        path = (
            f"/endpoint/{self.project}/{self.workload}/{self.route}"
            if with_prefix
            else f"/{self.route}"
        )
        return f"{path}?{self.query.decode('ascii')}" if self.query else path


def parse_endpoint_target(raw_path: bytes, query: bytes) -> EndpointTarget:
    """``/endpoint/{project}/{workload}/{route}`` from the raw (undecoded) path of a request.

    Raises EndpointPathError for anything else; the message is safe to show (it quotes no byte
    of the request).
    """
    plain = _PLAIN_PATH.match(raw_path)
    if plain is not None and (route := plain[3].decode()) in ROUTE_TASK_TYPES:
        # The common case, nothing to decode or resolve (every request pays for this check).
        return EndpointTarget(
            project=plain[1].decode(),
            workload=plain[2].decode(),
            route=route,
            query=safe_query(query),
        )
    if not raw_path.startswith(PREFIX):
        raise EndpointPathError("use /endpoint/{project}/{workload}/v1/...")
    segments = [_decode_segment(part) for part in raw_path[len(PREFIX) :].split(b"/")]
    if len(segments) < 3:
        raise EndpointPathError("use /endpoint/{project}/{workload}/v1/...")
    project, workload = segments[0], segments[1]
    if not _NAME.match(project) or not _NAME.match(workload):
        raise EndpointPathError("no such project or workload")
    route = "/".join(_resolve_dots(segments[2:]))
    if route not in ROUTE_TASK_TYPES:
        raise EndpointPathError(
            "not a data-plane route; the routes are " + ", ".join(sorted(ROUTE_TASK_TYPES))
        )
    return EndpointTarget(project=project, workload=workload, route=route, query=safe_query(query))


def safe_query(query: bytes) -> bytes:
    """The query string with every byte outside printable ASCII (and '#') percent-encoded."""
    if not query or not _QUERY_UNSAFE.search(query):
        return query
    return _QUERY_UNSAFE.sub(lambda match: b"%%%02X" % match.group()[0], query)


def _decode_segment(raw: bytes) -> str:
    decoded = unquote_to_bytes(raw)
    # A decoded "/" would smuggle a segment past the dot resolution; control bytes, spaces
    # and non-ASCII are in no route or name.
    if any(byte <= 0x20 or byte >= 0x7F or byte == 0x2F for byte in decoded):
        raise EndpointPathError("the path holds bytes no route or name has")
    return decoded.decode("ascii")


def _resolve_dots(segments: list[str]) -> list[str]:
    resolved: list[str] = []
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not resolved:
                raise EndpointPathError("the path climbs out of the workload's routes")
            resolved.pop()
            continue
        resolved.append(segment)
    return resolved
