"""A real agent against a Manager that sheds load: it waits as Retry-After says, its fleet comes
back spread out, and a steady heartbeat carries only what changed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.scripted_manager import ScriptedManager
from tests.support import RunningAgent, free_port, wait_until
from worker_agent.config import AgentConfig

TOKEN = "ik_agent_0000000a_" + "b" * 64
FLEET = 4


@pytest.fixture
def managers() -> Iterator[list[ScriptedManager]]:
    """One scripted Manager per agent, so each agent's requests are told apart."""
    running = [ScriptedManager(TOKEN) for _ in range(FLEET)]
    yield running
    for manager in running:
        manager.stop()


def start_agents(managers: list[ScriptedManager], tmp_path: Path) -> list[RunningAgent]:
    return [
        RunningAgent(
            AgentConfig(
                manager_url=manager.url,
                token=TOKEN,
                runtime="process",
                listen_host="127.0.0.1",
                listen_port=free_port(),
                state_dir=tmp_path / f"agent-{index}",
                model_dir=tmp_path / "models",
                simulate_gpus="1xNVIDIA L4",
            )
        )
        for index, manager in enumerate(managers)
    ]


def test_a_shed_heartbeat_is_retried_after_retry_after_with_jitter_then_only_changes_are_sent(
    managers: list[ScriptedManager], tmp_path: Path
) -> None:
    for manager in managers:
        manager.shed_heartbeats = 1  # the first heartbeat of each agent: 503, Retry-After: 2
    agents = start_agents(managers, tmp_path)
    try:
        for manager in managers:
            wait_until(lambda m=manager: len(m.heartbeats) >= 4, 20, "steady heartbeats")
    finally:
        for agent in agents:
            agent.stop()
    waits = []
    for manager in managers:
        (shed_at, first), (retried_at, retry), (_, second), (_, steady) = manager.heartbeats[:4]
        waits.append(retried_at - shed_at)
        # Nothing was acknowledged before the retry: it carries everything, as the first did.
        assert "inventory" in first and "inventory" in retry and "replicas" in retry
        # The answer's desired set is new to the agent: its replica list goes once more.
        assert "inventory" not in second and second["replicas"] == []
        assert steady.keys() == {"agent_version", "address"}, steady
    assert min(waits) >= 2.0, waits
    assert max(waits) <= 2.0 + 2.0 + 1.0, waits  # Retry-After plus at most as much jitter
    assert max(waits) - min(waits) > 0.05, f"retries came back together: {waits}"


def test_a_shed_long_poll_is_retried_after_retry_after(
    managers: list[ScriptedManager], tmp_path: Path
) -> None:
    manager = managers[0]
    manager.shed_watches = 1
    manager.retry_after = "1"
    [agent] = start_agents(managers[:1], tmp_path)
    try:
        wait_until(lambda: len(manager.watches) >= 2, 20, "a second long-poll")
    finally:
        agent.stop()
    shed_at, retried_at = manager.watches[:2]
    assert 1.0 <= retried_at - shed_at <= 1.0 + 1.0 + 1.0


def test_a_failed_heartbeat_is_retried_before_the_next_interval_would_come(
    managers: list[ScriptedManager], tmp_path: Path
) -> None:
    """Without Retry-After (a 503 from a proxy, say): full jitter from the interval, not a
    fixed wait that a fleet would share."""
    manager = managers[0]
    manager.shed_heartbeats = 2
    manager.retry_after = "soon"  # not a number: no Retry-After to honour
    [agent] = start_agents(managers[:1], tmp_path)
    started = time.monotonic()
    try:
        wait_until(lambda: len(manager.heartbeats) >= 3, 20, "a successful heartbeat")
    finally:
        agent.stop()
    # Before the first answer the interval is 2 s: waits of at most 2 s, then 4 s.
    assert manager.heartbeats[2][0] - started <= 2.0 + 4.0 + 1.0


def test_heartbeats_an_interval_apart_keep_their_connection_to_the_manager(tmp_path: Path) -> None:
    """At httpx's default idle expiry (5 s) each heartbeat of a 10 s interval opened a new
    connection, which an overloaded Manager left in its listen queue, neither served nor shed,
    until workers lapsed. The agent keeps its connection longer than an interval (and shorter
    than the Manager's keep-alive, so the agent is the one to close it: the defaults' fit is
    tests/unit/test_agent_connection_settings.py)."""
    manager = ScriptedManager(TOKEN, keep_alive=True)
    manager.heartbeat_interval_s = 6.0  # past httpx's default expiry
    [agent] = start_agents([manager], tmp_path)
    try:
        wait_until(lambda: len(manager.heartbeats) >= 3, 30, "a heartbeat an interval later")
    finally:
        agent.stop()
        manager.stop()
    # The second comes at the default interval (2 s), the third at the one the answers name.
    second, third = (arrived for arrived, _ in manager.heartbeats[1:3])
    assert third - second >= 5.5
    # One connection for the heartbeats and one for the long-polls, each kept throughout.
    assert len(manager.connections) == 2, manager.connections
