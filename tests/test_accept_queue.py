"""A Manager says how many connections wait for it in the kernel
(``inferencekey_accept_queue_connections``, manager/accept_queue.py): requests there are
neither served nor shed, and none of its histograms sees them.

The Manager's event loop is held (as a loop overloaded holds it) while clients connect: the
kernel queues their connections on its listening socket, and the figure counts them; once the
loop runs again it takes them, and the gauge the Manager publishes comes back to 0 against the
socket's limit.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from manager.accept_queue import accept_queue, listening_sockets
from tests.support import bearer, metric, own_manager, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO is Linux's")

UVICORN_BACKLOG = 2048  # uvicorn's default, which the Manager keeps


def test_connections_waiting_for_a_held_manager_are_counted(tmp_path: Path) -> None:
    limit = min(UVICORN_BACKLOG, int(Path("/proc/sys/net/core/somaxconn").read_text()))
    with own_manager(tmp_path) as running, ExitStack() as stack:
        assert running.settings.admin_token
        admin = stack.enter_context(
            httpx.Client(base_url=running.url, headers=bearer(running.settings.admin_token))
        )
        # (Its connection is taken before the hold.) The first figure comes once it serves.
        wait_until(
            lambda: metric(admin.get("/metrics").text, "inferencekey_accept_queue_limit") == limit,
            10,
            f"the limit published as {limit}",
        )
        sockets = listening_sockets([running.server])
        assert sockets, "the Manager listens on no socket"

        holding, release = threading.Event(), threading.Event()

        async def hold() -> None:
            holding.set()
            release.wait(10)  # the loop held: nothing is accepted meanwhile

        loop = running.server.loop
        assert loop is not None
        held = asyncio.run_coroutine_threadsafe(hold(), loop)
        try:
            assert holding.wait(10)
            port = int(running.url.rsplit(":", 1)[1])
            for _ in range(5):
                stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            assert accept_queue(sockets) == (5, limit)
        finally:
            release.set()
        held.result(timeout=10)
        wait_until(lambda: accept_queue(sockets) == (0, limit), 10, "the queue taken")

        def back_to_0() -> bool:
            text = admin.get("/metrics").text  # the gauge is there, and reads 0
            return "\ninferencekey_accept_queue_connections " in text and (
                metric(text, "inferencekey_accept_queue_connections") == 0
            )

        wait_until(back_to_0, 10, "the gauge back to 0")
