"""Helpers the tests share: a fresh database, a live Manager, and admin-API shortcuts."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import re
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from ik_contracts.http_server import uvicorn_options
from manager.accept_queue import listening_sockets
from manager.app import create_app
from manager.settings import Settings
from manager.stopping import where
from worker_agent.config import DEFAULT_PORT_RANGE

# Where tests may create and drop databases (CI: Postgres at 127.0.0.1:5432, trust auth).
SERVER_URL = os.environ.get(
    "INFERENCEKEY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    """A free loopback port outside the agent's default engine range."""
    low, high = DEFAULT_PORT_RANGE
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if not low <= port <= high:
            return port


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def create_database() -> str:
    """A new, empty database on the test server; returns its URL."""
    name = f"ik_test_{os.getpid()}_{secrets.token_hex(3)}"

    async def run() -> None:
        connection = await asyncpg.connect(SERVER_URL)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(run())
    return _with_database(SERVER_URL, name)


def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")

    async def run() -> None:
        connection = await asyncpg.connect(SERVER_URL)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(run())


def run_sql(database_url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on a database straight, as no API request could (its rows, if any)."""

    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(database_url)
        try:
            return list(await connection.fetch(statement, *args))
        finally:
            await connection.close()

    return asyncio.run(run())


def new_admin_token() -> str:
    return f"ik_admin_{secrets.token_hex(4)}_{secrets.token_hex(32)}"


@dataclass
class RunningManager:
    url: str
    admin_token: str | None
    database_url: str
    server: ManagerServer
    thread: threading.Thread
    settings: Settings

    def stop(self) -> None:
        # What this Manager's own bounded stopping (manager/stopping.py) says, in its thread.
        held_up = _HeldUp(self.thread.ident)
        logging.getLogger("inferencekey.manager").addHandler(held_up)
        try:
            self.server.should_exit = True
            self.thread.join(timeout=15)
            if self.thread.is_alive():
                # Still draining connections or tasks after 15 s: stop without waiting for them
                # (uvicorn's second Ctrl-C), so that no Manager outlives the test that started
                # it; the warning says where each of its tasks was.
                warnings.warn(
                    f"the Manager at {self.url} took over 15 s to stop; forcing it. Its tasks:\n"
                    + self.server.tasks_text(),
                    stacklevel=2,
                )
                self.server.force_exit = True
                self.thread.join(timeout=15)
        finally:
            logging.getLogger("inferencekey.manager").removeHandler(held_up)
        for message in held_up.messages:
            warnings.warn(f"the Manager at {self.url}: {message}", stacklevel=2)


class _HeldUp(logging.Handler):
    """The warnings a stopping Manager logs of a step it had to leave."""

    def __init__(self, thread: int | None) -> None:
        super().__init__(logging.WARNING)
        self.thread = thread
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.thread == self.thread and message.startswith("stopping"):
            self.messages.append(message)


class ManagerServer(uvicorn.Server):
    """uvicorn's server, keeping its event loop so that a Manager slow to stop can say where
    each of its tasks is."""

    loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def tasks_text(self) -> str:
        if self.loop is None or self.loop.is_closed():
            return "(its event loop has ended)"
        tasks = asyncio.all_tasks(self.loop)
        return "\n".join(f"{task.get_name()}: {where(task)}" for task in tasks) or "(none)"


def fastapi_app(manager: RunningManager) -> FastAPI:
    """The FastAPI application inside a running Manager's middleware."""
    layer: Any = manager.server.config.app
    while not isinstance(layer, FastAPI):
        layer = layer.app
    return layer


def start_manager(settings: Settings) -> RunningManager:
    """A real Manager on uvicorn, in a thread, on a free loopback port."""
    assert settings.database_url
    running: list[uvicorn.Server] = []
    config = uvicorn.Config(
        create_app(
            settings,
            stopping=lambda: any(server.should_exit for server in running),
            listening=lambda: listening_sockets(running),
        ),
        host="127.0.0.1",
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        **uvicorn_options(settings.server_limits),
    )
    server = ManagerServer(config)
    running.append(server)
    thread = threading.Thread(target=server.run, name="manager", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the Manager did not start; see the log above")
        time.sleep(0.05)
    return RunningManager(
        url=f"http://127.0.0.1:{settings.port}",
        admin_token=settings.admin_token,
        database_url=settings.database_url,
        server=server,
        thread=thread,
        settings=settings,
    )


# The suite's Managers: worker liveness short enough for the lost-worker tests to run in seconds,
# and no limit on failed authentications (the suite makes many from 127.0.0.1 on purpose; the
# limit itself is tested on a Manager of its own, tests/test_server_limits.py).
TEST_MANAGER_SETTINGS: dict[str, Any] = {
    "worker_not_ready_after_s": 3.0,
    "worker_lost_after_s": 8.0,
    "heartbeat_interval_s": 1.0,
    "reconcile_interval_s": 1.0,
    "auth_failures_per_window": 1_000_000,
    # Nor is a lost worker held while most are silent (the suite's Managers outlive many agents
    # stopped at once; the hold is tested on Managers of its own, tests/test_silent_fleet.py).
    "worker_silence_fleet": 1_000_000,
    # Webhook receivers in tests listen on 127.0.0.1 over http, and retries come in a blink.
    "webhook_allow_private": True,
    "webhook_retry_delays_s": (0.2, 0.2, 0.2, 0.2, 0.2),
    "webhook_timeout_s": 2.0,
    "webhook_lease_s": 3.0,
}


@contextlib.contextmanager
def own_manager(
    data_dir: Path, database_url: str | None = None, **settings: Any
) -> Iterator[RunningManager]:
    """A Manager with the suite's settings and ``settings`` over them, on ``database_url`` or
    on a new database of its own (dropped when it stops)."""
    url = database_url or create_database()
    running = start_manager(
        Settings(
            port=free_port(),
            database_url=url,
            data_dir=data_dir,
            admin_token=new_admin_token(),
            **{**TEST_MANAGER_SETTINGS, **settings},
        )
    )
    try:
        yield running
    finally:
        running.stop()
        if database_url is None:
            drop_database(url)


@dataclass
class TestProject:
    __test__ = False

    id: str
    slug: str
    sdk_token: str


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


def create_project(admin: httpx.Client, slug: str | None = None) -> dict[str, Any]:
    slug = slug or f"proj-{secrets.token_hex(4)}"
    return _created(admin.post("/api/admin/projects", json={"slug": slug}))


def create_sdk_token(admin: httpx.Client, project_slug: str, read_only: bool = False) -> str:
    body = {"project": project_slug, "read_only": read_only}
    return str(_created(admin.post("/api/admin/tokens", json=body))["token"])


def create_live_key(
    admin: httpx.Client, project_slug: str, workloads: list[str] | None = None
) -> str:
    body: dict[str, Any] = {"project": project_slug}
    body.update({"workloads": workloads} if workloads else {"all": True})
    return str(_created(admin.post("/api/admin/keys", json=body))["token"])


def revoke(admin: httpx.Client, token: str) -> None:
    token_id = token.split("_")[2]
    response = admin.delete(f"/api/admin/tokens/{token_id}")
    assert response.status_code == 200, response.text


def metric(text: str, name: str) -> float:
    """The sum of every sample of ``name`` in a Prometheus text exposition (0 if none)."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for _, value in pattern.findall(text))


def histogram_buckets(metrics_text: str, name: str, **labels: str) -> dict[float, float]:
    """The cumulative bucket counts (by ``le``, +Inf included) of histogram ``name``'s series
    with ``labels`` in a /metrics page; empty if it has none."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket" and all(
                sample.labels.get(key) == wanted for key, wanted in labels.items()
            ):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return buckets


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class RunningAgent:
    """A real worker agent in a thread of its own (its own event loop), talking HTTP."""

    def __init__(self, config: Any) -> None:
        from worker_agent.agent import Agent

        self.config = config
        self.agent = Agent(config)
        self.loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._run, name="agent", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._task = self.loop.create_task(self.agent.run())
        try:
            self.loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self.loop.close()

    def stop(self) -> None:
        """Stop the agent only; like a killed agent, it leaves its engines running."""
        while self._task is None:
            time.sleep(0.01)
        self.loop.call_soon_threadsafe(self._task.cancel)
        self.thread.join(timeout=45)  # stopping for good waits for its engines to stop too
        assert not self.thread.is_alive(), "agent did not stop"

    def stop_engines(self) -> None:
        """Stop every engine this agent's runtime still runs, as an agent stopping for good does
        (engines outlive their agent on purpose, and 30 leftover llama.cpp servers fill a
        machine)."""
        self.agent.stop_engines()

    def stop_for_good(self) -> None:
        """Stop the agent and its engines, as `inferencekey agent --stop-engines-on-exit` does on
        SIGTERM; or, when the agent is stopped already, the engines it left behind."""
        if self.thread.is_alive():
            self.agent.config.stop_engines_on_exit = True
            self.stop()
        else:
            self.stop_engines()


AgentFactory = Callable[..., RunningAgent]


def wait_until(check: Any, timeout: float, message: str, interval: float = 0.2) -> Any:
    """Poll ``check()`` until it returns something truthy; fail with ``message`` otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{message} (last: {last!r})")


async def wait_until_async(
    check: Callable[[], Any], timeout: float, message: str, interval: float = 0.05
) -> Any:
    """`wait_until` on the event loop: ``check()`` may return an awaitable, which is awaited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{message} (last: {last!r})")
