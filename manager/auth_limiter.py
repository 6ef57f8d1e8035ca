"""Failed authentications, counted per client address: past a few a window, that address is
answered 429 with Retry-After before any credential lookup, so a flood of made-up keys costs
neither database queries nor the latency of real traffic.

Counted per address as the Manager sees it: behind a reverse proxy every client shares the
proxy's address, so raise the limit there (INFERENCEKEY_AUTH_FAILURES_PER_WINDOW).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Coroutine

from manager.auth import Principal
from manager.errors import TooManyFailedAuthentications, Unauthenticated


class FailedAuthLimiter:
    def __init__(
        self, max_failures: int = 30, window_s: float = 10.0, max_addresses: int = 50_000
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        # address -> (start of its window, failures in it); insertion order is age order.
        self._windows: dict[str, tuple[float, int]] = {}

    async def authenticate(self, address: str | None, attempt: Awaitable[Principal]) -> Principal:
        """``attempt``'s principal; refused at once while ``address`` is over its limit, and a
        failure counted against it."""
        try:
            self.check(address)
        except TooManyFailedAuthentications:
            if isinstance(attempt, Coroutine):
                attempt.close()  # refused without a lookup: never started, never awaited
            raise
        try:
            return await attempt
        except Unauthenticated:
            self.failed(address)
            raise

    def check(self, address: str | None) -> None:
        """Raise TooManyFailedAuthentications while ``address`` is over its limit."""
        if address is None:
            return
        window = self._windows.get(address)
        if window is None:
            return
        started, failures = window
        now = time.monotonic()
        if now - started >= self.window_s:
            del self._windows[address]
        elif failures >= self.max_failures:
            retry_after = max(1, math.ceil(started + self.window_s - now))
            raise TooManyFailedAuthentications(
                f"too many failed authentications from this address; retry in {retry_after}s",
                retry_after_s=retry_after,
            )

    def failed(self, address: str | None) -> None:
        if address is None:
            return
        now = time.monotonic()
        started, failures = self._windows.pop(address, (now, 0))
        if now - started >= self.window_s:
            started, failures = now, 0
        self._windows[address] = (started, failures + 1)
        if len(self._windows) > self.max_addresses:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        # The oldest windows first: mostly expired ones, so little is lost.
        for address in list(self._windows)[: len(self._windows) // 2]:
            del self._windows[address]
