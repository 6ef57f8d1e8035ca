"""The Python SDK against the wire fixtures both SDKs share (wire-fixtures/, README there).

Each case is played by a small HTTP server on 127.0.0.1: it answers the case's requests in
order with the recorded answers and records what it was sent, and the test compares the two,
then what the SDK made of the answers. The TypeScript SDK runs the same files
(sdk-ts/test/unit/wire-fixtures.test.mjs), so the two cannot drift apart on the wire.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from inferencekey import (
    DataClient,
    EmbedResult,
    EndpointRef,
    Job,
    ManagementClient,
    ReadinessEvent,
    RerankResult,
    TextResult,
    Workload,
    WorkloadSpec,
    webhooks,
)
from inferencekey._sse import SseDecoder

FIXTURES = Path(__file__).resolve().parents[2] / "wire-fixtures"
ENV_VARS = (
    "INFERENCEKEY_BASE_URL",
    "INFERENCEKEY_PROJECT",
    "INFERENCEKEY_SDK_TOKEN",
    "INFERENCEKEY_API_KEY",
)
SDK_TOKEN = "ik_sdk_0123abcd_" + "a" * 64
LIVE_KEY = "ik_live_89abcdef_" + "b" * 64
UNEXPECTED = {"status": 500, "body": {"error": "the fixture expects no more requests"}}


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def cases(name: str, key: str = "cases") -> list[Any]:
    return [pytest.param(case, id=case["name"]) for case in load(name)[key]]


class FixtureServer:
    """Answers requests with a case's recorded answers, in order, and records each request."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def play(self, exchanges: list[dict[str, Any]]) -> None:
        self.exchanges, self.requests = exchanges, []

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_response(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(request)
            index = len(self.requests) - 1
            if index < len(self.exchanges):
                response: dict[str, Any] = self.exchanges[index]["response"]
                return response
            return UNEXPECTED

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                response = server._next_response(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {key.lower(): value for key, value in self.headers.items()},
                        "body": json.loads(raw) if raw else None,
                    }
                )
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.answer(response)

            do_GET = do_POST = do_PATCH = do_DELETE = handle_any

            def answer(self, response: dict[str, Any]) -> None:
                if "sse" in response:
                    payload, kind = response["sse"].encode(), "text/event-stream"
                elif "text" in response:
                    payload, kind = response["text"].encode(), "text/plain"
                elif "body" in response:
                    payload, kind = json.dumps(response["body"]).encode(), "application/json"
                else:
                    payload, kind = b"", ""
                self.send_response(response["status"])
                if kind:
                    self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture(scope="module")
def fixture_server() -> Iterator[FixtureServer]:
    server = FixtureServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def substitute(value: Any, base_url: str) -> Any:
    return value.replace("$BASE_URL", base_url) if isinstance(value, str) else value


def client_settings(file: dict[str, Any], case: dict[str, Any], base_url: str) -> dict[str, Any]:
    settings = case.get("client", file.get("client", {}))
    return {key: substitute(value, base_url) for key, value in settings.items()}


def management(settings: dict[str, Any]) -> ManagementClient:
    return ManagementClient.from_env(
        base_url=settings.get("base_url"),
        project=settings.get("project"),
        sdk_token=settings.get("sdk_token"),
    )


def normalised(result: Any) -> Any:
    """A result as the fixtures write it (snake_case, no ``raw``)."""
    if isinstance(result, EndpointRef):
        plan = None
        if result.plan is not None:
            changes = [asdict(change) for change in result.plan.changes]
            plan = {"action": result.plan.action, "changes": changes}
        return {
            "project_slug": result.project_slug,
            "workload_slug": result.workload_slug,
            "plan": plan,
        }
    if isinstance(result, TextResult):
        return {"text": result.text, "model": result.model, "finish_reason": result.finish_reason}
    if isinstance(result, EmbedResult):
        return {"embeddings": result.embeddings, "model": result.model}
    if isinstance(result, RerankResult):
        items = [asdict(item) for item in result.results]
        return {"results": items, "model": result.model}
    if isinstance(result, Job):
        job = asdict(result)
        del job["raw"]
        if job["data"] is not None:
            del job["data"]["raw"]
        return {**job, "done": result.done}
    return result


def listed(workloads: Iterable[Workload]) -> list[dict[str, Any]]:
    """Listed workloads as the fixtures write them: id, slug and phase."""
    return [
        {"id": w.id, "slug": w.slug, "phase": w.status.phase if w.status else None}
        for w in workloads
    ]


def run_call(
    file: dict[str, Any], case: dict[str, Any], base_url: str, events: list[ReadinessEvent]
) -> tuple[Any, Exception | None]:
    """Make the case's call; its normalised result (or partial stream) and error, if any."""
    call = case["call"]
    settings = client_settings(file, case, base_url)
    op = call["op"]
    chunks: list[dict[str, Any]] = []
    try:
        if op in ("ensure", "delete", "wait_until_ready", "list_workloads", "iter_workloads"):
            mgmt = management(settings)
            if op == "list_workloads":
                page = mgmt.list_workloads(
                    limit=call["limit"], after=call.get("after"), project=call.get("project")
                )
                return {"workloads": listed(page.workloads), "next_cursor": page.next_cursor}, None
            if op == "iter_workloads":
                options = {"page_size": call["page_size"]} if "page_size" in call else {}
                workloads = mgmt.iter_workloads(project=call.get("project"), **options)
                return {"workloads": listed(workloads)}, None
            if op == "ensure":
                options = {"on_drift": call["on_drift"]} if "on_drift" in call else {}
                spec = WorkloadSpec(**call["spec"])
                return normalised(mgmt.ensure(spec, project=call.get("project"), **options)), None
            if op == "delete":
                return mgmt.delete(call["slug"], project=call.get("project")), None
            mgmt.wait_until_ready(
                call["slug"], project=call.get("project"), timeout=15, on_progress=events.append
            )
            return None, None
        data = DataClient.from_env(
            base_url=settings.get("base_url"),
            project=settings.get("project"),
            api_key=settings.get("api_key"),
        )
        endpoint = data.endpoint(call["workload"], api_key=call.get("api_key"))
        args = call["args"]
        if op == "generate_text_stream":
            for chunk in endpoint.generate_text_stream(**args):
                chunks.append({"text": chunk.text, "finish_reason": chunk.finish_reason})
            return {"chunks": chunks}, None
        operations: dict[str, Callable[..., Any]] = {
            "generate_text": endpoint.generate_text,
            "embed": endpoint.embed,
            "rerank": endpoint.rerank,
            "submit_job": endpoint.submit_job,
            "get_job": endpoint.get_job,
            "wait_job": endpoint.wait_job,
        }
        return normalised(operations[op](**args)), None
    except Exception as exc:
        return ({"chunks": chunks} if op == "generate_text_stream" else None), exc


def assert_error(error: Exception | None, expected: dict[str, Any]) -> None:
    assert error is not None, f"expected {expected['type']}, nothing was raised"
    assert type(error).__name__ == expected["type"], repr(error)
    message = expected.get("message")
    if isinstance(message, dict):
        message = message["python"]
    if message is not None:
        assert str(error) == message
    if "message_prefix" in expected:
        assert str(error).startswith(expected["message_prefix"]), str(error)
    if "code" in expected:
        assert getattr(error, "code", None) == expected["code"]


def assert_requests(server: FixtureServer, exchanges: list[dict[str, Any]]) -> None:
    sent = server.requests
    wanted = [exchange["request"] for exchange in exchanges]
    assert [(r["method"], r["path"]) for r in sent] == [(w["method"], w["path"]) for w in wanted]
    for request, want in zip(sent, wanted, strict=True):
        assert request["body"] == want.get("body"), f"{want['method']} {want['path']}"
        for name, value in want.get("headers", {}).items():
            assert request["headers"].get(name, "").split(";")[0] == value, name


def play(
    name: str, case: dict[str, Any], server: FixtureServer, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Exception | None, list[ReadinessEvent]]:
    for variable, value in case.get("env", {}).items():
        monkeypatch.setenv(variable, substitute(value, server.url))
    exchanges = case.get("exchanges", [])
    server.play(exchanges)
    events: list[ReadinessEvent] = []
    result, error = run_call(load(name), case, server.url, events)
    if "error" in case:
        assert_error(error, case["error"])
    elif error is not None:
        raise error
    if "result" in case:
        assert result == case["result"]
    assert_requests(server, exchanges)
    return result, error, events


@pytest.mark.parametrize("case", cases("management.json"))
def test_management(
    case: dict[str, Any], fixture_server: FixtureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    play("management.json", case, fixture_server, monkeypatch)


@pytest.mark.parametrize("case", cases("data.json"))
def test_data(
    case: dict[str, Any], fixture_server: FixtureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    play("data.json", case, fixture_server, monkeypatch)


@pytest.mark.parametrize("case", cases("local_checks.json"))
def test_local_checks_send_nothing(
    case: dict[str, Any], fixture_server: FixtureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    play("local_checks.json", case, fixture_server, monkeypatch)
    assert fixture_server.requests == []


@pytest.mark.parametrize("case", cases("jobs.json"))
def test_jobs(
    case: dict[str, Any], fixture_server: FixtureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    play("jobs.json", case, fixture_server, monkeypatch)


@pytest.mark.parametrize("case", cases("jobs.json", "local_cases"))
def test_job_local_checks_send_nothing(
    case: dict[str, Any], fixture_server: FixtureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    play("jobs.json", case, fixture_server, monkeypatch)
    assert fixture_server.requests == []


@pytest.mark.parametrize("case", cases("webhooks.json", "signatures"))
def test_webhook_signatures(case: dict[str, Any]) -> None:
    body = case["body"].encode()
    header = webhooks.signature_header(body, case["secret"], case["timestamp"])
    assert header == case["header"]
    assert header.endswith(f"v1={webhooks.sign(body, case['secret'], case['timestamp'])}")


@pytest.mark.parametrize("case", cases("webhooks.json", "verify_cases"))
def test_webhook_verification(case: dict[str, Any]) -> None:
    options = {"tolerance": case["tolerance"]} if "tolerance" in case else {}
    try:
        event = webhooks.verify(
            case["body"].encode(), case["header"], case["secret"], now=case["now"], **options
        )
    except Exception as exc:
        assert_error(exc, case["error"])
    else:
        assert "error" not in case, f"expected {case['error']['type']}, got {event!r}"
        assert event == case["result"]


@pytest.mark.parametrize("case", cases("readiness.json"))
def test_readiness(
    case: dict[str, Any], fixture_server: FixtureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, events = play("readiness.json", case, fixture_server, monkeypatch)
    assert [event.model_dump() for event in events] == case["events"]


@pytest.mark.parametrize("route", ["data", "control"])
@pytest.mark.parametrize("case", cases("errors.json"))
def test_error_answers(
    case: dict[str, Any], route: str, fixture_server: FixtureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    if route == "data":
        call = {"op": "generate_text", "workload": "w", "args": {"prompt": "Hola"}}
        request = {"method": "POST", "path": "/endpoint/acme/w/v1/chat/completions"}
        request["body"] = {
            "model": "w",
            "messages": [{"role": "user", "content": "Hola"}],
            "stream": False,
        }
        client = {"base_url": "$BASE_URL", "project": "acme", "api_key": LIVE_KEY}
    else:
        call = {"op": "delete", "slug": "w"}
        request = {"method": "GET", "path": "/api/projects/acme/workloads"}
        client = {"base_url": "$BASE_URL", "project": "acme", "sdk_token": SDK_TOKEN}
    played = {
        "call": call,
        "client": client,
        "exchanges": [{"request": request, "response": case["response"]}],
        "error": case["error"],
    }
    play("errors.json", played, fixture_server, monkeypatch)


@pytest.mark.parametrize("case", cases("sse.json"))
def test_sse_decoding(case: dict[str, Any]) -> None:
    decoder = SseDecoder()
    events = [data for chunk in case["chunks"] for data in decoder.feed(chunk)]
    assert events + decoder.flush() == case["events"]
