"""No unauthenticated client can hold the Manager: slow or huge heads, slow bodies, too many
connections, floods of bad credentials, and an exhausted database each get a typed answer
quickly, and the Manager keeps answering everyone else. Bounded: every test ends in seconds."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from ik_contracts.http_server import ServerLimits
from manager.settings import Settings
from tests.support import (
    RunningManager,
    bearer,
    create_project,
    create_sdk_token,
    free_port,
    new_admin_token,
    start_manager,
)

LIMITS = ServerLimits(
    max_header_bytes=4096,
    max_headers=20,
    header_timeout_s=1.0,
    body_timeout_s=1.0,
    keepalive_timeout_s=1.0,
    max_connections=30,
)


def _settings(database_url: str, data_dir: Path, **extra: object) -> Settings:
    return Settings(
        port=free_port(),
        database_url=database_url,
        data_dir=data_dir,
        admin_token=new_admin_token(),
        run_migrations=False,  # the session's Manager migrated this database
        run_reconciler=False,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def limited(
    manager: RunningManager, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningManager]:
    settings = _settings(
        database_url,
        tmp_path_factory.mktemp("limited"),
        server_limits=LIMITS,
        auth_failures_per_window=5,
        auth_failure_window_s=30.0,
    )
    running = start_manager(settings)
    yield running
    running.stop()


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Reads until the server closes; the status, headers and body."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def _timed_answer(connection: socket.socket) -> tuple[int, str, float]:
    started = time.monotonic()
    status, _, body = _answer(connection)
    return status, json.loads(body)["code"], time.monotonic() - started


def test_a_client_that_never_finishes_its_headers_gets_408_in_time(
    limited: RunningManager,
) -> None:
    with _connect(limited.url) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
        status, code, waited = _timed_answer(connection)
    assert (status, code) == (408, "request_timeout")
    assert waited < 4


def test_a_connection_that_says_nothing_is_closed_after_the_header_timeout(
    limited: RunningManager,
) -> None:
    with _connect(limited.url) as connection:
        status, code, waited = _timed_answer(connection)
    assert (status, code) == (408, "request_timeout")
    assert waited < 4


def test_a_body_that_stops_arriving_gets_408(limited: RunningManager) -> None:
    with _connect(limited.url) as connection:
        connection.sendall(
            b"POST /api/admin/projects HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + (limited.admin_token or "").encode() + b"\r\n"
            b'content-length: 100\r\n\r\n{"slug":'
        )
        status, code, waited = _timed_answer(connection)
    assert (status, code) == (408, "request_timeout")
    assert waited < 4


def test_an_oversized_header_is_431_before_it_is_even_finished(limited: RunningManager) -> None:
    with _connect(limited.url) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 64 * 1024)
        status, code, waited = _timed_answer(connection)
    assert (status, code) == (431, "header_too_large")
    assert waited < 1


def test_too_many_headers_is_431(limited: RunningManager) -> None:
    headers = b"".join(b"x-h%d: 1\r\n" % i for i in range(25))
    with _connect(limited.url) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
        status, code, _ = _timed_answer(connection)
    assert (status, code) == (431, "too_many_headers")


def test_past_the_connection_cap_a_new_connection_gets_503_and_the_server_recovers(
    limited: RunningManager,
) -> None:
    held = [_connect(limited.url) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.2)
        with _connect(limited.url) as extra:
            status, headers, body = _answer(extra)
        assert status == 503
        assert headers["retry-after"] == "1"
        assert json.loads(body)["code"] == "too_many_connections"
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.2)
    assert httpx.get(f"{limited.url}/healthz").status_code == 200


def test_an_oversized_body_gets_its_413_read_not_a_connection_reset(
    limited: RunningManager,
) -> None:
    response = httpx.post(
        f"{limited.url}/api/admin/projects",
        content=b"x" * (3 * 1024 * 1024),
        headers={**bearer(limited.admin_token or ""), "content-type": "application/json"},
        timeout=10,
    )
    assert (response.status_code, response.json()["code"]) == (413, "body_too_large")


def test_a_flood_of_bad_keys_from_one_address_is_answered_429_without_lookups(
    limited: RunningManager,
) -> None:
    flooder = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"))
    bystander = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.4"))
    fake = "ik_live_0badc0de_" + "0" * 64
    with flooder, bystander:
        statuses = [
            flooder.get(f"{limited.url}/endpoint/p/w/v1/models", headers=bearer(fake)).status_code
            for _ in range(5)
        ]
        limited_answer = flooder.get(f"{limited.url}/api/workers", headers=bearer(fake))
        bystander_answer = bystander.get(f"{limited.url}/api/workers", headers=bearer(fake))
    assert statuses == [401] * 5
    assert limited_answer.status_code == 429
    assert limited_answer.json()["code"] == "too_many_failed_authentications"
    assert 1 <= int(limited_answer.headers["retry-after"]) <= 30
    assert bystander_answer.status_code == 401


def test_an_exhausted_database_pool_is_503_with_retry_after(
    manager: RunningManager,
    admin: httpx.Client,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    project = create_project(admin)["slug"]
    token = create_sdk_token(admin, project)
    settings = _settings(
        database_url,
        tmp_path_factory.mktemp("one-connection"),
        db_pool_size=1,
        db_max_overflow=0,
        db_pool_timeout_s=0.5,
    )
    small = start_manager(settings)

    async def scenario() -> tuple[int, dict[str, str], dict[str, object]]:
        # Our own connection locks a table; a Manager request reading it holds the Manager's
        # only pooled connection while it waits, and the next request finds the pool empty.
        locker = await asyncpg.connect(database_url)
        try:
            await locker.execute("BEGIN; LOCK TABLE workers IN ACCESS EXCLUSIVE MODE")
            async with httpx.AsyncClient(base_url=small.url, headers=bearer(token)) as client:
                blocked = asyncio.ensure_future(client.get("/api/workers", timeout=30))
                await asyncio.sleep(0.5)
                second = await client.get(f"/api/projects/{project}/workloads", timeout=30)
                await locker.execute("ROLLBACK")
                # Whichever of the blocked request and the Manager's own background reads held
                # the one connection, once the lock is gone the Manager answers again.
                await blocked
                after = await client.get(f"/api/projects/{project}/workloads", timeout=30)
                assert after.status_code == 200, after.text
                return second.status_code, dict(second.headers), second.json()
        finally:
            await locker.close()

    try:
        status, headers, body = asyncio.run(scenario())
    finally:
        small.stop()
    assert (status, body["code"]) == (503, "database_unavailable")
    assert headers["retry-after"] == "2"


def test_a_connection_idle_as_long_as_a_client_keeps_one_is_still_served(
    manager: RunningManager,
) -> None:
    """The server keeps an idle connection open longer than httpx (the agent's and the SDK's
    client) keeps it: the client is always the one to close it, so a request is never sent down
    a connection the server is closing at that moment (a POST lost with no answer)."""
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    assert manager.settings.server_limits.keepalive_timeout_s >= 2 * client_expiry
    host, port = manager.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        for wait_s in (0.0, client_expiry + 0.5):  # idle a moment past the client's expiry
            time.sleep(wait_s)
            connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = connection.recv(65536)
                assert chunk, f"the server closed the connection after {wait_s} s idle"
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:  # all of it, so the next answer starts afresh
                chunk = connection.recv(65536)
                assert chunk
                body += chunk
