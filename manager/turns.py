"""Turns of the event loop for the CPU-bound loops that share a process with requests.

The reconciler's planning and its reads of the fleet run on the event loop that serves the
agents and the API. Yielding every so many items bounded nothing: at a thousand workers a
placement took 1-3 ms, so a hundred workloads planned between turns held the loop for
100-300 ms, and the heartbeats and API calls queued behind them (a lateness probe in the
Manager at 1,000 agents and 10,000 workloads found most of the loop's stalls there). A loop
now yields when it has held the loop ``TURN_S``, however many items that took. A request waits
behind such a turn at each of its awaits, and a request has several: at 1,000 agents and
10,000 workloads, the steady heartbeat and create p99s were 223 and 119 ms with turns of 3 ms,
against 305-314 and 167-201 ms in two runs with turns of 10 ms (the get's about the same).
"""

from __future__ import annotations

import asyncio
import time

# How long a CPU-bound loop may hold the event loop before it lets requests run.
TURN_S = 0.003


class Turns:
    """``if turns.due(): await turns.give()`` in a CPU-bound loop: requests wait at most about
    ``every_s`` (and one item's work) behind it."""

    def __init__(self, every_s: float = TURN_S) -> None:
        self.every_s = every_s
        self._since = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self._since >= self.every_s

    async def give(self) -> None:
        await asyncio.sleep(0)
        self._since = time.perf_counter()
