"""Postgres LISTEN/NOTIFY, so every Manager process hears of changes within milliseconds.

Senders call ``notify()`` inside their transaction (delivered on commit). Each process keeps one
listening connection; waiters register before they read state, so no change slips between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger("inferencekey.manager")

RECONCILE = "ik_reconcile"  # payload: a workload or worker id; wakes the reconciler
ASSIGNMENTS = "ik_assignments"  # payload: a worker id whose desired replica set changed
WORKLOAD_STATUS = "ik_workload_status"  # payload: a workload id whose phase changed
TOKENS = "ik_tokens"  # payload: a credential id that was revoked
JOBS = "ik_jobs"  # payload: a workload id with a new job; wakes the job dispatchers
WEBHOOKS = "ik_webhooks"  # payload: a workload id with deliveries due now; wakes the deliverers
WORKERS = "ik_workers"  # payload: a worker id whose liveness state the reconciler changed
CHANNELS = (RECONCILE, ASSIGNMENTS, WORKLOAD_STATUS, TOKENS, JOBS, WEBHOOKS, WORKERS)
ANY = "*"
# The listening connection is asked a query this often, and closed when it does not answer in
# time (NotificationHub._probe): the caches it keeps current trust it for minutes.
PROBE_EVERY_S = 15.0
PROBE_TIMEOUT_S = 5.0


async def notify(session: AsyncSession, channel: str, payload: str) -> None:
    await session.execute(
        text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
    )


async def notify_many(session: AsyncSession, channels: tuple[str, ...], payload: str) -> None:
    """The same payload on each channel, in one statement."""
    calls = ", ".join(f"pg_notify(:channel_{i}, :payload)" for i in range(len(channels)))
    values = {f"channel_{i}": channel for i, channel in enumerate(channels)}
    await session.execute(text(f"SELECT {calls}"), {**values, "payload": payload})


async def notify_each(session: AsyncSession, notices: list[tuple[str, str]]) -> None:
    """Each (channel, payload) in one statement, in this order."""
    if notices:
        await session.execute(
            text(
                "SELECT pg_notify(c, p) FROM "
                "unnest(CAST(:c AS text[]), CAST(:p AS text[])) AS t(c, p)"
            ),
            {"c": [c for c, _ in notices], "p": [p for _, p in notices]},
        )


def plain_postgres_url(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


class NotificationHub:
    """Fans notifications out to waiting coroutines of this process."""

    def __init__(self, database_url: str) -> None:
        self._url = plain_postgres_url(database_url)
        self._connection: asyncpg.Connection | None = None
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = defaultdict(set)
        self._callbacks: dict[str, list[Callable[[str], None]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._watch(), name="notification-hub")

    async def stop(self) -> None:
        self._closing = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.close()

    async def _connect(self) -> None:
        self._connection = await asyncpg.connect(self._url)
        for channel in CHANNELS:
            await self._connection.add_listener(channel, self._on_notification)

    async def _watch(self) -> None:
        # Reconnect if the listening connection drops; wake everyone so nothing waits on a gap.
        probed_at = time.monotonic()
        while not self._closing:
            await asyncio.sleep(1.0)
            if time.monotonic() - probed_at >= PROBE_EVERY_S:
                probed_at = time.monotonic()
                await self._probe()
            if self._connection is None or self._connection.is_closed():
                log.warning("notification connection lost; reconnecting")
                with contextlib.suppress(OSError, asyncpg.PostgresError):
                    await self._connect()
                for events in list(self._waiters.values()):
                    for event in events:
                        event.set()
                for callbacks in list(self._callbacks.values()):
                    for callback in callbacks:
                        callback(ANY)

    async def _probe(self) -> None:
        """A connection that died without a word (a peer or path gone silent) would never be
        seen closed, and every cache it keeps current would go stale: one that does not answer
        a query within ``PROBE_TIMEOUT_S`` is closed here, and reconnected as a lost one."""
        connection = self._connection
        if connection is None or connection.is_closed():
            return
        try:
            await connection.fetchval("SELECT 1", timeout=PROBE_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("notification connection did not answer (%s); reconnecting", error)
            connection.terminate()

    def on(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` on every notification of ``channel``, and with ``ANY``
        after a reconnect (anything may have been missed)."""
        self._callbacks[channel].append(callback)

    def _on_notification(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        for callback in self._callbacks.get(channel, ()):
            callback(payload)
        for key in ((channel, payload), (channel, ANY)):
            for event in self._waiters.get(key, ()):
                event.set()

    def wake_all(self) -> None:
        """Set every waiter's event (the Manager is stopping: long-polls answer now)."""
        for events in list(self._waiters.values()):
            for event in events:
                event.set()

    @contextlib.contextmanager
    def subscription(self, channel: str, key: str = ANY) -> Iterator[asyncio.Event]:
        """An event set on the next notification for (channel, key); register before reading."""
        event = asyncio.Event()
        self._waiters[(channel, key)].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get((channel, key))
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[(channel, key)]


async def wait_for(event: asyncio.Event, timeout: float) -> bool:
    """True if the event fired within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
