"""The agent's proxy in front of a real custom backend: OpenAI routes in, /process out, and back.

The backend is the SDK's own runtime (`serve_backend`) serving tests/agent/sample_backend; the
proxy runs in a real uvicorn, as the agent runs it. Nothing between them is simulated.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import socket
import threading
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from inferencekey.backend import BackendContext, BackendServer, serve_backend
from starlette.types import ASGIApp

from ik_contracts.engines import engine_for
from ik_contracts.protocol import (
    Assignments,
    CustomBackendRef,
    ReplicaAssignment,
    ReplicaState,
)
from ik_contracts.upstream import UpstreamClient
from tests.agent.sample_backend.sample_backend import Sample
from worker_agent.agent import Agent
from worker_agent.config import AgentConfig
from worker_agent.gpus import NoGpuInventory
from worker_agent.proxy import AgentProxy
from worker_agent.replicas import LocalReplica

SECRET = "gateway-secret-0123456789"
GATEWAY = {"x-inferencekey-gateway": SECRET}
MODEL = "sample-model"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def ref(task_type: str) -> CustomBackendRef:
    return CustomBackendRef(
        id="cbv_test",
        slug="sample",
        version="1.0.0",
        sha256="0" * 64,
        size_bytes=1,
        entrypoint="sample_backend:Sample",
        task_type=task_type,
    )


def agent_serving(ports: dict[str, int]) -> Agent:
    """An agent whose Manager handed it SECRET and one ready replica of demo/<task type> per
    entry of ``ports``, each a custom backend answering on that port."""
    agent = Agent(AgentConfig(manager_url="http://127.0.0.1:1", token="t"), NoGpuInventory())
    assignments = []
    for task_type, port in ports.items():
        assignment = ReplicaAssignment(
            id=f"rep_{task_type}",
            workload_id=f"wl_{task_type}",
            project_slug="demo",
            workload_slug=task_type,
            generation=1,
            backend="sample",
            task_type=task_type,
            model_name=MODEL,
            custom_backend=ref(task_type),
        )
        assignments.append(assignment)
        engine = engine_for(assignment.backend, assignment.custom_backend)
        agent.replicas[assignment.id] = LocalReplica(
            assignment, engine, port, state=ReplicaState.READY, served_model=MODEL
        )
    agent.desired = Assignments(
        worker_id="wrk_test",
        version="1",
        heartbeat_interval_s=1.0,
        replicas=assignments,
        gateway_secret=SECRET,
    )
    return agent


TASK_TYPES = (
    "text2text",
    "embedding",
    "audio2text",
    "text2image",
    "text2audio",
    "forecast",
    "classification",
)


@pytest.fixture(scope="module")
def backend() -> Iterator[BackendServer]:
    server = serve_backend(Sample, 0, {"greeting": "hi"}, block=False)
    assert server.wait_ready(timeout=10)
    yield server
    server.stop()


@pytest.fixture
async def run_asgi() -> AsyncIterator[Callable[[ASGIApp], Awaitable[str]]]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: ASGIApp) -> str:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            app, lifespan="off", log_level="warning", timeout_graceful_shutdown=2
        )
        server = uvicorn.Server(config)
        servers.append((server, asyncio.create_task(server.serve(sockets=[listener]))))
        while not server.started:
            await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for server, task in servers:
        server.should_exit = True
        await task


@pytest.fixture
async def proxied(
    client: UpstreamClient, run_asgi: Callable[[ASGIApp], Awaitable[str]]
) -> AsyncIterator[Callable[[Agent], Awaitable[httpx.AsyncClient]]]:
    https: list[httpx.AsyncClient] = []

    async def start(agent: Agent) -> httpx.AsyncClient:
        url = await run_asgi(AgentProxy(agent, client))
        https.append(httpx.AsyncClient(base_url=url, headers=GATEWAY, timeout=30))
        return https[-1]

    yield start
    for http in https:
        await http.aclose()


@pytest.fixture
async def http(
    backend: BackendServer, proxied: Callable[[Agent], Awaitable[httpx.AsyncClient]]
) -> httpx.AsyncClient:
    """The agent's proxy, serving one workload per task type (named for it) from the sample."""
    return await proxied(agent_serving(dict.fromkeys(TASK_TYPES, backend.port)))


def multipart(fields: dict[str, str], file: bytes, filename: str) -> tuple[bytes, str]:
    """A multipart/form-data body as a client would send it, and its Content-Type."""
    boundary = "ik-boundary-7d3f"
    parts = [
        f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\ncontent-disposition: form-data; name="file"; '
        f'filename="{filename}"\r\ncontent-type: application/octet-stream\r\n\r\n'.encode()
        + file
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# --- text --------------------------------------------------------------------------------------


async def test_chat_is_answered_as_an_openai_chat_completion(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/endpoint/demo/text2text/v1/chat/completions",
        json={"model": "text2text", "messages": [{"role": "user", "content": "Say hi"}]},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-inferencekey-replica"] == "rep_text2text"
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == MODEL
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "hi: Say hi"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


async def test_a_streamed_chat_is_one_event_with_the_whole_answer_then_done(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/endpoint/demo/text2text/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Say hi"}], "stream": True},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    (chunk,) = [json.loads(event) for event in events[:-1]]
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["choices"][0]["delta"]["content"] == "hi: Say hi"
    assert chunk["choices"][0]["finish_reason"] == "stop"


async def test_a_completion_sends_the_prompt(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/endpoint/demo/text2text/v1/completions", json={"prompt": "once upon"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == "hi: once upon"
    assert response.json()["object"] == "text_completion"


async def test_embeddings_come_back_in_openais_list_shape(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/endpoint/demo/embedding/v1/embeddings", json={"model": "e", "input": ["ab", "abcd"]}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "list"
    assert [item["embedding"] for item in answer["data"]] == [[2.0, 1.0], [4.0, 1.0]]
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert answer["model"] == MODEL


async def test_models_names_the_served_model_without_asking_the_backend(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/endpoint/demo/text2text/v1/models")
    assert response.status_code == 200
    assert [model["id"] for model in response.json()["data"]] == [MODEL]


# --- audio and images --------------------------------------------------------------------------


async def test_a_transcription_reaches_the_backend_byte_for_byte(http: httpx.AsyncClient) -> None:
    audio = bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n\x00"
    body, content_type = multipart({"model": "whisper", "language": "es"}, audio, "a.wav")
    response = await http.post(
        "/endpoint/demo/audio2text/v1/audio/transcriptions",
        content=body,
        headers={"content-type": content_type},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["text"] == f"heard {len(audio)} bytes"
    assert answer["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert answer["audio_sha256"] == hashlib.sha256(audio).hexdigest()
    assert answer["content_type"] == content_type
    assert answer["fields"] == {"model": "whisper", "language": "es"}


async def test_an_image_generation_answers_a_png_in_openais_image_shape(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/endpoint/demo/text2image/v1/images/generations",
        json={"model": "sd", "prompt": "a red square", "n": 2, "size": "2x2"},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["created"] == 1700000000
    assert len(answer["data"]) == 2
    assert base64.b64decode(answer["data"][0]["b64_json"]).startswith(PNG_MAGIC)


async def test_an_image_edit_sends_the_upload_and_wraps_the_answer_as_openais_shape(
    http: httpx.AsyncClient,
) -> None:
    body, content_type = multipart({"prompt": "bluer"}, b"\x89PNG fake input", "in.png")
    response = await http.post(
        "/endpoint/demo/text2image/v1/images/edits",
        content=body,
        headers={"content-type": content_type},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer["created"], int)
    picture = base64.b64decode(answer["data"][0]["b64_json"])
    assert picture.startswith(PNG_MAGIC)


async def test_speech_is_answered_as_raw_wav_bytes(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/endpoint/demo/text2audio/v1/audio/speech",
        json={"model": "tts", "input": "hello", "voice": "alloy"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content)) as sound:
        assert sound.getnframes() == len("hello") * 100
        assert sound.getframerate() == 8000


async def test_voices_are_listed_from_the_backend(http: httpx.AsyncClient) -> None:
    response = await http.get("/endpoint/demo/text2audio/v1/audio/voices")
    assert response.status_code == 200, response.text
    assert response.json() == {"voices": [{"id": "alloy", "name": "Alloy"}]}


# --- forecast and async-only kinds -------------------------------------------------------------


async def test_a_forecast_goes_to_the_backends_forecast_route(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/endpoint/demo/forecast/forecast", json={"target": [1, 2, 3], "horizon": 2}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"forecast": {"median": [3.0, 3.0]}}


async def test_a_classification_job_gets_the_backends_output_as_it_is(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/endpoint/demo/classification/classify", json={"model": "c", "input": ["great!"]}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "label": "positive",
        "score": 0.75,
        "seen": {"model": "c", "input": ["great!"]},
    }


# --- errors ------------------------------------------------------------------------------------


async def test_invalid_input_in_the_backend_is_a_400_with_its_message(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/endpoint/demo/text2text/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "invalid"}]},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_input"
    assert response.json()["message"] == "the prompt says invalid"


async def test_a_backend_exception_is_a_502_backend_error_with_its_message(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/endpoint/demo/text2text/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "crash"}]},
    )
    assert response.status_code == 502
    assert response.json()["code"] == "backend_error"
    assert "the model fell over" in response.json()["message"]
    assert "x-inferencekey-retryable" not in response.headers


class NoForecast(Sample):
    def forecast(self, req: Any) -> Any:
        return super(Sample, self).forecast(req)


class Loading(Sample):
    gate = threading.Event()

    def setup(self, ctx: BackendContext) -> None:
        self.gate.wait(30)


async def test_a_backend_without_forecast_is_a_501(
    proxied: Callable[[Agent], Awaitable[httpx.AsyncClient]],
) -> None:
    server = serve_backend(NoForecast, 0, block=False)
    try:
        assert server.wait_ready(timeout=10)
        http = await proxied(agent_serving({"forecast": server.port}))
        response = await http.post(
            "/endpoint/demo/forecast/forecast", json={"target": [1.0], "horizon": 1}
        )
    finally:
        server.stop()
    assert response.status_code == 501
    assert response.json()["code"] == "not_implemented"


async def test_a_backend_still_loading_is_a_retryable_503(
    proxied: Callable[[Agent], Awaitable[httpx.AsyncClient]],
) -> None:
    server = serve_backend(Loading, 0, block=False)
    try:
        http = await proxied(agent_serving({"text2text": server.port}))
        response = await http.post(
            "/endpoint/demo/text2text/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
    finally:
        Loading.gate.set()
        server.stop()
    assert response.status_code == 503
    assert response.json()["code"] == "backend_not_ready"
    assert response.headers["x-inferencekey-retryable"] == "1"


async def test_a_gone_backend_is_a_retryable_502(
    proxied: Callable[[Agent], Awaitable[httpx.AsyncClient]],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    http = await proxied(agent_serving({"text2text": port}))
    response = await http.post(
        "/endpoint/demo/text2text/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 502
    assert response.json()["code"] == "engine_unreachable"
    assert response.headers["x-inferencekey-retryable"] == "1"


async def test_a_body_over_the_runtimes_cap_once_encoded_is_a_413(
    http: httpx.AsyncClient,
) -> None:
    # 13 MiB of audio is more than 16 MiB in base64.
    body, content_type = multipart({"model": "w"}, b"\x01" * (13 * 1024 * 1024), "big.wav")
    response = await http.post(
        "/endpoint/demo/audio2text/v1/audio/transcriptions",
        content=body,
        headers={"content-type": content_type},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"


async def test_a_chat_with_the_wrong_method_is_a_405(http: httpx.AsyncClient) -> None:
    response = await http.get("/endpoint/demo/text2text/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
