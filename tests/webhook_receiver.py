"""Webhook test helpers: a real receiver (an HTTP server on 127.0.0.1 that records every POST
and answers from a script), a signature check that does not trust the Manager's own code, and a
terminal delivery made in SQL for the tests that only need one to exist."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
from inferencekey import webhooks

from tests.support import wait_until


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float


@dataclass(frozen=True)
class Answer:
    status: int = 200
    delay_s: float = 0.0


class Receiver:
    """Answers each POST with the next scripted ``Answer``, then with ``default``."""

    def __init__(self, *script: Answer | int, default: Answer | int = 200) -> None:
        self.script = [a if isinstance(a, Answer) else Answer(a) for a in script]
        self.default = default if isinstance(default, Answer) else Answer(default)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver.received.append(Received(self.path, headers, body, time.time()))
                    answer = receiver.script.pop(0) if receiver.script else receiver.default
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                self.send_response(answer.status)
                if 300 <= answer.status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a sender gone mid-answer (a Manager killed on purpose)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        wait_until(
            lambda: len(self.received) >= count,
            timeout,
            f"the receiver got {len(self.received)} of {count} deliveries",
            interval=0.05,
        )
        return list(self.received)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiving(*script: Answer | int, default: Answer | int = 200) -> Iterator[Receiver]:
    with Receiver(*script, default=default) as receiver:
        yield receiver


def verified(received: Received, secret: str) -> dict[str, Any]:
    """The event, once the signature is checked twice: by the SDK's ``verify``, and by hand
    (HMAC-SHA256 of ``"{t}.{body}"``, the contract's words), so neither can hide a bug."""
    header = received.headers["x-inferencekey-signature"]
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(
        secret.encode(), f"{fields['t']}.".encode() + received.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected), "the signature does not match"
    assert abs(time.time() - int(fields["t"])) < 60
    return webhooks.verify(received.body, header, secret)


async def terminal_delivery(
    database_url: str, project_id: str, workload_id: str, destination_id: str
) -> tuple[str, str]:
    """A finished job, and its delivery to ``destination_id`` after its last attempt failed."""
    job_id, delivery_id = str(uuid.uuid4()), f"whdl_{secrets.token_hex(8)}"
    attempt = {"attempt": 6, "at": "2026-11-27T10:00:00Z", "status_code": 500}
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "INSERT INTO jobs (id, project_id, workload_id, key_id, kind, route, body, "
            "content_type, context, status, attempts, result, result_content_type, started_at, "
            "finished_at) VALUES ($1, $2, $3, 'deadbeef', 'chat', 'v1/chat/completions', "
            "'{}', 'application/json', '{\"ticket\": 7}', 'succeeded', 1, '{\"ok\": true}', "
            "'application/json', now(), now())",
            job_id,
            project_id,
            workload_id,
        )
        await connection.execute(
            "INSERT INTO webhook_deliveries (id, job_id, destination_id, workload_id, project_id, "
            "event, status, attempts, last_status_code, last_error, attempt_log) VALUES "
            "($1, $2, $3, $4, $5, 'job.completed', 'terminal', 6, 500, 'answered HTTP 500', $6)",
            delivery_id,
            job_id,
            destination_id,
            workload_id,
            project_id,
            json.dumps([{**attempt, "error": "answered HTTP 500", "duration_ms": 3.5}]),
        )
    finally:
        await connection.close()
    return job_id, delivery_id
