"""DataClient over real HTTP: request bodies, key and config resolution, local checks, parsing
of chat / stream / embeddings / rerank answers, and HTTP errors.

Each test starts a small HTTP server on 127.0.0.1 that records every request (path, headers,
JSON body) and plays a script: one reply per request (the last one repeats). A streamed reply
is written piece by piece; a piece may be a pause or a callable the server runs between
pieces, which is how a test holds the second chunk back until it has seen the first.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from inferencekey import (
    ApiError,
    AsyncDataClient,
    AsyncEndpoint,
    AuthError,
    ConfigurationError,
    DataClient,
    EmbedResult,
    Endpoint,
    NotFoundError,
    PermissionDenied,
    RerankItem,
    RerankResult,
    TextChunk,
    TextResult,
    ValidationError,
)

LIVE_KEY = "ik_live_89abcdef_" + "b" * 64
OTHER_LIVE_KEY = "ik_live_01234567_" + "c" * 64
SDK_TOKEN = "ik_sdk_0123abcd_" + "a" * 64
CHAT_PATH = "/endpoint/acme/support-bot/v1/chat/completions"
ENV_VARS = (
    "INFERENCEKEY_BASE_URL",
    "INFERENCEKEY_PROJECT",
    "INFERENCEKEY_SDK_TOKEN",
    "INFERENCEKEY_API_KEY",
)

Piece = str | float | Callable[[], object]


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a JSON body, or (``sse``) a stream written piece by piece."""

    status: int = 200
    body: Any = None
    sse: tuple[Piece, ...] | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class ScriptedServer:
    replies: list[Reply]
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def next_reply(self, request: dict[str, Any]) -> Reply:
        self.requests.append(request)
        return self.replies[min(len(self.requests), len(self.replies)) - 1]

    @property
    def request(self) -> dict[str, Any]:
        [only] = self.requests
        return only


def serve_script(script: ScriptedServer) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            reply = script.next_reply(
                {
                    "path": self.path,
                    "headers": {key.lower(): value for key, value in self.headers.items()},
                    "body": json.loads(raw) if raw else None,
                }
            )
            # A client leaving mid-stream is what stream clients do.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.answer(reply)

        def answer(self, reply: Reply) -> None:
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            if reply.sse is None:
                payload = json.dumps(reply.body).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in reply.sse:
                if isinstance(piece, str):
                    self.wfile.write(piece.encode())
                    self.wfile.flush()
                elif isinstance(piece, float | int):
                    time.sleep(piece)
                else:
                    piece()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    return server


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ThreadingHTTPServer] = []

    def start(*replies: Reply) -> ScriptedServer:
        script = ScriptedServer(list(replies) or [Reply(body={})])
        server = serve_script(script)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        script.url = f"http://127.0.0.1:{server.server_address[1]}"
        servers.append(server)
        return script

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def endpoint(script: ScriptedServer, workload: str = "support-bot") -> Endpoint:
    return DataClient(base_url=script.url, project="acme", api_key=LIVE_KEY).endpoint(workload)


def async_endpoint(script: ScriptedServer, workload: str = "support-bot") -> AsyncEndpoint:
    client = AsyncDataClient(base_url=script.url, project="acme", api_key=LIVE_KEY)
    return client.endpoint(workload)


def completion(
    content: str | None = "¡Hola!", model: str = "Qwen/Qwen2.5-0.5B-Instruct"
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant"}
    if content is not None:
        message["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def chunk(content: str | None = None, finish_reason: str | None = None, *, eol: str = "\n") -> str:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    frame = {
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(frame)}{eol}{eol}"


DONE = "data: [DONE]\n\n"
UNAUTHORIZED = Reply(
    status=401,
    body={
        "error": "invalid or expired credentials",
        "code": "invalid_credentials",
        "message": "invalid or expired credentials",
    },
)
NOT_GRANTED = Reply(
    status=403,
    body={
        "error": "scope_insufficient",
        "code": "scope_insufficient",
        "message": 'this key is not granted workload "support-bot"',
    },
)
NO_REPLICA = Reply(
    status=503,
    body={
        "error": "no ready replica",
        "code": "no_ready_replica",
        "message": 'workload "support-bot" has no ready replica',
    },
    headers=(("Retry-After", "5"),),
)


# --- request bodies -------------------------------------------------------------------------


def test_prompt_becomes_one_user_turn_with_the_workload_slug_as_model(scripted: Any) -> None:
    script = scripted(Reply(body=completion()))

    endpoint(script).generate_text(prompt="Hola", temperature=0.2, max_tokens=300)

    request = script.request
    assert request["path"] == CHAT_PATH
    assert request["body"] == {
        "model": "support-bot",
        "messages": [{"role": "user", "content": "Hola"}],
        "stream": False,
        "temperature": 0.2,
        "max_tokens": 300,
    }
    assert request["headers"]["authorization"] == f"Bearer {LIVE_KEY}"
    assert request["headers"]["content-type"] == "application/json"


def test_unset_temperature_and_max_tokens_are_omitted_and_stream_is_always_sent(
    scripted: Any,
) -> None:
    script = scripted(Reply(body=completion()))

    endpoint(script).generate_text(prompt="Hola")

    assert script.request["body"] == {
        "model": "support-bot",
        "messages": [{"role": "user", "content": "Hola"}],
        "stream": False,
    }


def test_messages_are_sent_as_given(scripted: Any) -> None:
    script = scripted(Reply(body=completion()))
    messages = [
        {"role": "system", "content": "Answer in Spanish."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hola"},
        {"role": "user", "content": "How are you?"},
    ]

    endpoint(script).generate_text(messages=messages, temperature=0)

    assert script.request["body"] == {
        "model": "support-bot",
        "messages": messages,
        "stream": False,
        "temperature": 0,
    }


def test_a_blank_workload_slug_sends_model_default(scripted: Any) -> None:
    script = scripted(Reply(body=completion()))

    endpoint(script, workload="").generate_text(prompt="Hola")

    assert script.request["body"]["model"] == "default"


def test_stream_request_says_stream_true_and_accepts_event_stream(scripted: Any) -> None:
    script = scripted(Reply(sse=(DONE,)))

    with endpoint(script).generate_text_stream(prompt="Hola", max_tokens=5) as stream:
        assert list(stream) == []

    request = script.request
    assert request["path"] == CHAT_PATH
    assert request["body"] == {
        "model": "support-bot",
        "messages": [{"role": "user", "content": "Hola"}],
        "stream": True,
        "max_tokens": 5,
    }
    assert request["headers"]["accept"] == "text/event-stream"
    assert request["headers"]["authorization"] == f"Bearer {LIVE_KEY}"


def test_embed_sends_a_bare_string_as_a_batch_of_one(scripted: Any) -> None:
    script = scripted(Reply(body={"model": "m", "data": [{"index": 0, "embedding": [0.5]}]}))

    endpoint(script).embed(input="hola")

    assert script.request["path"] == "/endpoint/acme/support-bot/v1/embeddings"
    assert script.request["body"] == {"model": "support-bot", "input": ["hola"]}


def test_embed_sends_a_list_as_is(scripted: Any) -> None:
    script = scripted(Reply(body={"model": "m", "data": []}))

    endpoint(script).embed(input=["hola", "adiós"])

    assert script.request["body"] == {"model": "support-bot", "input": ["hola", "adiós"]}


def test_rerank_sends_query_documents_and_top_n_only_when_set(scripted: Any) -> None:
    script = scripted(Reply(body={"results": []}))
    ep = endpoint(script)

    ep.rerank(query="refunds", documents=["a", "b"], top_n=1)
    ep.rerank(query="refunds", documents=["a", "b"])

    assert [r["path"] for r in script.requests] == ["/endpoint/acme/support-bot/v1/rerank"] * 2
    assert [r["body"] for r in script.requests] == [
        {"model": "support-bot", "query": "refunds", "documents": ["a", "b"], "top_n": 1},
        {"model": "support-bot", "query": "refunds", "documents": ["a", "b"]},
    ]


def test_base_url_trailing_slash_and_path_segments_are_handled(scripted: Any) -> None:
    script = scripted(Reply(body=completion()))
    client = DataClient(base_url=script.url + "/", project="acme", api_key=LIVE_KEY)

    client.endpoint("support-bot").generate_text(prompt="Hola")

    assert script.request["path"] == CHAT_PATH


# --- configuration and keys -----------------------------------------------------------------


def test_from_env_reads_base_url_project_and_api_key(
    scripted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = scripted(Reply(body=completion()))
    monkeypatch.setenv("INFERENCEKEY_BASE_URL", f"  {script.url}/ ")
    monkeypatch.setenv("INFERENCEKEY_PROJECT", " acme ")
    monkeypatch.setenv("INFERENCEKEY_API_KEY", f" {LIVE_KEY}\n")

    with DataClient.from_env() as client:
        assert client.base_url == script.url
        assert client.project == "acme"
        client.endpoint("support-bot").generate_text(prompt="Hola")

    assert script.request["path"] == CHAT_PATH
    assert script.request["headers"]["authorization"] == f"Bearer {LIVE_KEY}"


def test_explicit_arguments_beat_the_environment(
    scripted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = scripted(Reply(body=completion()))
    monkeypatch.setenv("INFERENCEKEY_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("INFERENCEKEY_PROJECT", "other")
    monkeypatch.setenv("INFERENCEKEY_API_KEY", OTHER_LIVE_KEY)

    client = DataClient.from_env(base_url=script.url, project="acme", api_key=LIVE_KEY)
    client.endpoint("support-bot").generate_text(prompt="Hola")

    assert script.request["path"] == CHAT_PATH
    assert script.request["headers"]["authorization"] == f"Bearer {LIVE_KEY}"


def test_blank_environment_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCEKEY_BASE_URL", "   ")
    monkeypatch.setenv("INFERENCEKEY_API_KEY", " ")

    client = DataClient.from_env(project="acme")

    assert client.base_url == "https://api.inferencekey.com"
    with pytest.raises(ConfigurationError):
        client.endpoint("support-bot")


def test_a_project_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCEKEY_API_KEY", LIVE_KEY)

    with pytest.raises(ConfigurationError) as from_env:
        DataClient.from_env()
    with pytest.raises(ConfigurationError) as empty:
        DataClient(base_url="http://127.0.0.1:9", project="")
    with pytest.raises(ConfigurationError) as blank:
        AsyncDataClient(base_url="http://127.0.0.1:9", project="  ")

    for caught in (from_env, empty, blank):
        assert str(caught.value) == "DataClient requires a project slug."


def test_the_endpoint_key_beats_the_default_key(scripted: Any) -> None:
    script = scripted(Reply(body=completion()))
    client = DataClient(base_url=script.url, project="acme", api_key=OTHER_LIVE_KEY)

    client.endpoint("support-bot", api_key=LIVE_KEY).generate_text(prompt="Hola")

    assert script.request["headers"]["authorization"] == f"Bearer {LIVE_KEY}"


def test_no_key_anywhere_is_a_configuration_error() -> None:
    client = DataClient(base_url="http://127.0.0.1:9", project="acme")

    with pytest.raises(ConfigurationError) as caught:
        client.endpoint("support-bot")

    assert str(caught.value) == (
        'No ik_live_ key for workload "support-bot". Pass api_key= or set INFERENCEKEY_API_KEY.'
    )


def test_the_sdk_token_variable_is_never_read_as_a_data_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INFERENCEKEY_SDK_TOKEN", LIVE_KEY)

    with pytest.raises(ConfigurationError, match="No ik_live_ key"):
        DataClient.from_env(base_url="http://127.0.0.1:9", project="acme").endpoint("support-bot")


@pytest.mark.parametrize("where", ["endpoint", "client"])
def test_an_sdk_token_is_refused_as_wrong_credential_type_without_a_request(
    scripted: Any, where: str
) -> None:
    script = scripted()
    default_key, endpoint_key = (None, SDK_TOKEN) if where == "endpoint" else (SDK_TOKEN, None)
    client = DataClient(base_url=script.url, project="acme", api_key=default_key)

    with pytest.raises(PermissionDenied) as caught:
        client.endpoint("support-bot", api_key=endpoint_key)

    assert caught.value.code == "wrong_credential_type"
    message = str(caught.value)
    assert message.startswith("permission denied [wrong_credential_type]: ik_sdk_0123abcd…")
    assert "requires an ik_live_ key" in message
    assert "a" * 64 not in message and "a" * 64 not in repr(client)
    assert script.requests == []


def test_endpoint_makes_no_request_and_hides_the_key(scripted: Any) -> None:
    script = scripted()

    ep = DataClient(base_url=script.url, project="acme").endpoint("support-bot", api_key=LIVE_KEY)

    assert ep.workload_slug == "support-bot"
    assert "b" * 64 not in repr(ep) and "ik_live_89abcdef…" in repr(ep)
    assert script.requests == []


# --- local validation -----------------------------------------------------------------------

INVALID_CALLS: list[tuple[str, Callable[[Endpoint], object], str]] = [
    (
        "both",
        lambda ep: ep.generate_text(prompt="Hola", messages=[{"role": "user", "content": "x"}]),
        "provide either prompt or messages, not both",
    ),
    ("neither", lambda ep: ep.generate_text(), "provide a prompt or messages"),
    ("empty prompt", lambda ep: ep.generate_text(prompt=""), "prompt must not be empty"),
    ("blank prompt", lambda ep: ep.generate_text(prompt="  "), "prompt must not be empty"),
    ("empty messages", lambda ep: ep.generate_text(messages=[]), "messages must not be empty"),
    (
        "empty content",
        lambda ep: ep.generate_text(
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": ""}]
        ),
        "message content must not be empty",
    ),
    (
        "missing content",
        lambda ep: ep.generate_text(messages=[{"role": "user"}]),
        "message content must not be empty",
    ),
    (
        "stream, both",
        lambda ep: ep.generate_text_stream(prompt="x", messages=[{"role": "user", "content": "x"}]),
        "provide either prompt or messages, not both",
    ),
    ("stream, neither", lambda ep: ep.generate_text_stream(), "provide a prompt or messages"),
    ("stream, empty", lambda ep: ep.generate_text_stream(prompt=""), "prompt must not be empty"),
    ("empty input", lambda ep: ep.embed(input=""), "input must not be empty"),
    ("empty batch", lambda ep: ep.embed(input=[]), "input must not be empty"),
    ("empty item", lambda ep: ep.embed(input=["hola", ""]), "input must not be empty"),
    (
        "empty query",
        lambda ep: ep.rerank(query="", documents=["a"]),
        "query must not be empty",
    ),
    (
        "no documents",
        lambda ep: ep.rerank(query="refunds", documents=[]),
        "documents must not be empty",
    ),
]


@pytest.mark.parametrize(
    ("call", "reason"),
    [(call, reason) for _, call, reason in INVALID_CALLS],
    ids=[name for name, _, _ in INVALID_CALLS],
)
def test_local_checks_raise_validation_error_before_any_request(
    scripted: Any, call: Callable[[Endpoint], object], reason: str
) -> None:
    script = scripted()

    with pytest.raises(ValidationError) as caught:
        call(endpoint(script))

    assert str(caught.value) == f"validation error: {reason}"
    assert script.requests == []


# --- chat answers ---------------------------------------------------------------------------


def test_generate_text_returns_text_model_finish_reason_and_raw(scripted: Any) -> None:
    answer = completion("¡Hola! ¿En qué puedo ayudarte?")
    script = scripted(Reply(body=answer))

    out = endpoint(script).generate_text(prompt="Hola")

    assert out == TextResult(
        text="¡Hola! ¿En qué puedo ayudarte?",
        model="Qwen/Qwen2.5-0.5B-Instruct",
        finish_reason="stop",
        raw=answer,
    )
    assert out.raw["usage"]["total_tokens"] == 5


def test_finish_reason_is_optional(scripted: Any) -> None:
    answer = {"model": "m", "choices": [{"message": {"content": "hi"}}]}
    script = scripted(Reply(body=answer))

    assert endpoint(script).generate_text(prompt="Hola").finish_reason is None


@pytest.mark.parametrize(
    ("answer", "missing"),
    [
        (completion(content=None), "choices[0].message.content"),
        ({"model": "m", "choices": [{"index": 0}]}, "choices[0].message.content"),
        ({**completion(), "model": None}, "model"),
        ({"model": "m", "choices": []}, "choices[0]"),
        ({"model": "m"}, "choices[0]"),
    ],
    ids=["no content", "no message", "no model", "empty choices", "no choices"],
)
def test_an_answer_missing_a_field_is_a_drift_api_error(
    scripted: Any, answer: dict[str, Any], missing: str
) -> None:
    script = scripted(Reply(body=answer))

    with pytest.raises(ApiError) as caught:
        endpoint(script).generate_text(prompt="Hola")

    assert str(caught.value) == f"workload drifted from spec: {missing}"


def test_http_errors_keep_their_type_status_and_code(scripted: Any) -> None:
    script = scripted(
        UNAUTHORIZED,
        NOT_GRANTED,
        Reply(status=404, body={"error": "not found", "message": 'workload "x" not found'}),
        NO_REPLICA,
    )
    ep = endpoint(script)

    with pytest.raises(AuthError) as unauthorized:
        ep.generate_text(prompt="Hola")
    with pytest.raises(PermissionDenied) as forbidden:
        ep.embed(input="hola")
    with pytest.raises(NotFoundError) as not_found:
        ep.rerank(query="q", documents=["d"])
    with pytest.raises(ApiError) as unavailable:
        ep.generate_text(prompt="Hola")

    assert unauthorized.value.status == 401
    assert str(unauthorized.value) == "authentication failed: invalid or expired credentials"
    assert (forbidden.value.status, forbidden.value.code) == (403, "scope_insufficient")
    assert str(forbidden.value).startswith("permission denied [scope_insufficient]: ")
    assert not_found.value.status == 404
    assert unavailable.value.status == 503
    assert "no ready replica" in str(unavailable.value)


# --- streaming ------------------------------------------------------------------------------


def test_chunks_are_yielded_as_they_arrive(scripted: Any) -> None:
    release, second_sent = threading.Event(), threading.Event()
    script = scripted(
        Reply(
            sse=(
                chunk("Hola"),
                lambda: release.wait(10),
                second_sent.set,
                chunk(" mundo"),
                chunk(None, "stop"),
                DONE,
            )
        )
    )

    stream = endpoint(script).generate_text_stream(prompt="Hola")
    first = next(stream)
    sent_before_first = second_sent.is_set()
    release.set()
    rest = list(stream)

    assert first.text == "Hola"
    assert not sent_before_first
    assert [(c.text, c.finish_reason) for c in rest] == [(" mundo", None), ("", "stop")]


def test_the_request_is_sent_before_iteration_starts(scripted: Any) -> None:
    release = threading.Event()
    script = scripted(Reply(sse=(lambda: release.wait(10), chunk("Hola"), DONE)))

    stream = endpoint(script).generate_text_stream(prompt="Hola")

    assert len(script.requests) == 1
    release.set()
    assert [c.text for c in stream] == ["Hola"]


def test_done_ends_the_stream_even_if_the_server_keeps_it_open(scripted: Any) -> None:
    hang_up = threading.Event()
    script = scripted(Reply(sse=(chunk("a"), DONE, chunk("after done"), lambda: hang_up.wait(10))))

    started = time.monotonic()
    chunks = list(endpoint(script).generate_text_stream(prompt="Hola"))
    hang_up.set()

    assert [c.text for c in chunks] == ["a"]
    assert time.monotonic() - started < 5


def test_crlf_comments_other_fields_and_bad_frames_are_tolerated(scripted: Any) -> None:
    role_only = json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    script = scripted(
        Reply(
            sse=(
                ": keep-alive\r\n\r\n",
                f"event: message\r\nid: 1\r\ndata:{role_only}\r\n\r\n",
                "data: {not json\r\n\r\n",
                chunk("Ho", eol="\r\n"),
                "retry: 1000\r\n\r\n",
                chunk("la", eol="\r\n"),
                ": ping\n\n",
                chunk(None, "length", eol="\r\n"),
                "data: [DONE]\r\n\r\n",
            )
        )
    )

    chunks = list(endpoint(script).generate_text_stream(prompt="Hola"))

    assert [(c.text, c.finish_reason) for c in chunks] == [
        ("", None),
        ("Ho", None),
        ("la", None),
        ("", "length"),
    ]
    assert chunks[1].raw["object"] == "chat.completion.chunk"


def test_a_stream_closed_without_done_ends_after_its_last_line(scripted: Any) -> None:
    frame = json.dumps({"choices": [{"delta": {"content": "fin"}, "finish_reason": "stop"}]})
    script = scripted(Reply(sse=(chunk("a"), f"data: {frame}")))

    chunks = list(endpoint(script).generate_text_stream(prompt="Hola"))

    assert chunks == [
        TextChunk("a", None, json.loads(chunk("a")[6:])),
        TextChunk("fin", "stop", json.loads(frame)),
    ]


def test_frames_without_blank_lines_between_them_are_each_read(scripted: Any) -> None:
    script = scripted(
        Reply(sse=(chunk("a").rstrip("\n") + "\n", chunk("b").rstrip("\n") + "\n", DONE))
    )

    assert [c.text for c in endpoint(script).generate_text_stream(prompt="Hola")] == ["a", "b"]


def test_usage_only_frames_are_skipped(scripted: Any) -> None:
    usage = json.dumps({"choices": [], "usage": {"total_tokens": 5}})
    script = scripted(Reply(sse=(chunk("a", "stop"), f"data: {usage}\n\n", DONE)))

    assert [c.text for c in endpoint(script).generate_text_stream(prompt="Hola")] == ["a"]


def test_an_error_frame_in_the_stream_raises_api_error(scripted: Any) -> None:
    error = json.dumps({"error": {"code": 500, "message": "context overflow"}})
    script = scripted(Reply(sse=(chunk("a"), f"data: {error}\n\n")))

    stream = endpoint(script).generate_text_stream(prompt="Hola")
    assert next(stream).text == "a"
    with pytest.raises(ApiError) as caught:
        next(stream)

    assert str(caught.value) == "stream error: context overflow"


def test_a_chunk_without_choices_is_a_drift_api_error(scripted: Any) -> None:
    script = scripted(Reply(sse=('data: {"object": "chat.completion.chunk"}\n\n', DONE)))

    with pytest.raises(ApiError, match=r"^workload drifted from spec: choices\[0\]$"):
        list(endpoint(script).generate_text_stream(prompt="Hola"))


@pytest.mark.parametrize(
    ("reply", "error_type", "status", "code"),
    [
        (UNAUTHORIZED, AuthError, 401, "invalid_credentials"),
        (NOT_GRANTED, PermissionDenied, 403, "scope_insufficient"),
        (NO_REPLICA, ApiError, 503, "no_ready_replica"),
    ],
    ids=["401", "403", "503"],
)
def test_an_http_error_raises_when_the_stream_is_requested(
    scripted: Any, reply: Reply, error_type: type[Exception], status: int, code: str
) -> None:
    script = scripted(reply)
    ep = endpoint(script)

    with pytest.raises(error_type) as caught:
        ep.generate_text_stream(prompt="Hola")

    assert (caught.value.status, caught.value.code) == (status, code)  # type: ignore[attr-defined]
    assert len(script.requests) == 1


def test_closing_a_stream_early_frees_the_connection(scripted: Any) -> None:
    hang_up = threading.Event()
    script = scripted(
        Reply(sse=(chunk("a"), lambda: hang_up.wait(10), chunk("b"), DONE)),
        Reply(body=completion("again")),
    )
    ep = endpoint(script)

    with ep.generate_text_stream(prompt="Hola") as stream:
        assert next(stream).text == "a"
    hang_up.set()

    assert list(stream) == []
    assert ep.generate_text(prompt="Hola").text == "again"


# --- embeddings and rerank ------------------------------------------------------------------


def test_embed_returns_vectors_in_input_order(scripted: Any) -> None:
    answer = {
        "object": "list",
        "model": "nomic-embed-text",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [3, 4.5]},
            {"object": "embedding", "index": 0, "embedding": [0.1, -0.2]},
        ],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    script = scripted(Reply(body=answer))

    out = endpoint(script).embed(input=["hola", "adiós"])

    assert out == EmbedResult([[0.1, -0.2], [3.0, 4.5]], "nomic-embed-text", answer)
    assert all(isinstance(x, float) for vector in out.embeddings for x in vector)


@pytest.mark.parametrize(
    ("answer", "missing"),
    [
        ({"data": [{"embedding": [0.1]}]}, "model"),
        ({"model": "m", "data": [{"embedding": [0.1]}, {"index": 1}]}, "data[1].embedding"),
        ({"model": "m", "data": [{"embedding": ["x"]}]}, "data[0].embedding"),
        ({"model": "m"}, "data"),
    ],
    ids=["no model", "no embedding", "not numbers", "no data"],
)
def test_an_embeddings_answer_missing_a_field_is_a_drift_api_error(
    scripted: Any, answer: dict[str, Any], missing: str
) -> None:
    script = scripted(Reply(body=answer))

    with pytest.raises(ApiError) as caught:
        endpoint(script).embed(input="hola")

    assert str(caught.value) == f"workload drifted from spec: {missing}"


def test_rerank_reads_relevance_score_or_score_and_sorts_best_first(scripted: Any) -> None:
    answer = {
        "model": "bge-reranker",
        "results": [
            {"index": 0, "relevance_score": 0.12},
            {"index": 2, "score": 0.91},
            {"index": 1, "relevance_score": 0.5, "document": {"text": "b"}},
        ],
    }
    script = scripted(Reply(body=answer))

    out = endpoint(script).rerank(query="refunds", documents=["a", "b", "c"])

    assert out == RerankResult(
        [RerankItem(2, 0.91), RerankItem(1, 0.5), RerankItem(0, 0.12)], "bge-reranker", answer
    )


def test_rerank_without_model_reports_the_model_it_asked_for(scripted: Any) -> None:
    script = scripted(Reply(body={"results": [{"index": 0, "relevance_score": 1}]}))

    out = endpoint(script).rerank(query="refunds", documents=["a"])

    assert out.model == "support-bot"
    assert out.results == [RerankItem(0, 1.0)]


@pytest.mark.parametrize(
    ("answer", "missing"),
    [
        ({"results": [{"relevance_score": 0.1}]}, "results[0].index"),
        ({"results": [{"index": 0}]}, "results[0].relevance_score"),
        ({"model": "m"}, "results"),
    ],
    ids=["no index", "no score", "no results"],
)
def test_a_rerank_answer_missing_a_field_is_a_drift_api_error(
    scripted: Any, answer: dict[str, Any], missing: str
) -> None:
    script = scripted(Reply(body=answer))

    with pytest.raises(ApiError) as caught:
        endpoint(script).rerank(query="refunds", documents=["a"])

    assert str(caught.value) == f"workload drifted from spec: {missing}"


# --- async client ---------------------------------------------------------------------------


async def test_async_generate_text_sends_the_same_body_and_parses_the_answer(
    scripted: Any,
) -> None:
    script = scripted(Reply(body=completion("¡Hola!")))
    async with AsyncDataClient(base_url=script.url, project="acme", api_key=LIVE_KEY) as client:
        out = await client.endpoint("support-bot").generate_text(
            prompt="Hola", temperature=0.2, max_tokens=300
        )

    assert (out.text, out.model, out.finish_reason) == (
        "¡Hola!",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "stop",
    )
    assert script.request["path"] == CHAT_PATH
    assert script.request["body"] == {
        "model": "support-bot",
        "messages": [{"role": "user", "content": "Hola"}],
        "stream": False,
        "temperature": 0.2,
        "max_tokens": 300,
    }
    assert script.request["headers"]["authorization"] == f"Bearer {LIVE_KEY}"


async def test_async_from_env_and_key_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCEKEY_PROJECT", "acme")

    client = AsyncDataClient.from_env()

    assert (client.base_url, client.project) == ("https://api.inferencekey.com", "acme")
    with pytest.raises(ConfigurationError, match='No ik_live_ key for workload "support-bot"'):
        client.endpoint("support-bot")
    with pytest.raises(PermissionDenied) as caught:
        client.endpoint("support-bot", api_key=SDK_TOKEN)
    assert caught.value.code == "wrong_credential_type"
    await client.close()


async def test_async_stream_yields_chunks_as_they_arrive(scripted: Any) -> None:
    release, second_sent = threading.Event(), threading.Event()
    script = scripted(
        Reply(
            sse=(
                chunk("Hola"),
                lambda: release.wait(10),
                second_sent.set,
                chunk(" mundo", "stop"),
                DONE,
                chunk("after done"),
            )
        )
    )

    seen: list[tuple[str, str | None, bool]] = []
    async for piece in async_endpoint(script).generate_text_stream(prompt="Hola"):
        seen.append((piece.text, piece.finish_reason, second_sent.is_set()))
        release.set()

    assert seen == [("Hola", None, False), (" mundo", "stop", True)]
    assert script.request["body"]["stream"] is True
    assert script.request["headers"]["accept"] == "text/event-stream"


async def test_async_stream_http_error_raises_at_await_or_first_step(scripted: Any) -> None:
    script = scripted(UNAUTHORIZED, NOT_GRANTED, NO_REPLICA)
    ep = async_endpoint(script)

    with pytest.raises(AuthError):
        await ep.generate_text_stream(prompt="Hola")
    with pytest.raises(PermissionDenied) as forbidden:
        async for _ in ep.generate_text_stream(prompt="Hola"):
            pytest.fail("no chunk expected")
    with pytest.raises(ApiError) as unavailable:
        async with ep.generate_text_stream(prompt="Hola"):
            pytest.fail("the stream should not open")

    assert forbidden.value.code == "scope_insufficient"
    assert unavailable.value.status == 503
    assert len(script.requests) == 3


async def test_async_awaited_stream_is_open_before_iteration(scripted: Any) -> None:
    release = threading.Event()
    script = scripted(Reply(sse=(lambda: release.wait(10), chunk("Hola"), DONE)))

    stream = await async_endpoint(script).generate_text_stream(prompt="Hola")
    assert len(script.requests) == 1
    release.set()

    assert [c.text async for c in stream] == ["Hola"]


async def test_async_local_checks_raise_before_any_request(scripted: Any) -> None:
    script = scripted()
    ep = async_endpoint(script)

    with pytest.raises(ValidationError) as no_prompt:
        await ep.generate_text()
    with pytest.raises(ValidationError) as empty_prompt:
        ep.generate_text_stream(prompt="")
    with pytest.raises(ValidationError) as empty_input:
        await ep.embed(input=[])
    with pytest.raises(ValidationError) as no_documents:
        await ep.rerank(query="q", documents=[])

    assert [str(c.value) for c in (no_prompt, empty_prompt, empty_input, no_documents)] == [
        "validation error: provide a prompt or messages",
        "validation error: prompt must not be empty",
        "validation error: input must not be empty",
        "validation error: documents must not be empty",
    ]
    assert script.requests == []


async def test_async_embed_and_rerank(scripted: Any) -> None:
    script = scripted(
        Reply(body={"model": "m", "data": [{"index": 0, "embedding": [1, 2]}]}),
        Reply(body={"results": [{"index": 0, "score": 0.1}, {"index": 1, "score": 0.9}]}),
    )
    ep = async_endpoint(script)

    vectors = await ep.embed(input="hola")
    ranked = await ep.rerank(query="q", documents=["a", "b"], top_n=2)

    assert vectors.embeddings == [[1.0, 2.0]]
    assert ranked.results == [RerankItem(1, 0.9), RerankItem(0, 0.1)]
    assert [r["body"] for r in script.requests] == [
        {"model": "support-bot", "input": ["hola"]},
        {"model": "support-bot", "query": "q", "documents": ["a", "b"], "top_n": 2},
    ]


async def test_async_drift_is_an_api_error(scripted: Any) -> None:
    script = scripted(Reply(body=completion(content=None)))

    with pytest.raises(
        ApiError, match=r"^workload drifted from spec: choices\[0\]\.message\.content$"
    ):
        await async_endpoint(script).generate_text(prompt="Hola")
