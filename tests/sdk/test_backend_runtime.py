"""The custom-backend runtime served in this process (``serve_backend(..., block=False)``), over
real loopback HTTP: every route and error of contract section 1d, and what a backend is handed
(``Job`` accessors, ``ForecastRequest`` checks, ``pick_device``).

The serve command as a separate process is in test_backend_serve_cli.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from inferencekey import BackendEntrypointError, BackendSetupError
from inferencekey.backend import (
    MAX_BODY_BYTES,
    TASK_TYPES,
    BackendContext,
    BackendServer,
    CustomBackend,
    ForecastRequest,
    ForecastResult,
    InvalidInput,
    Job,
    Result,
    pick_device,
    serve_backend,
)


class Echo(CustomBackend):
    """Answers the job's text; ``input.kind`` picks a misbehaviour instead."""

    name = "echo"
    version = "1.2.3"
    task_type = "text2text"
    requirements = ("numpy>=1.26",)
    requires_python = ">=3.10"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.ctx: BackendContext | None = None

    def setup(self, ctx: BackendContext) -> None:
        if self.gate is not None:
            self.gate.wait()
        self.ctx = ctx

    def process(self, job: Job) -> Result:
        kind = job.input.get("kind")
        if kind == "boom":
            raise RuntimeError("model exploded")
        if kind == "not-a-result":
            return {"text": "plain dict"}  # type: ignore[return-value]
        if kind == "nan":
            return Result({"value": float("nan")})
        if kind == "context":
            assert self.ctx is not None
            return Result({"config": self.ctx.config, "port": self.ctx.port})
        if kind == "size":
            return Result({"size": len(job.input["blob"])})
        return Result({"text": job.text(), "id": job.id})


class Unnamed(CustomBackend):
    def setup(self, ctx: BackendContext) -> None:
        pass

    def process(self, job: Job) -> Result:
        return Result({})


class Naive(CustomBackend):
    """Forecasts the last value; ``req.id`` picks a misbehaviour."""

    name = "naive"
    task_type = "forecast"

    def setup(self, ctx: BackendContext) -> None:
        pass

    def process(self, job: Job) -> Result:
        raise InvalidInput("this backend only forecasts")

    def forecast(self, req: ForecastRequest) -> ForecastResult:
        if req.id == "boom":
            raise RuntimeError("diverged")
        if req.id == "not-a-result":
            return {"median": []}  # type: ignore[return-value]
        if req.id == "refuse":
            raise InvalidInput("this series is too short")
        last = req.target[-1]
        horizon = 1 if req.id == "short" else req.horizon
        median = [last] * horizon
        return ForecastResult(
            median=median,
            timestamps=[f"t+{step}" for step in range(1, horizon + 1)],
            quantiles={level: [last + level] * horizon for level in req.quantile_levels},
            samples=[median] * (req.num_samples or 1) if req.return_samples else None,
        )


class ForecastLater(Naive):
    """Overrides forecast() but does not support it yet."""

    def forecast(self, req: ForecastRequest) -> ForecastResult:
        raise NotImplementedError


class OneAtATime(CustomBackend):
    """Records how many process() calls overlap."""

    def __init__(self) -> None:
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def setup(self, ctx: BackendContext) -> None:
        pass

    def process(self, job: Job) -> Result:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return Result({"id": job.id})


class BrokenSetup(Unnamed):
    def setup(self, ctx: BackendContext) -> None:
        raise RuntimeError("weights not found")


@pytest.fixture
def serve() -> Iterator[Callable[..., BackendServer]]:
    """Serves a backend on a free loopback port; every server stops when the test ends."""
    servers: list[BackendServer] = []

    def start(backend: Any, config: dict[str, Any] | None = None) -> BackendServer:
        server = serve_backend(backend, 0, config, block=False)
        servers.append(server)
        return server

    yield start
    for server in servers:
        # Lets a setup() still running print its lines while this test's output is captured.
        with contextlib.suppress(BackendSetupError):
            server.wait_ready(timeout=10)
        server.stop()


@pytest.fixture
def echo(serve: Callable[..., BackendServer]) -> Iterator[httpx.Client]:
    server = serve(Echo(), {"model": "small"})
    assert server.wait_ready(timeout=10)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def naive(serve: Callable[..., BackendServer]) -> Iterator[httpx.Client]:
    server = serve(Naive)
    assert server.wait_ready(timeout=10)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def raw_request(port: int, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send bytes as they are and read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# --- /healthz, /meta and readiness ------------------------------------------------------------


def test_healthz_is_503_loading_until_setup_returns_then_200_ok(
    serve: Callable[..., BackendServer],
) -> None:
    gate = threading.Event()
    server = serve(Echo(gate))
    try:
        loading = httpx.get(f"{server.url}/healthz")
        assert (loading.status_code, loading.json()) == (503, {"status": "loading"})
        assert not server.wait_ready(timeout=0.1)
    finally:
        gate.set()
    assert server.wait_ready(timeout=10)
    ready = httpx.get(f"{server.url}/healthz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})


def test_jobs_before_setup_returns_are_503_backend_not_ready(
    serve: Callable[..., BackendServer],
) -> None:
    gate = threading.Event()
    server = serve(Echo(gate))
    try:
        for route in ("/process", "/forecast"):
            answer = httpx.post(f"{server.url}{route}", json={"id": "j1", "input": {}})
            assert (answer.status_code, answer.json()) == (503, {"error": "backend not ready"})
    finally:
        gate.set()


def test_meta_answers_while_loading_with_the_class_attributes(
    serve: Callable[..., BackendServer],
) -> None:
    gate = threading.Event()
    server = serve(Echo(gate))
    try:
        meta = httpx.get(f"{server.url}/meta")
    finally:
        gate.set()
    assert meta.status_code == 200
    assert meta.json() == {
        "name": "echo",
        "version": "1.2.3",
        "task_type": "text2text",
        "requirements": ["numpy>=1.26"],
        "requires_python": ">=3.10",
    }


def test_meta_name_falls_back_to_the_class_name(serve: Callable[..., BackendServer]) -> None:
    server = serve(Unnamed)
    assert httpx.get(f"{server.url}/meta").json()["name"] == "Unnamed"


def test_setup_receives_the_config_and_the_port(
    echo: httpx.Client, serve: Callable[..., BackendServer]
) -> None:
    answer = echo.post("/process", json={"id": "j1", "input": {"kind": "context"}})
    assert answer.json()["output"]["config"] == {"model": "small"}
    assert answer.json()["output"]["port"] == httpx.URL(str(echo.base_url)).port


def test_setup_failure_never_becomes_ready_and_raises_on_wait(
    serve: Callable[..., BackendServer],
) -> None:
    server = serve(BrokenSetup)
    with pytest.raises(BackendSetupError, match="RuntimeError: weights not found"):
        server.wait_ready(timeout=10)
    assert not server.ready
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz")


def test_serving_something_that_is_not_a_backend_is_an_entrypoint_error() -> None:
    with pytest.raises(BackendEntrypointError, match="not a CustomBackend"):
        serve_backend(dict, 0, block=False)  # type: ignore[call-overload]


def test_serving_an_abstract_backend_names_what_is_missing() -> None:
    class Half(CustomBackend):
        def setup(self, ctx: BackendContext) -> None:
            pass

    with pytest.raises(BackendEntrypointError, match="does not implement process"):
        serve_backend(Half, 0, block=False)


def test_the_server_listens_on_127_0_0_1_only(serve: Callable[..., BackendServer]) -> None:
    server = serve(Unnamed)
    assert server.url.startswith("http://127.0.0.1:")
    # 127.0.0.2 is loopback too: a server bound to every address would answer there.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.2:{server.port}/healthz")


# --- POST /process ------------------------------------------------------------------------------


def test_process_answers_the_result_output(echo: httpx.Client) -> None:
    answer = echo.post("/process", json={"id": "job-7", "input": {"prompt": "hola"}})
    assert (answer.status_code, answer.json()) == (
        200,
        {"output": {"text": "hola", "id": "job-7"}},
    )
    assert answer.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "body must be a JSON object"),
        ({"input": {}}, "id must be a non-empty string"),
        ({"id": "", "input": {}}, "id must be a non-empty string"),
        ({"id": 7, "input": {}}, "id must be a non-empty string"),
        ({"id": "j1"}, "input must be an object"),
        ({"id": "j1", "input": "hola"}, "input must be an object"),
    ],
)
def test_a_bad_process_body_is_400(echo: httpx.Client, body: Any, message: str) -> None:
    answer = echo.post("/process", json=body)
    assert (answer.status_code, answer.json()) == (400, {"error": message})


def test_invalid_input_raised_by_process_is_400_with_its_message(echo: httpx.Client) -> None:
    answer = echo.post("/process", json={"id": "j1", "input": {}})
    assert (answer.status_code, answer.json()) == (
        400,
        {"error": "input has no prompt and no user message"},
    )


def test_an_exception_in_process_is_500_and_the_server_stays_up(echo: httpx.Client) -> None:
    failed = echo.post("/process", json={"id": "j1", "input": {"kind": "boom"}})
    assert (failed.status_code, failed.json()) == (500, {"error": "RuntimeError: model exploded"})
    after = echo.post("/process", json={"id": "j2", "input": {"prompt": "still here"}})
    assert after.json() == {"output": {"text": "still here", "id": "j2"}}


def test_process_not_returning_a_result_is_500(echo: httpx.Client) -> None:
    answer = echo.post("/process", json={"id": "j1", "input": {"kind": "not-a-result"}})
    assert (answer.status_code, answer.json()) == (
        500,
        {"error": "process() must return a Result, got dict"},
    )


def test_an_output_that_is_not_json_is_500(echo: httpx.Client) -> None:
    answer = echo.post("/process", json={"id": "j1", "input": {"kind": "nan"}})
    assert answer.status_code == 500
    assert answer.json()["error"].startswith("process() returned something not JSON")


def test_process_calls_run_one_at_a_time(serve: Callable[..., BackendServer]) -> None:
    backend = OneAtATime()
    server = serve(backend)
    assert server.wait_ready(timeout=10)
    statuses: list[int] = []

    def call(index: int) -> None:
        answer = httpx.post(f"{server.url}/process", json={"id": f"j{index}", "input": {}})
        statuses.append(answer.status_code)

    callers = [threading.Thread(target=call, args=(index,)) for index in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert statuses == [200] * 4
    assert backend.most_at_once == 1


# --- bodies: Content-Length, size, JSON -----------------------------------------------------------


@pytest.mark.parametrize(
    "length_headers",
    [
        b"Content-Length: abc\r\n",
        b"Content-Length: -1\r\n",
        b"",
        b"Content-Length: 2\r\nContent-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
    ],
    ids=["not-a-number", "negative", "missing", "conflicting", "chunked"],
)
def test_a_bad_content_length_is_400(echo: httpx.Client, length_headers: bytes) -> None:
    port = httpx.URL(str(echo.base_url)).port
    assert port is not None
    request = b"POST /process HTTP/1.1\r\nHost: x\r\n" + length_headers + b"\r\n{}"
    assert raw_request(port, request) == (400, {"error": "invalid Content-Length"})


def test_a_body_over_16_mib_is_400_without_being_read(echo: httpx.Client) -> None:
    port = httpx.URL(str(echo.base_url)).port
    assert port is not None
    request = f"POST /process HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    assert raw_request(port, request.encode()) == (400, {"error": "request body too large"})


def test_a_too_large_body_announced_with_expect_100_continue_is_refused_at_once(
    echo: httpx.Client,
) -> None:
    port = httpx.URL(str(echo.base_url)).port
    assert port is not None
    request = (
        "POST /process HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    )
    assert raw_request(port, request.encode()) == (400, {"error": "request body too large"})


def test_a_body_of_exactly_16_mib_is_served(echo: httpx.Client) -> None:
    envelope = json.dumps({"id": "big", "input": {"kind": "size", "blob": ""}}).encode()
    blob_size = MAX_BODY_BYTES - len(envelope)
    body = envelope.replace(b'"blob": ""', b'"blob": "' + b"x" * blob_size + b'"')
    assert len(body) == MAX_BODY_BYTES
    answer = echo.post("/process", content=body, headers={"Content-Type": "application/json"})
    assert answer.json() == {"output": {"size": blob_size}}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "Expecting property name enclosed in double quotes"),
        (b"", "Expecting value"),
        (b'{"id": "j1", "input": {"x": NaN}}', "NaN is not valid JSON"),
    ],
)
def test_a_body_that_is_not_json_is_400(echo: httpx.Client, body: bytes, detail: str) -> None:
    answer = echo.post("/process", content=body)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("invalid JSON body: ")
    assert detail in answer.json()["error"]


def test_one_connection_serves_request_after_request(echo: httpx.Client) -> None:
    port = httpx.URL(str(echo.base_url)).port
    assert port is not None
    body = b'{"id": "j", "input": {"prompt": "again"}}'
    request = b"POST /process HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        for _ in range(2):
            conn.sendall(request)
            received = b""
            while b'"again"' not in received:
                received += conn.recv(65536)
            assert received.startswith(b"HTTP/1.1 200")


# --- other routes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/process"),
        ("POST", "/healthz"),
        ("POST", "/v1/chat/completions"),
        ("PUT", "/process"),
        ("DELETE", "/meta"),
        ("PATCH", "/forecast"),
        ("GET", "/healthz/"),
    ],
)
def test_any_other_route_is_404_not_found(echo: httpx.Client, method: str, path: str) -> None:
    answer = echo.request(method, path, json={"id": "j1", "input": {}})
    assert (answer.status_code, answer.json()) == (404, {"error": "not found"})


def test_a_query_string_does_not_change_the_route(echo: httpx.Client) -> None:
    assert echo.get("/healthz?probe=1").json() == {"status": "ok"}


# --- POST /forecast -----------------------------------------------------------------------------


def test_forecast_answers_median_timestamps_quantiles_and_samples(naive: httpx.Client) -> None:
    answer = naive.post(
        "/forecast",
        json={
            "id": "f1",
            "target": [1, 2, 3.5],
            "horizon": 2,
            "quantile_levels": [0.1, 0.9],
            "num_samples": 2,
            "return_samples": True,
        },
    )
    assert answer.status_code == 200
    assert answer.json() == {
        "forecast": {
            "median": [3.5, 3.5],
            "timestamps": ["t+1", "t+2"],
            "quantiles": {"0.1": [3.6, 3.6], "0.9": [4.4, 4.4]},
            "samples": [[3.5, 3.5], [3.5, 3.5]],
        }
    }


def test_forecast_quantiles_default_to_0_1_0_5_0_9(naive: httpx.Client) -> None:
    answer = naive.post("/forecast", json={"id": "f1", "target": [1.0], "horizon": 1})
    assert sorted(answer.json()["forecast"]["quantiles"]) == ["0.1", "0.5", "0.9"]
    assert "samples" not in answer.json()["forecast"]


def test_forecast_on_a_backend_without_forecast_is_501(echo: httpx.Client) -> None:
    answer = echo.post("/forecast", json={"id": "f1", "target": [1.0], "horizon": 1})
    assert (answer.status_code, answer.json()) == (
        501,
        {"error": "backend does not support forecast"},
    )


def test_forecast_raising_not_implemented_is_501(serve: Callable[..., BackendServer]) -> None:
    server = serve(ForecastLater)
    assert server.wait_ready(timeout=10)
    answer = httpx.post(f"{server.url}/forecast", json={"id": "f", "target": [1], "horizon": 1})
    assert answer.status_code == 501


def test_a_bad_forecast_request_is_400_naming_the_field(naive: httpx.Client) -> None:
    answer = naive.post("/forecast", json={"id": "f1", "target": [1.0], "horizon": 0})
    assert (answer.status_code, answer.json()) == (
        400,
        {"error": "horizon must be an integer greater than 0"},
    )


@pytest.mark.parametrize(
    ("forecast_id", "status", "error"),
    [
        ("boom", 500, "RuntimeError: diverged"),
        ("not-a-result", 500, "forecast() must return a ForecastResult, got dict"),
        ("short", 500, "forecast() returned median with 1 values for horizon 3"),
        ("refuse", 400, "this series is too short"),
    ],
)
def test_forecast_failures_are_answered_and_the_server_stays_up(
    naive: httpx.Client, forecast_id: str, status: int, error: str
) -> None:
    answer = naive.post("/forecast", json={"id": forecast_id, "target": [1.0], "horizon": 3})
    assert (answer.status_code, answer.json()) == (status, {"error": error})
    assert naive.get("/healthz").status_code == 200


# --- ForecastRequest ----------------------------------------------------------------------------

VALID_FORECAST: dict[str, Any] = {"id": "f1", "target": [1.0, 2.0, 3.0], "horizon": 2}


def test_a_full_forecast_request_is_accepted() -> None:
    req = ForecastRequest.from_dict(
        {
            **VALID_FORECAST,
            "timestamps": ["2026-01-01", "2026-01-02", "2026-01-03"],
            "freq": "D",
            "quantile_levels": [0.05, 0.95],
            "past_covariates": {"temp": [20, 21, 22]},
            "future_covariates": {"promo": [0, 1]},
            "num_samples": 100,
            "return_samples": True,
        }
    )
    assert req.target == [1.0, 2.0, 3.0]
    assert req.quantile_levels == [0.05, 0.95]
    assert req.past_covariates == {"temp": [20.0, 21.0, 22.0]}
    assert req.future_covariates == {"promo": [0.0, 1.0]}
    assert (req.num_samples, req.return_samples, req.freq) == (100, True, "D")


def test_forecast_request_defaults() -> None:
    req = ForecastRequest.from_dict(VALID_FORECAST)
    assert req.quantile_levels == [0.1, 0.5, 0.9]
    assert (req.timestamps, req.freq, req.past_covariates, req.future_covariates) == (
        None,
        None,
        None,
        None,
    )
    assert (req.num_samples, req.return_samples) == (None, False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": ""}, "id must be a non-empty string"),
        ({"id": None}, "id must be a non-empty string"),
        ({"target": []}, "target must be a non-empty list of numbers"),
        ({"target": "1,2"}, "target must be a non-empty list of numbers"),
        ({"target": [1, "2"]}, "target[1] must be a finite number"),
        ({"target": [1, True]}, "target[1] must be a finite number"),
        ({"target": [1, float("inf")]}, "target[1] must be a finite number"),
        ({"horizon": 0}, "horizon must be an integer greater than 0"),
        ({"horizon": 2.0}, "horizon must be an integer greater than 0"),
        ({"horizon": True}, "horizon must be an integer greater than 0"),
        ({"horizon": None}, "horizon must be an integer greater than 0"),
        ({"timestamps": ["a", "b"]}, "timestamps must be a list as long as target (3)"),
        ({"timestamps": ["a", "b", None]}, "timestamps[2] must be a string or a number"),
        ({"freq": ""}, "freq must be a non-empty string"),
        ({"freq": 3}, "freq must be a non-empty string"),
        ({"quantile_levels": [0.5, 1.0]}, "quantile_levels[1] must be between 0 and 1"),
        ({"quantile_levels": [0]}, "quantile_levels[0] must be between 0 and 1"),
        ({"quantile_levels": 0.5}, "quantile_levels must be a list of numbers"),
        ({"past_covariates": {"x": [1, 2]}}, "past_covariates['x'] must be a list of 3 numbers"),
        ({"past_covariates": [1, 2, 3]}, "past_covariates must be an object"),
        ({"past_covariates": {"": [1, 2, 3]}}, "past_covariates names must be non-empty"),
        ({"future_covariates": {"x": [1, 2, 3]}}, "future_covariates['x'] must be a list of 2"),
        ({"future_covariates": {"x": [1, "a"]}}, "future_covariates['x'][1] must be a finite"),
        ({"num_samples": 0}, "num_samples must be an integer greater than 0"),
        ({"num_samples": "10"}, "num_samples must be an integer greater than 0"),
        ({"return_samples": "yes"}, "return_samples must be true or false"),
    ],
)
def test_a_forecast_request_is_checked(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        ForecastRequest.from_dict({**VALID_FORECAST, **change})
    assert str(raised.value).startswith(message)


def test_a_forecast_request_must_be_an_object() -> None:
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        ForecastRequest.from_dict([1, 2])


def test_forecast_result_quantile_keys_are_the_levels_as_text() -> None:
    result = ForecastResult(median=[1, 2], quantiles={0.1: [0, 1], "0.75": [2, 3]})
    assert result.to_dict() == {
        "forecast": {"median": [1.0, 2.0], "quantiles": {"0.1": [0.0, 1.0], "0.75": [2.0, 3.0]}}
    }


# --- Job and Result -------------------------------------------------------------------------------


def test_job_text_is_the_prompt_or_the_last_user_message() -> None:
    assert Job("j", {"prompt": "hola"}).text() == "hola"
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url"}]},
    ]
    assert Job("j", {"messages": messages}).text() == "look"


@pytest.mark.parametrize(
    "job_input",
    [{}, {"prompt": ""}, {"messages": [{"role": "system", "content": "x"}]}],
)
def test_job_text_without_a_prompt_or_user_message_is_invalid_input(
    job_input: dict[str, Any],
) -> None:
    with pytest.raises(InvalidInput):
        Job("j", job_input).text()


def test_job_messages_turn_a_prompt_into_one_user_turn() -> None:
    assert Job("j", {"prompt": "hi"}).messages() == [{"role": "user", "content": "hi"}]
    turns = [{"role": "user", "content": "a"}]
    assert Job("j", {"messages": turns}).messages() == turns
    with pytest.raises(InvalidInput, match="list of"):
        Job("j", {"messages": "hi"}).messages()


def test_job_audio_bytes_from_audio_b64() -> None:
    audio = b"RIFF\x00\x01\r\n--not-a-boundary"
    assert Job("j", {"audio_b64": base64.b64encode(audio).decode()}).audio_bytes() == audio
    with pytest.raises(InvalidInput, match="not valid base64"):
        Job("j", {"audio_b64": "@@@"}).audio_bytes()
    with pytest.raises(InvalidInput, match="no audio_b64"):
        Job("j", {}).audio_bytes()


def transcription_input(audio: bytes) -> dict[str, Any]:
    """What the Manager forwards for /v1/audio/transcriptions: the caller's multipart body."""
    request = httpx.Request(
        "POST",
        "http://manager/v1/audio/transcriptions",
        data={"model": "whisper", "language": "es"},
        files={"file": ("clip.wav", audio, "audio/wav")},
    )
    return {
        "raw_body_b64": base64.b64encode(request.read()).decode(),
        "raw_body_content_type": request.headers["content-type"],
    }


def test_job_audio_bytes_from_a_multipart_transcription_body() -> None:
    audio = bytes(range(256)) * 4 + b"\r\n\r\n--\r\n"
    job = Job("j", transcription_input(audio))
    assert job.audio_bytes() == audio
    assert job.form_fields() == {"model": "whisper", "language": "es"}


def test_job_audio_bytes_from_a_raw_body_that_is_not_multipart() -> None:
    job_input = {
        "raw_body_b64": base64.b64encode(b"OggS").decode(),
        "raw_body_content_type": "audio/ogg",
    }
    assert Job("j", job_input).audio_bytes() == b"OggS"
    assert Job("j", job_input).form_fields() == {}


def test_result_output_must_be_a_dict() -> None:
    with pytest.raises(TypeError, match="must be a dict"):
        Result(["text"])  # type: ignore[arg-type]


def test_manifest_of_a_backend_class_names_its_entrypoint() -> None:
    manifest = Echo.manifest()
    assert manifest.entrypoint == f"{__name__}:Echo"
    assert (manifest.slug, manifest.sdk_protocol) == ("echo", "1")
    assert (manifest.name, manifest.version, manifest.task_type) == ("echo", "1.2.3", "text2text")
    assert manifest.requires_python == ">=3.10"


def test_task_types_are_the_nine_custom_backends_may_declare() -> None:
    assert TASK_TYPES == (
        "text2text",
        "embedding",
        "text2image",
        "text2audio",
        "audio2text",
        "reranker",
        "classification",
        "reward",
        "forecast",
    )


# --- pick_device --------------------------------------------------------------------------------


def fake_torch(*, cuda_devices: int = 0, mps: bool = False) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        cuda=types.SimpleNamespace(
            is_available=lambda: cuda_devices > 0, device_count=lambda: cuda_devices
        ),
        backends=types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: mps)),
    )


def test_pick_device_without_torch_is_cpu(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # an import of torch now fails
    assert pick_device() == "cpu"
    assert pick_device("cpu") == "cpu"
    assert capsys.readouterr().err == ""
    assert pick_device("cuda") == "cpu"
    assert (
        "warning: device 'cuda' cannot be used (torch is not installed)" in capsys.readouterr().err
    )


def test_pick_device_auto_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda_devices=2, mps=True))
    assert pick_device() == "cuda"
    assert pick_device("cuda:1") == "cuda:1"
    assert pick_device("mps") == "mps"
    monkeypatch.setitem(sys.modules, "torch", fake_torch(mps=True))
    assert pick_device("auto") == "mps"


@pytest.mark.parametrize(
    ("preferred", "cuda_devices"), [("cuda", 0), ("cuda:2", 1), ("mps", 1), ("tpu", 1)]
)
def test_pick_device_falls_back_to_cpu_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    preferred: str,
    cuda_devices: int,
) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda_devices=cuda_devices))
    assert pick_device(preferred) == "cpu"
    assert f"warning: device {preferred!r} cannot be used" in capsys.readouterr().err
