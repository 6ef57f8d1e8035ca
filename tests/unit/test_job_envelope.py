"""The job envelope's rules (contract section 8), each a 400 that says which."""

from __future__ import annotations

import base64
import json

import pytest

from manager.errors import ValidationFailed
from manager.jobs.envelope import KINDS, parse_envelope
from manager.jobs.service import parse_jobs_path

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


def envelope(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_a_chat_job_is_the_sync_request_without_stream_and_keeps_the_context_verbatim() -> None:
    context = {"order": 7, "tags": ["a", None], "nested": {"x": 1.5}}
    parsed = parse_envelope(envelope(kind="chat", body={**CHAT, "stream": True}, context=context))
    assert parsed.route == "v1/chat/completions"
    assert parsed.content_type == "application/json"
    assert json.loads(parsed.body) == CHAT
    assert json.loads(parsed.context or "") == context
    assert parse_envelope(envelope(kind="chat_completions", body=CHAT)).context is None
    assert parse_envelope(envelope(kind="chat", body=CHAT, context=None)).context == "null"


def test_binary_bodies_keep_their_bytes_and_content_type() -> None:
    raw = b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\n\x00\x01\r\n--b--\r\n"
    parsed = parse_envelope(
        envelope(
            kind="audio_transcriptions",
            body_b64=base64.b64encode(raw).decode(),
            content_type="multipart/form-data; boundary=b",
        )
    )
    assert (parsed.body, parsed.content_type) == (raw, "multipart/form-data; boundary=b")
    assert parsed.route == "v1/audio/transcriptions"


def test_every_kind_and_alias_maps_to_its_sync_twin() -> None:
    assert KINDS["reranking"] == KINDS["rerank"] == "v1/rerank"
    assert KINDS["images"] == KINDS["images_generations"] == "v1/images/generations"
    assert KINDS["forecast"] == "forecast"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"kind": "poetry", "body": CHAT}, "kind must be one of chat, chat_completions,"),
        ({"body": CHAT}, "kind must be one of"),
        ({"kind": "audio_voices", "body": {}}, "'audio_voices' cannot be submitted"),
        ({"kind": "embeddings"}, "exactly one of body"),
        (
            {
                "kind": "embeddings",
                "body": {"input": ["a"]},
                "body_b64": "YQ==",
                "content_type": "x",
            },
            "exactly one of body",
        ),
        ({"kind": "chat", "body_b64": "YQ==", "content_type": "text/plain"}, "takes body, not"),
        ({"kind": "images_edits", "body_b64": "YQ=="}, "content_type is required"),
        ({"kind": "images_edits", "body_b64": "not base64!", "content_type": "a/b"}, "not valid"),
        ({"kind": "chat", "body": {"messages": []}}, "needs messages: a non-empty list"),
        ({"kind": "chat", "body": {"messages": [{"content": "x"}]}}, "messages[0].role"),
        ({"kind": "chat", "body": {"messages": [{"role": "user", "content": 5}]}}, "content"),
        ({"kind": "embeddings", "body": ["a"]}, "body must be a JSON object"),
        ({"kind": "embeddings", "body": {}, "content_type": "a/b"}, "goes with body_b64"),
        ({"kind": "embeddings", "body": {}, "priority": 1}, "unknown envelope field(s): priority"),
        (
            {"kind": "images_edits", "body_b64": "YQ==", "content_type": "a/b\r\nX-Evil: 1"},
            "content_type must be a header value",
        ),
        (
            {"kind": "images_edits", "body_b64": "YQ==", "content_type": "image/pngé"},
            "content_type must be a header value",
        ),
        (
            {"kind": "images_edits", "body_b64": "YQ==", "content_type": "a/" + "b" * 1100},
            "at most 1024 characters",
        ),
    ],
)
def test_each_envelope_rule_is_a_400_that_says_which(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_envelope(json.dumps(fields).encode())
    assert words in caught.value.message


def test_an_envelope_that_is_not_a_json_object_is_refused() -> None:
    for raw in (b"{", b"[]", b'"chat"'):
        with pytest.raises(ValidationFailed):
            parse_envelope(raw)


def test_nan_and_infinity_are_refused_as_not_json() -> None:
    # Python's json reads them, but no receiver of the webhook that carries the context could.
    for constant in ("NaN", "Infinity", "-Infinity"):
        raw = b'{"kind": "embeddings", "body": {"input": ["a"]}, "context": {"x": %s}}' % (
            constant.encode()
        )
        with pytest.raises(ValidationFailed) as caught:
            parse_envelope(raw)
        assert f"{constant.lstrip('-')} is not JSON" in caught.value.message
    nested = b'{"kind": "embeddings", "body": {"input": ["a"]}, "context": ' + b"[" * 100_000
    with pytest.raises(ValidationFailed):
        parse_envelope(nested + b"]" * 100_000 + b"}")


def test_only_the_exact_jobs_paths_are_jobs_paths() -> None:
    job_id = "0b0c6f4e-3f1a-4d39-8f6e-2f1d6c0a9b7e"
    path = parse_jobs_path(b"/endpoint/p-1/w_2/jobs")
    assert path is not None and (path.project, path.workload, path.job_id) == ("p-1", "w_2", None)
    path = parse_jobs_path(f"/endpoint/p/w/jobs/{job_id}".encode())
    assert path is not None and path.job_id == job_id
    for other in (
        b"/endpoint/p/w/jobs/../v1/models",
        b"/endpoint/p/w/jobs/%2e%2e",
        b"/endpoint/p/w/jobs/123",
        b"/endpoint/p/w/v1/jobs",
        b"/endpoint/p/jobs",
        f"/endpoint/p/w/jobs/{job_id.upper()}".encode(),
    ):
        assert parse_jobs_path(other) is None, other
