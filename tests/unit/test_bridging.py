"""The OpenAI-to-custom-backend mapping's rules, one by one (ik_contracts/bridging.py).

tests/agent/test_custom_backend_proxy.py runs the same mapping through the agent's proxy against
a real backend; here are the edges a well-behaved backend never shows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import pytest

from ik_contracts.bridging import (
    FORECAST_PATH,
    MAX_BACKEND_ANSWER_BYTES,
    MAX_BACKEND_BODY_BYTES,
    OFF_LOOP_BYTES,
    PROCESS_PATH,
    BackendCall,
    BridgeError,
    backend_answer,
    backend_call,
    bridge_answer,
    bridge_request,
)


def sent(call: BackendCall) -> dict[str, object]:
    return json.loads(call.body)


def answer_to(route: str, status: int, body: object, *, stream: bool = False) -> tuple[int, object]:
    call = BackendCall(route=route, path=PROCESS_PATH, body=b"{}", job_id="j1", stream=stream)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = backend_answer(call, status, raw, model="m", now=1700000000)
    try:
        return answer.status, json.loads(answer.body)
    except ValueError:
        return answer.status, answer.body


# --- requests ----------------------------------------------------------------------------------


def test_the_callers_image_json_is_passed_verbatim() -> None:
    request = {"model": "sd", "prompt": "a cat", "size": "512x512", "extra": {"seed": 1}}
    call = backend_call("v1/images/generations", "POST", json.dumps(request).encode(), "x")
    assert call.path == PROCESS_PATH
    assert sent(call) == {"id": call.job_id, "input": {"passthrough_body": request}}


def test_chat_sends_the_messages_and_the_sampling_settings_it_was_given() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    request = {"model": "m", "messages": messages, "max_tokens": 8, "temperature": 0.0}
    call = backend_call("v1/chat/completions", "POST", json.dumps(request).encode(), "x")
    assert sent(call)["input"] == {
        "messages": messages,
        "params": {"temperature": 0.0, "max_tokens": 8},
    }
    bare = backend_call("v1/completions", "POST", b'{"prompt": "Hi", "stream": false}', "x")
    assert sent(bare)["input"] == {"prompt": "Hi"}  # nothing to pass on: no params


def test_a_multipart_body_is_sent_as_base64_with_its_content_type() -> None:
    body = b"--b\r\ncontent-disposition: form-data; name=file\r\n\r\n\x00\xff\r\n--b--\r\n"
    call = backend_call(
        "v1/audio/transcriptions", "POST", body, "multipart/form-data; boundary=b", job_id="j"
    )
    given = sent(call)["input"]
    assert isinstance(given, dict)
    assert base64.b64decode(given["raw_body_b64"]) == body
    assert given["raw_body_content_type"] == "multipart/form-data; boundary=b"


def test_a_forecast_is_sent_to_the_forecast_route_with_an_id_when_it_has_none() -> None:
    call = backend_call("forecast", "POST", b'{"target": [1], "horizon": 1}', "", job_id="f1")
    assert (call.path, sent(call)) == (FORECAST_PATH, {"target": [1], "horizon": 1, "id": "f1"})
    own = backend_call("forecast", "POST", b'{"id": "mine", "target": [1], "horizon": 1}', "")
    assert sent(own)["id"] == "mine"


def test_voices_ask_the_backend_to_list_them() -> None:
    call = backend_call("v1/audio/voices", "GET", b"", "", job_id="v")
    assert sent(call) == {"id": "v", "input": {"list_voices": True}}


@pytest.mark.parametrize(
    ("route", "method", "body", "status", "code"),
    [
        ("v1/chat/completions", "POST", b"{not json", 400, "invalid_input"),
        ("v1/chat/completions", "POST", b"[1, 2]", 400, "invalid_input"),
        ("v1/chat/completions", "POST", b'{"messages": "hi"}', 400, "invalid_input"),
        ("v1/completions", "POST", b'{"prompt": 7}', 400, "invalid_input"),
        ("v1/embeddings", "POST", b'{"model": "e"}', 400, "invalid_input"),
        ("v1/chat/completions", "GET", b"", 405, "method_not_allowed"),
        ("v1/audio/voices", "POST", b"{}", 405, "method_not_allowed"),
        ("v1/models", "GET", b"", 404, "route_not_found"),
    ],
)
def test_a_request_the_bridge_cannot_carry_is_a_typed_4xx(
    route: str, method: str, body: bytes, status: int, code: str
) -> None:
    with pytest.raises(BridgeError) as refused:
        backend_call(route, method, body, "application/json")
    assert (refused.value.status, refused.value.code) == (status, code)


def test_a_body_over_the_runtimes_cap_once_encoded_is_refused() -> None:
    limit = MAX_BACKEND_BODY_BYTES * 3 // 4
    backend_call("v1/images/edits", "POST", b"x" * (limit - 1024), "multipart/form-data")
    with pytest.raises(BridgeError, match="at most 16777216 bytes") as refused:
        backend_call("v1/images/edits", "POST", b"x" * limit, "multipart/form-data")
    assert refused.value.status == 413


# --- answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "public", "code"),
    [
        (400, 400, "invalid_input"),
        (501, 501, "not_implemented"),
        (503, 503, "backend_not_ready"),
        (500, 502, "backend_error"),
        (404, 502, "backend_error"),
    ],
)
def test_the_backends_errors_keep_their_message(status: int, public: int, code: str) -> None:
    got, body = answer_to("v1/chat/completions", status, {"error": "it says why"})
    assert got == public
    assert isinstance(body, dict)
    assert body["code"] == code
    assert "it says why" in body["message"]


def test_only_a_backend_not_ready_is_retryable() -> None:
    call = BackendCall(route="v1/embeddings", path=PROCESS_PATH, body=b"{}", job_id="j")
    assert backend_answer(call, 503, b'{"error": "backend not ready"}', model="m").retryable
    assert not backend_answer(call, 500, b'{"error": "boom"}', model="m").retryable


@pytest.mark.parametrize(
    ("route", "output"),
    [
        ("v1/chat/completions", {"answer": "no text key"}),
        ("v1/embeddings", {"embeddings": "nope"}),
        ("v1/images/generations", {"png": "..."}),
        ("v1/audio/speech", {"audio_b64": "not base64!"}),
        ("v1/audio/speech", {"audio_b64": "AAAA", "content_type": "audio/wav\r\nx-evil: 1"}),
        ("v1/audio/voices", {"voices": "alloy"}),
    ],
)
def test_an_unusable_output_is_a_502_naming_what_is_wrong(
    route: str, output: dict[str, object]
) -> None:
    status, body = answer_to(route, 200, {"output": output})
    assert status == 502
    assert isinstance(body, dict)
    assert body["code"] == "backend_error"
    assert "unusable" in body["message"]


def test_an_answer_without_output_is_a_502() -> None:
    assert answer_to("v1/chat/completions", 200, {"result": {}})[0] == 502
    assert answer_to("v1/chat/completions", 200, b"not json")[0] == 502


def test_images_as_a_list_of_base64_are_wrapped_in_openais_shape() -> None:
    status, body = answer_to("v1/images/generations", 200, {"output": {"images": ["QQ==", "Qg=="]}})
    assert (status, body) == (
        200,
        {"created": 1700000000, "data": [{"b64_json": "QQ=="}, {"b64_json": "Qg=="}]},
    )


def test_audio_without_a_content_type_is_octet_stream() -> None:
    call = BackendCall(route="v1/audio/generate", path=PROCESS_PATH, body=b"{}", job_id="j")
    output = {"output": {"audio_b64": base64.b64encode(b"RIFF....").decode()}}
    answer = backend_answer(call, 200, json.dumps(output).encode(), model="m")
    assert (answer.content_type, answer.body) == ("application/octet-stream", b"RIFF....")


def test_a_streamed_completion_is_one_event_then_done() -> None:
    status, body = answer_to("v1/completions", 200, {"output": {"text": "t"}}, stream=True)
    assert status == 200
    assert isinstance(body, bytes)
    events = [line for line in body.split(b"\n") if line]
    assert events[-1] == b"data: [DONE]"
    assert json.loads(events[0][len(b"data: ") :])["choices"][0]["text"] == "t"


def test_a_forecast_answer_passes_as_it_is_and_must_hold_a_forecast() -> None:
    call = BackendCall(route="forecast", path=FORECAST_PATH, body=b"{}", job_id="j")
    forecast = {"forecast": {"median": [1.0], "quantiles": {"0.1": [0.5]}}}
    answer = backend_answer(call, 200, json.dumps(forecast).encode(), model="m")
    assert (answer.status, json.loads(answer.body)) == (200, forecast)
    assert backend_answer(call, 200, b'{"median": [1]}', model="m").status == 502


# --- off the event loop ------------------------------------------------------------------------


def test_a_backend_answer_is_read_up_to_64_mib() -> None:
    assert MAX_BACKEND_ANSWER_BYTES == 64 * 1024 * 1024


async def test_large_bodies_are_mapped_on_a_thread_small_ones_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[str] = []
    real_b64encode = base64.b64encode

    def b64encode(data: bytes) -> bytes:
        threads.append(threading.current_thread().name)
        return real_b64encode(data)

    monkeypatch.setattr(base64, "b64encode", b64encode)
    image = b"\x89PNG" + b"x" * OFF_LOOP_BYTES
    for body in (b"small", image):
        call = await bridge_request("v1/images/edits", "POST", body, "multipart/form-data")
        assert (
            call.body
            == backend_call(
                "v1/images/edits", "POST", body, "multipart/form-data", job_id=call.job_id
            ).body
        )
    loop_thread = threading.current_thread().name
    assert threads[0] == loop_thread and threads[2] != loop_thread

    raw = json.dumps({"output": {"b64_json": real_b64encode(image).decode()}}).encode()
    answer = await asyncio.wait_for(bridge_answer(call, 200, raw, model="m"), 10)
    assert json.loads(answer.body)["data"] == [{"b64_json": real_b64encode(image).decode()}]
