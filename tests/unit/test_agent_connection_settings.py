"""The Manager's settings against the agents' kept connection (ik_contracts.protocol
AGENT_KEEPALIVE_S): the defaults fit it, and a setting that breaks it is named at start."""

from __future__ import annotations

from dataclasses import replace

from ik_contracts.http_server import ServerLimits
from ik_contracts.protocol import AGENT_KEEPALIVE_S
from manager.settings import Settings, agent_connection_warnings


def test_the_defaults_keep_the_agents_connection() -> None:
    defaults = Settings()
    assert defaults.heartbeat_interval_s < AGENT_KEEPALIVE_S
    assert defaults.server_limits.keepalive_timeout_s > AGENT_KEEPALIVE_S
    assert agent_connection_warnings(defaults) == []


def test_an_interval_past_the_agents_keep_alive_is_named() -> None:
    [warning] = agent_connection_warnings(Settings(heartbeat_interval_s=AGENT_KEEPALIVE_S))
    assert warning.startswith("INFERENCEKEY_HEARTBEAT_INTERVAL_S is 12 s:")
    assert "each heartbeat will open a new one" in warning
    assert "keep it under 12 s" in warning


def test_a_keep_alive_not_above_the_agents_is_named() -> None:
    limits = replace(ServerLimits(), keepalive_timeout_s=AGENT_KEEPALIVE_S)
    [warning] = agent_connection_warnings(Settings(server_limits=limits))
    assert warning.startswith("INFERENCEKEY_HTTP_KEEPALIVE_TIMEOUT_S is 12 s:")
    assert "keep it over 12 s, and so a load balancer's idle timeout" in warning
    both = Settings(heartbeat_interval_s=30.0, server_limits=limits)
    assert len(agent_connection_warnings(both)) == 2
