"""Admission: how many requests of one kind this process works on at once.

A request past its kind's limit waits for a turn, holding nothing (no connection, no CPU), up
to its kind's wait; then it is answered 503 ``overloaded`` with Retry-After. Two kinds share a
process: the agent protocol (``AgentProtocol.admission``) and the control API
(``app.state.api_admission``), each with its own slots, so that a flood of one cannot take
every turn of the event loop from the other.

Shedding is logged by each process, at the first shed of a kind and then once a minute at most,
with how many of that kind were shed in it: an operator whose agents see 503s finds why in the
Manager's log, not only in its metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from manager.errors import Overloaded

log = logging.getLogger("inferencekey.admission")

SHED_LOGGED_EVERY_S = 60.0
# What a shedding process can be given more of (README: "The control plane under a fleet").
MORE_ROOM = (
    "this Manager process is at its limit; to give it more room, see the README's "
    '"The control plane under a fleet" (INFERENCEKEY_RECONCILER_PROCESS, '
    "INFERENCEKEY_PROCESSES, more Managers on one database)"
)


class Admission:
    def __init__(
        self,
        limit: int,
        wait_s: float,
        retry_after_s: int,
        busy: str,
        waited: Callable[[float], None] | None = None,
        *,
        kind: str,
        held: Callable[[float], None] | None = None,
        logged_every_s: float = SHED_LOGGED_EVERY_S,
    ) -> None:
        """``waited`` is told the seconds each turn was waited for (about 0 when it was free),
        shed or not: ``inferencekey_admission_wait_seconds``; ``held``, the seconds each slot
        was held, from its turn to its release: ``inferencekey_admission_hold_seconds``. ``kind``
        names the requests in the log line that says they were shed (at most one of a kind each
        ``logged_every_s``)."""
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.busy = busy
        self.kind = kind
        self._slots = asyncio.Semaphore(limit)
        self._waited = waited or _untimed
        self._held = held or _untimed
        self._logged_every_s = logged_every_s
        self._shed: dict[str, int] = {}  # by kind: shed since its last line
        self._logged_at: dict[str, float] = {}  # by kind: when its last line was written
        self._due: dict[str, asyncio.TimerHandle] = {}  # kinds whose next line a timer writes

    @contextlib.asynccontextmanager
    async def slot(self, *, patient: bool = False) -> AsyncIterator[None]:
        """``patient``: the request was admitted a moment ago (its credential looked up) and
        waits for this slot without a deadline; shedding it now would waste what it did."""
        await self.take(self._slots, patient=patient, busy=self.busy)
        taken = time.perf_counter()
        try:
            yield
        finally:
            self._slots.release()
            self._held(time.perf_counter() - taken)

    async def take(
        self,
        turn: asyncio.Lock | asyncio.Semaphore,
        *,
        patient: bool,
        busy: str,
        waited: Callable[[float], None] | None = None,
        kind: str | None = None,
    ) -> None:
        """Acquire ``turn``: at once if it is free, else within ``wait_s`` (a patient request
        without a deadline), else 503 overloaded saying ``busy``, with Retry-After. The wait is
        told to ``waited`` (by default this admission's); a shed is logged as of ``kind`` (by
        default this admission's)."""
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
            self._shed_one(kind or self.kind)
            raise Overloaded(busy, retry_after_s=self.retry_after_s) from None
        finally:
            told(time.perf_counter() - started)

    def _shed_one(self, kind: str) -> None:
        """Count a shed: logged at once if no line of its kind was written in the last
        ``logged_every_s``, else with the others of that time, when it ends."""
        self._shed[kind] = self._shed.get(kind, 0) + 1
        logged_at = self._logged_at.get(kind)
        if logged_at is None or time.monotonic() - logged_at >= self._logged_every_s:
            self._log_shed(kind)
        elif kind not in self._due:
            due = logged_at + self._logged_every_s - time.monotonic()
            self._due[kind] = asyncio.get_running_loop().call_later(due, self._log_shed, kind)

    def _log_shed(self, kind: str) -> None:
        """Write the line of ``kind``'s sheds since its last one; a line written by a shed that
        came after the period ended, before its timer ran, takes the timer's place."""
        if (timer := self._due.pop(kind, None)) is not None:
            timer.cancel()
        shed, now = self._shed.pop(kind, 0), time.monotonic()
        if not shed:
            return
        logged_at = self._logged_at.get(kind)
        since = "" if logged_at is None else f" in the last {now - logged_at:,.0f} s"
        log.warning(
            "shed %d %s%s with 503 overloaded, each after waiting %g s for a turn: %s",
            shed,
            kind,
            since,
            self.wait_s,
            MORE_ROOM,
        )
        self._logged_at[kind] = now


def _untimed(seconds: float) -> None:
    """Where no one times the turns."""
