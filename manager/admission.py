"""Admission: how many requests of one kind this process works on at once.

A request past its kind's limit waits for a turn, holding nothing (no connection, no CPU), up
to its kind's wait; then it is answered 503 ``overloaded`` with Retry-After. Two kinds share a
process: the agent protocol (``AgentProtocol.admission``) and the control API
(``app.state.api_admission``), each with its own slots, so that a flood of one cannot take
every turn of the event loop from the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from manager.errors import Overloaded


class Admission:
    def __init__(
        self,
        limit: int,
        wait_s: float,
        retry_after_s: int,
        busy: str,
        waited: Callable[[float], None] | None = None,
    ) -> None:
        """``waited`` is told the seconds each turn was waited for (about 0 when it was free),
        shed or not: ``inferencekey_admission_wait_seconds``."""
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.busy = busy
        self._slots = asyncio.Semaphore(limit)
        self._waited = waited or _untimed

    @contextlib.asynccontextmanager
    async def slot(self, *, patient: bool = False) -> AsyncIterator[None]:
        """``patient``: the request was admitted a moment ago (its credential looked up) and
        waits for this slot without a deadline; shedding it now would waste what it did."""
        await self.take(self._slots, patient=patient, busy=self.busy)
        try:
            yield
        finally:
            self._slots.release()

    async def take(
        self,
        turn: asyncio.Lock | asyncio.Semaphore,
        *,
        patient: bool,
        busy: str,
        waited: Callable[[float], None] | None = None,
    ) -> None:
        """Acquire ``turn``: at once if it is free, else within ``wait_s`` (a patient request
        without a deadline), else 503 overloaded saying ``busy``, with Retry-After. The wait is
        told to ``waited`` (by default this admission's)."""
        told = waited or self._waited
        started = time.perf_counter()
        try:
            # A turn that reads free is timed all the same: a lock released a moment ago reads
            # free while its next waiter has yet to run, and acquire() then queues behind it.
            if patient or not turn.locked():
                await turn.acquire()
            else:
                async with asyncio.timeout(self.wait_s):
                    await turn.acquire()
        except TimeoutError:
            raise Overloaded(busy, retry_after_s=self.retry_after_s) from None
        finally:
            told(time.perf_counter() - started)


def _untimed(seconds: float) -> None:
    """Where no one times the turns."""
