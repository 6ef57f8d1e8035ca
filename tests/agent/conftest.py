"""Fixtures for the agent's tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from ik_contracts.upstream import UpstreamClient
from tests.agent.sample_packages import wheel
from tests.agent.scripted_http import Script, ScriptedServer, Serve

DATA_PLANE_TESTS = {"test_upstream.py", "test_relay_and_proxy.py"}


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start scripted servers; they are stopped when the test ends."""
    servers: list[ScriptedServer] = []

    async def start(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
def client() -> Iterator[UpstreamClient]:
    """The pooled client the gateway and the agent proxy use; its connections closed after."""
    upstream_client = UpstreamClient()
    yield upstream_client
    upstream_client.close()


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The data plane runs on uvloop where installed (the agent, uvicorn): test it on both loops."""
    if item.path.name in DATA_PLANE_TESTS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """uv installs requirements from this directory of wheels only, never the network (the
    agent hands uv its UV_* settings): ``ik-sample-extra==1.0`` is there."""
    index = tmp_path / "wheels"
    index.mkdir()
    wheel(index, "ik-sample-extra", "1.0", 'def describe():\n    return "extra module 1.0"\n')
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setenv("UV_FIND_LINKS", str(index))
    return index
