"""Ports for engines, from the operator's range, never one that is taken or already handed out."""

from __future__ import annotations

import socket
import threading
from pathlib import Path


class PortsExhausted(RuntimeError):
    pass


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_overlap(start: int, end: int, source: Path = EPHEMERAL_RANGE) -> str | None:
    """Why ``start``-``end`` is a poor range for engines, or None: the part of it the kernel may
    give any outgoing connection as its local port (Linux's ``ip_local_port_range``), where a
    port the agent found free can be taken before its engine binds it."""
    try:
        low, high = (int(each) for each in source.read_text().split())
    except (OSError, ValueError):
        return None  # not Linux, or unreadable: nothing to say
    if end < low or start > high:
        return None
    return (
        f"engine ports {start}-{end} overlap the kernel's ephemeral ports {low}-{high} "
        f"({source}): an outgoing connection can take an engine's port before the engine "
        "binds it, and that engine then fails to start (and is restarted on another port); "
        "choose a range outside it"
    )


class PortAllocator:
    def __init__(self, start: int, end: int) -> None:
        if not 0 < start <= end < 65536:
            raise ValueError(f"bad port range {start}-{end}")
        self.start, self.end = start, end
        self._reserved: set[int] = set()
        self._next = start
        self._lock = threading.Lock()

    def allocate(self) -> int:
        """A free port; the search goes on from the last one handed out, so a port that was
        just released (and may still have clients of the old engine) is the last to come back."""
        with self._lock:
            size = self.end - self.start + 1
            for offset in range(size):
                port = self.start + (self._next - self.start + offset) % size
                if port not in self._reserved and _is_free(port):
                    self._reserved.add(port)
                    self._next = port + 1
                    return port
        raise PortsExhausted(f"no free port in {self.start}-{self.end}")

    def still_free(self, port: int) -> int:
        """``port`` if nothing else listens on it now, else a new free one (and ``port`` is
        released): a relaunch must not fail forever on a port another process took meanwhile."""
        if _is_free(port):
            return port
        replacement = self.allocate()
        self.release(port)
        return replacement

    def reserve(self, port: int) -> None:
        """Mark a port as taken, e.g. the port of an engine adopted from an earlier agent run."""
        with self._lock:
            self._reserved.add(port)

    def release(self, port: int) -> None:
        with self._lock:
            self._reserved.discard(port)


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port held only by TIME_WAIT sockets is free for a new listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
