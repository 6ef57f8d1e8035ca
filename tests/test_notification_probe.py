"""A listening connection that goes silent (its peer or the path between them gone without a
word) is found by the hub's probe, replaced, and everyone told to read afresh: the credential
and assignment caches trust it for minutes (manager/notify.py, NotificationHub._probe)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import asyncpg
import pytest

from manager import notify
from manager.notify import NotificationHub, plain_postgres_url
from tests.support import wait_until_async

LISTENING = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%'
"""


async def test_a_silent_listening_connection_is_replaced_and_the_caches_told(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "PROBE_EVERY_S", 0.5)
    monkeypatch.setattr(notify, "PROBE_TIMEOUT_S", 0.5)
    hub = NotificationHub(database)
    heard: list[str] = []
    hub.on(notify.ASSIGNMENTS, heard.append)
    await hub.start()
    other = await asyncpg.connect(plain_postgres_url(database))
    try:
        pids = [row["pid"] for row in await other.fetch(LISTENING)]
        assert len(pids) == 1, pids
        backend = pids[0]
        if not Path(f"/proc/{backend}").exists():
            pytest.skip("Postgres runs out of this machine's sight: its backend cannot be paused")
        # Silent, not closed: the backend neither answers nor hangs up.
        try:
            os.kill(backend, signal.SIGSTOP)
        except PermissionError:
            pytest.skip("this user may not pause Postgres's backends")
        try:
            await wait_until_async(
                lambda: notify.ANY in heard, 10, "the hub saw the silence and reconnected"
            )
        finally:
            os.kill(backend, signal.SIGCONT)
        # Heard again, on the new connection.
        await other.execute("SELECT pg_notify($1, 'wrk_after')", notify.ASSIGNMENTS)
        await wait_until_async(
            lambda: "wrk_after" in heard, 10, "a notification on the new connection"
        )
    finally:
        await other.close()
        await hub.stop()
