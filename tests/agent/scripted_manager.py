"""A stand-in for the Manager's agent routes, on real HTTP on 127.0.0.1, that a test scripts.

It answers heartbeats and the assignments long-poll with the replicas the test sets, serves
custom-backend packages by version id, and keeps what the agent reported, so a test can run a
real agent without a database. It can shed requests as an overloaded Manager does (503 with
Retry-After), and it records when each heartbeat and long-poll arrived, and from which
connection (with ``keep_alive``, HTTP/1.1 connections stay open between requests, as the
Manager's do).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

PACKAGE_PATH = re.compile(r"/api/agent/custom-backends/([^/]+)/package\Z")


class ScriptedManager:
    def __init__(
        self,
        token: str,
        gateway_secret: str = "gateway-secret-0123456789",
        *,
        keep_alive: bool = False,
    ) -> None:
        self.token = token
        self.keep_alive = keep_alive
        self.heartbeat_interval_s = 0.2  # what the answers name
        self.connections: set[int] = set()  # the client ports requests came from
        self.gateway_secret = gateway_secret
        self.worker_id = "wrk_scripted"
        self.packages: dict[str, bytes] = {}
        self.downloads: dict[str, int] = {}
        self.reported: dict[str, dict[str, Any]] = {}  # replica id -> its last observed state
        self.history: list[tuple[str, str, str | None]] = []  # (replica id, state, reason)
        self.heartbeats: list[tuple[float, dict[str, Any]]] = []  # (monotonic arrival, body)
        self.watches: list[float] = []  # monotonic arrival of each long-poll
        # The next this many heartbeats / long-polls are answered 503 with this Retry-After.
        self.shed_heartbeats = 0
        self.shed_watches = 0
        self.retry_after = "2"
        self._replicas: list[dict[str, Any]] = []
        self._version = 0
        self._lock = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_package(self, version_id: str, path: Path) -> None:
        self.packages[version_id] = path.read_bytes()

    def assign(self, *replicas: dict[str, Any]) -> None:
        """The full desired set from now on (a new version: watching agents hear at once)."""
        with self._lock:
            self._replicas = list(replicas)
            self._version += 1
            self._lock.notify_all()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _assignments(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "version": str(self._version),
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "replicas": self._replicas,
            "gateway_secret": self.gateway_secret,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        manager = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if manager.keep_alive else "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def parse_request(self) -> bool:
                with manager._lock:
                    manager.connections.add(self.client_address[1])
                return super().parse_request()

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                with contextlib.suppress(ConnectionError):  # an agent stopping mid-long-poll
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def _json(self, status: int, value: Any) -> None:
                headers = {"content-type": "application/json"}
                self._answer(status, json.dumps(value).encode(), headers)

            def _shed(self) -> None:
                body = {
                    "error": "this Manager has more agent requests than it can serve now",
                    "code": "overloaded",
                    "message": "this Manager has more agent requests than it can serve now",
                }
                headers = {"content-type": "application/json", "retry-after": manager.retry_after}
                self._answer(503, json.dumps(body).encode(), headers)

            def _authorised(self) -> bool:
                if self.headers.get("authorization") == f"Bearer {manager.token}":
                    return True
                self._json(401, {"error": "unknown credential", "code": "invalid_credentials"})
                return False

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if not self._authorised():
                    return
                if urlsplit(self.path).path != "/api/agent/heartbeat":
                    self._json(404, {"error": "not found"})
                    return
                with manager._lock:
                    manager.heartbeats.append((time.monotonic(), json.loads(body)))
                    shed = manager.shed_heartbeats > 0
                    manager.shed_heartbeats -= shed
                if shed:
                    self._shed()
                    return
                with manager._lock:
                    for replica in json.loads(body).get("replicas", []):
                        manager.reported[replica["id"]] = replica
                        seen = (replica["id"], replica["state"], replica.get("reason"))
                        if seen not in manager.history[-1:]:
                            manager.history.append(seen)
                    answer = manager._assignments()
                self._json(200, answer)

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                parts = urlsplit(self.path)
                package = PACKAGE_PATH.match(parts.path)
                if package is not None:
                    data = manager.packages.get(package[1])
                    if data is None:
                        self._json(404, {"error": "no such package", "code": "not_found"})
                        return
                    with manager._lock:
                        manager.downloads[package[1]] = manager.downloads.get(package[1], 0) + 1
                    digest = hashlib.sha256(data).hexdigest()
                    headers = {"content-type": "application/gzip", "x-inferencekey-sha256": digest}
                    self._answer(200, data, headers)
                    return
                if parts.path == "/api/agent/assignments":
                    with manager._lock:
                        manager.watches.append(time.monotonic())
                        shed = manager.shed_watches > 0
                        manager.shed_watches -= shed
                    if shed:
                        self._shed()
                        return
                    seen = parse_qs(parts.query).get("version", [""])[0]
                    deadline = time.monotonic() + 1.0  # short long-polls: quick to stop
                    with manager._lock:
                        while str(manager._version) == seen and time.monotonic() < deadline:
                            manager._lock.wait(deadline - time.monotonic())
                        answer = manager._assignments()
                    self._json(200, answer)
                    return
                self._json(404, {"error": "not found"})

        return Handler
