"""What the gateway's meters share: counting in memory, written to Postgres every `FLUSH_S`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("inferencekey.gateway")

FLUSH_S = 2.0


class PeriodicFlush:
    """A meter whose ``flush`` runs every `FLUSH_S` from ``start`` until ``stop``; a failed
    flush is logged (with ``failure``) and the next one runs on time."""

    task_name = "gateway-meter"
    failure = "writing the gateway's figures failed"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def flush(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name=self.task_name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception:
                log.exception(self.failure)
