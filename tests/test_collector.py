"""The cyclic garbage collector of a running Manager: start-up frozen, the young generation
collected rarely (manager.app.settle_collector; why in GC_THRESHOLDS)."""

from __future__ import annotations

import gc
import time

import httpx

from ik_contracts.http_server import GuardedHttpProtocol
from manager.app import GC_THRESHOLDS
from tests.support import RunningManager


def test_a_started_manager_freezes_start_up_and_collects_its_young_generation_rarely(
    manager: RunningManager,
) -> None:
    assert manager.server.started
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] >= 10_000  # Python's default, 700, ran it 20 times a second
    assert gc.get_freeze_count() > 0  # start-up's objects are out of the collector's sight


def _cyclic_garbage() -> list[object]:
    """What only the cyclic collector could free, right now (collected, kept to look at)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


def test_a_closed_connection_leaves_no_cycle_for_the_collector(manager: RunningManager) -> None:
    """Each connection's protocol, transports and request are freed by their reference counts
    when it closes: an agent connects anew for most heartbeats (its idle connection expires
    first), and those cycles were most of what the full collections found."""
    gc.collect()
    served = manager.server.server_state
    earlier = set(served.connections)  # other tests' clients may keep theirs open
    calls = [
        ("GET", "/healthz"),  # answered by the app
        ("GET", "/api/workloads/wl_x"),  # by a route's border (401)
        ("POST", "/api/agent/heartbeat"),  # declined by the agents' fast path, then 401
        ("GET", "/endpoint/p/w/v1/models"),  # by the gateway (401)
    ]
    for method, path in calls:
        for _ in range(10):
            with httpx.Client(base_url=manager.url, trust_env=False) as client:
                assert client.request(method, path).status_code in (200, 401)
    deadline = time.monotonic() + 10
    while (served.connections - earlier) and time.monotonic() < deadline:  # each close heard
        time.sleep(0.02)
    assert not served.connections - earlier
    left = [each for each in _cyclic_garbage() if isinstance(each, GuardedHttpProtocol)]
    assert left == []
