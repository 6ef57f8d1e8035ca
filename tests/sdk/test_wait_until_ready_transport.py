"""wait_until_ready over real HTTP: terminal phases, reconnects, permanent errors, deadlines.

Each test starts a small HTTP server on 127.0.0.1 that plays a script: one reply per request
(the last one repeats), each a status and a body written piece by piece, as the Manager's
readiness stream would be.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from inferencekey import (
    ApiError,
    AsyncManagementClient,
    AuthError,
    ConfigurationError,
    ManagementClient,
    NotFoundError,
    ReadinessEvent,
    ValidationError,
)

SDK_TOKEN = "ik_sdk_0123abcd_" + "a" * 64
STREAM_PATH = "/api/projects/acme/workloads/support-bot/readiness-events"


def frame(phase: str, message: str = "", elapsed_ms: int = 0, step: str | None = None) -> str:
    body: dict[str, Any] = {"phase": phase, "message": message, "elapsed_ms": elapsed_ms}
    if step is not None:
        body["step"] = step
    return f"data: {json.dumps(body)}\n\n"


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``body`` is written in order; a number pauses that many seconds."""

    status: int = 200
    body: tuple[str | float, ...] = ()
    error: str | None = None  # the JSON ``error`` of a non-2xx answer
    keep_alive_every: float | None = None  # after the body, ping until the client leaves
    hang: bool = False  # after the body, stay silent until the client leaves
    truncated: bool = False  # promise a longer body than is sent, then hang up


@dataclass
class ScriptedManager:
    replies: list[Reply]
    url: str = ""
    requests: list[dict[str, str]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def next_reply(self, headers: dict[str, str]) -> Reply:
        self.requests.append(headers)
        return self.replies[min(len(self.requests), len(self.replies)) - 1]


def serve_script(script: ScriptedManager) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {key.lower(): value for key, value in self.headers.items()}
            reply = script.next_reply({"path": self.path, **headers})
            # A client leaving mid-stream is what stream clients do.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.answer(reply)

        def answer(self, reply: Reply) -> None:
            if reply.status != 200:
                payload = json.dumps({"error": reply.error or "scripted"}).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            if reply.truncated:
                self.send_header("Content-Length", "100000")
            self.end_headers()
            for piece in reply.body:
                if isinstance(piece, str):
                    self.wfile.write(piece.encode())
                    self.wfile.flush()
                else:
                    time.sleep(piece)
            if reply.keep_alive_every is not None:
                while not script.stopping.wait(reply.keep_alive_every):
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
            if reply.hang:
                script.stopping.wait(30)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    return server


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[tuple[ThreadingHTTPServer, ScriptedManager]] = []

    def start(*replies: Reply) -> ScriptedManager:
        script = ScriptedManager(list(replies))
        server = serve_script(script)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        script.url = f"http://127.0.0.1:{server.server_address[1]}"
        servers.append((server, script))
        return script

    yield start
    for server, script in servers:
        script.stopping.set()
        server.shutdown()
        server.server_close()


def client(script: ScriptedManager) -> ManagementClient:
    return ManagementClient(base_url=script.url, sdk_token=SDK_TOKEN, project="acme")


def async_client(script: ScriptedManager) -> AsyncManagementClient:
    return AsyncManagementClient(base_url=script.url, sdk_token=SDK_TOKEN, project="acme")


READY_AFTER_TWO = Reply(
    body=(
        frame("scheduling", "waiting for a worker"),
        0.05,
        frame("bootstrapping", "loading weights", 1200, step="model_load"),
        0.05,
        frame("ready", "serving", 2400),
    )
)


# --- sync client ---------------------------------------------------------------------------


def test_returns_at_ready_after_reporting_every_frame(scripted: Any) -> None:
    script = scripted(READY_AFTER_TWO)
    seen: list[ReadinessEvent] = []

    with client(script) as mgmt:
        mgmt.wait_until_ready("support-bot", timeout=10, on_progress=seen.append)

    assert [(e.phase, e.elapsed_ms, e.step) for e in seen] == [
        ("scheduling", 0, None),
        ("bootstrapping", 1200, "model_load"),
        ("ready", 2400, None),
    ]
    [request] = script.requests
    assert request["path"] == STREAM_PATH
    assert request["accept"] == "text/event-stream"
    assert request["authorization"] == f"Bearer {SDK_TOKEN}"


def test_error_phase_raises_api_error_with_the_message(scripted: Any) -> None:
    script = scripted(Reply(body=(frame("scheduling"), frame("error", "image not found"))))

    with client(script) as mgmt, pytest.raises(ApiError) as caught:
        mgmt.wait_until_ready("support-bot", timeout=10, silent=True)

    assert str(caught.value) == 'workload "support-bot" failed to become ready: image not found'
    assert len(script.requests) == 1


def test_503_is_retried_after_1s_then_2s(scripted: Any) -> None:
    script = scripted(Reply(status=503), Reply(status=503), READY_AFTER_TWO)
    seen: list[ReadinessEvent] = []

    started = time.monotonic()
    with client(script) as mgmt:
        mgmt.wait_until_ready("support-bot", timeout=20, on_progress=seen.append)

    assert time.monotonic() - started >= 2.9
    assert len(script.requests) == 3
    assert seen[-1].phase == "ready"


def test_502_and_504_are_transient_too(scripted: Any) -> None:
    script = scripted(Reply(status=502), Reply(status=504), READY_AFTER_TWO)

    with client(script) as mgmt:
        mgmt.wait_until_ready("support-bot", timeout=20, silent=True)

    assert len(script.requests) == 3


def test_a_stream_that_ends_without_a_terminal_phase_is_reopened(scripted: Any) -> None:
    script = scripted(
        Reply(body=(frame("scheduling", "waiting"), frame("provisioning", "pulling"))),
        Reply(body=(frame("provisioning", "pulling"), frame("ready", "serving"))),
    )
    seen: list[ReadinessEvent] = []

    started = time.monotonic()
    with client(script) as mgmt:
        mgmt.wait_until_ready("support-bot", timeout=20, on_progress=seen.append)

    # Frames reset the backoff, so the reconnect waited 1 s, not more.
    assert 0.9 <= time.monotonic() - started < 2.5
    assert [e.phase for e in seen] == ["scheduling", "provisioning", "provisioning", "ready"]
    assert len(script.requests) == 2


def test_a_connection_cut_mid_body_is_reopened(scripted: Any) -> None:
    script = scripted(
        Reply(body=(frame("scheduling", "waiting"),), truncated=True),
        Reply(body=(frame("ready", "serving"),)),
    )
    seen: list[ReadinessEvent] = []

    with client(script) as mgmt:
        mgmt.wait_until_ready("support-bot", timeout=20, on_progress=seen.append)

    assert [e.phase for e in seen] == ["scheduling", "ready"]
    assert len(script.requests) == 2


def test_404_raises_not_found_at_once_without_retrying(scripted: Any) -> None:
    message = 'workload "support-bot" not found in project "acme"'
    script = scripted(Reply(status=404, error=message))

    started = time.monotonic()
    with client(script) as mgmt, pytest.raises(NotFoundError) as caught:
        mgmt.wait_until_ready("support-bot", timeout=20, silent=True)

    assert str(caught.value) == f"not found: {message}"
    assert time.monotonic() - started < 0.9
    assert len(script.requests) == 1


def test_401_raises_auth_error(scripted: Any) -> None:
    script = scripted(Reply(status=401, error="invalid or expired credentials"))

    with client(script) as mgmt, pytest.raises(AuthError, match=r"^authentication failed: "):
        mgmt.wait_until_ready("support-bot", timeout=20, silent=True)

    assert len(script.requests) == 1


def test_500_is_permanent(scripted: Any) -> None:
    script = scripted(Reply(status=500, error="boom"))

    with client(script) as mgmt, pytest.raises(ApiError, match=r"^api error \(status 500\)"):
        mgmt.wait_until_ready("support-bot", timeout=20, silent=True)

    assert len(script.requests) == 1


def test_only_keep_alives_time_out_at_the_deadline(scripted: Any) -> None:
    script = scripted(Reply(body=(frame("scheduling", "waiting"),), keep_alive_every=0.2))

    started = time.monotonic()
    with client(script) as mgmt, pytest.raises(TimeoutError) as caught:
        mgmt.wait_until_ready("support-bot", timeout=2, silent=True)

    assert 1.9 <= time.monotonic() - started < 4
    assert str(caught.value) == 'workload "support-bot" not ready after 2s'
    assert type(caught.value) is TimeoutError


def test_a_silent_server_cannot_hold_past_the_deadline(scripted: Any) -> None:
    script = scripted(Reply(hang=True))

    started = time.monotonic()
    with client(script) as mgmt, pytest.raises(TimeoutError):
        mgmt.wait_until_ready("support-bot", timeout=1.5, silent=True)

    assert time.monotonic() - started < 3


def test_an_unreachable_manager_is_retried_until_the_deadline() -> None:
    mgmt = ManagementClient(base_url="http://127.0.0.1:9", sdk_token=SDK_TOKEN, project="acme")

    with mgmt, pytest.raises(TimeoutError, match=r'^workload "support-bot" not ready after 1.5s$'):
        mgmt.wait_until_ready("support-bot", timeout=1.5, silent=True)


def test_a_malformed_frame_raises_validation_error(scripted: Any) -> None:
    script = scripted(Reply(body=(frame("scheduling"), "data: {not json\n\n")))

    with client(script) as mgmt, pytest.raises(ValidationError, match=r"^json error: "):
        mgmt.wait_until_ready("support-bot", timeout=10, silent=True)

    assert len(script.requests) == 1


def test_a_frame_without_a_phase_raises_validation_error(scripted: Any) -> None:
    script = scripted(Reply(body=('data: {"message": "no phase"}\n\n',)))

    with client(script) as mgmt, pytest.raises(ValidationError, match=r"^json error: "):
        mgmt.wait_until_ready("support-bot", timeout=10, silent=True)


def test_crlf_comments_and_split_writes_are_read_as_frames(scripted: Any) -> None:
    script = scripted(
        Reply(
            body=(
                ": hello\r\n\r\nevent: readiness\r\ndata: ",
                0.05,
                '{"phase": "provisioning", "message": "pulling"}\r',
                0.05,
                '\n\r\ndata: {\r\ndata: "phase": "ready", "message": "serving"\r\ndata: }',
            )
        )
    )
    seen: list[ReadinessEvent] = []

    with client(script) as mgmt:
        mgmt.wait_until_ready("support-bot", timeout=10, on_progress=seen.append)

    assert [(e.phase, e.message) for e in seen] == [
        ("provisioning", "pulling"),
        ("ready", "serving"),
    ]


def test_the_default_renderer_writes_one_line_per_event_to_stderr_off_a_terminal(
    scripted: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    script = scripted(READY_AFTER_TWO)

    with client(script) as mgmt:
        mgmt.wait_until_ready("support-bot", timeout=10)

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "[0.0s] scheduling: waiting for a worker",
        "[1.2s] bootstrapping [model_load]: loading weights",
        "[2.4s] ready: serving",
    ]


def test_silent_writes_nothing(scripted: Any, capsys: pytest.CaptureFixture[str]) -> None:
    script = scripted(READY_AFTER_TWO)

    with client(script) as mgmt:
        mgmt.wait_until_ready("support-bot", timeout=10, silent=True)

    assert capsys.readouterr() == ("", "")


def test_project_argument_overrides_the_clients(scripted: Any) -> None:
    script = scripted(READY_AFTER_TWO)

    with client(script) as mgmt:
        mgmt.wait_until_ready("support-bot", project="other", timeout=10, silent=True)

    assert script.requests[0]["path"] == (
        "/api/projects/other/workloads/support-bot/readiness-events"
    )


@pytest.mark.parametrize(
    ("slug", "project", "error"),
    [
        ("", "acme", ValidationError),
        ("   ", "acme", ValidationError),
        ("support-bot", "acme/other", ValidationError),
    ],
)
def test_bad_targets_are_refused_before_any_request(
    scripted: Any, slug: str, project: str, error: type[Exception]
) -> None:
    script = scripted(READY_AFTER_TWO)

    with client(script) as mgmt, pytest.raises(error, match=r"^validation error: "):
        mgmt.wait_until_ready(slug, project=project, timeout=10, silent=True)

    assert script.requests == []


def test_no_project_anywhere_is_a_configuration_error(scripted: Any) -> None:
    script = scripted(READY_AFTER_TWO)
    mgmt = ManagementClient(base_url=script.url, sdk_token=SDK_TOKEN)

    with mgmt, pytest.raises(ConfigurationError) as caught:
        mgmt.wait_until_ready("support-bot", silent=True)

    assert str(caught.value) == "No project configured. Set INFERENCEKEY_PROJECT or pass project=."
    assert script.requests == []


# --- async client --------------------------------------------------------------------------


async def test_async_returns_at_ready_after_reporting_every_frame(scripted: Any) -> None:
    script = scripted(READY_AFTER_TWO)
    seen: list[ReadinessEvent] = []

    async with async_client(script) as mgmt:
        await mgmt.wait_until_ready("support-bot", timeout=10, on_progress=seen.append)

    assert [e.phase for e in seen] == ["scheduling", "bootstrapping", "ready"]
    assert script.requests[0]["accept"] == "text/event-stream"


async def test_async_error_phase_raises_api_error_with_the_message(scripted: Any) -> None:
    script = scripted(Reply(body=(frame("error", "out of GPU memory"),)))

    async with async_client(script) as mgmt:
        with pytest.raises(ApiError, match=r"failed to become ready: out of GPU memory$"):
            await mgmt.wait_until_ready("support-bot", timeout=10, silent=True)


async def test_async_503_is_retried_after_1s_then_2s(scripted: Any) -> None:
    script = scripted(Reply(status=503), Reply(status=503), READY_AFTER_TWO)

    started = time.monotonic()
    async with async_client(script) as mgmt:
        await mgmt.wait_until_ready("support-bot", timeout=20, silent=True)

    assert time.monotonic() - started >= 2.9
    assert len(script.requests) == 3


async def test_async_a_dropped_stream_is_reopened(scripted: Any) -> None:
    script = scripted(
        Reply(body=(frame("scheduling", "waiting"),)),
        Reply(body=(frame("ready", "serving"),)),
    )
    seen: list[ReadinessEvent] = []

    async with async_client(script) as mgmt:
        await mgmt.wait_until_ready("support-bot", timeout=20, on_progress=seen.append)

    assert [e.phase for e in seen] == ["scheduling", "ready"]
    assert len(script.requests) == 2


async def test_async_404_raises_not_found_without_retrying(scripted: Any) -> None:
    script = scripted(Reply(status=404, error="no such workload"))

    async with async_client(script) as mgmt:
        with pytest.raises(NotFoundError):
            await mgmt.wait_until_ready("support-bot", timeout=20, silent=True)

    assert len(script.requests) == 1


async def test_async_401_raises_auth_error(scripted: Any) -> None:
    script = scripted(Reply(status=401, error="invalid or expired credentials"))

    async with async_client(script) as mgmt:
        with pytest.raises(AuthError):
            await mgmt.wait_until_ready("support-bot", timeout=20, silent=True)


async def test_async_only_keep_alives_time_out_at_the_deadline(scripted: Any) -> None:
    script = scripted(Reply(keep_alive_every=0.2))

    started = time.monotonic()
    async with async_client(script) as mgmt:
        with pytest.raises(TimeoutError, match=r'^workload "support-bot" not ready after 2s$'):
            await mgmt.wait_until_ready("support-bot", timeout=2, silent=True)

    assert 1.9 <= time.monotonic() - started < 4


async def test_async_a_silent_server_cannot_hold_past_the_deadline(scripted: Any) -> None:
    script = scripted(Reply(hang=True))

    started = time.monotonic()
    async with async_client(script) as mgmt:
        with pytest.raises(TimeoutError):
            await mgmt.wait_until_ready("support-bot", timeout=1.5, silent=True)

    assert time.monotonic() - started < 3


async def test_async_a_malformed_frame_raises_validation_error(scripted: Any) -> None:
    script = scripted(Reply(body=("data: [1, 2\n\n",)))

    async with async_client(script) as mgmt:
        with pytest.raises(ValidationError, match=r"^json error: "):
            await mgmt.wait_until_ready("support-bot", timeout=10, silent=True)
