"""How many connections wait in the kernel for the Manager to accept them.

A connection the kernel has accepted on the Manager's behalf waits in the listening socket's
queue until the event loop takes it. While it waits its request is neither served nor shed: no
histogram of the Manager's sees it, and an agent's heartbeat in it renews no lease. Under
overload that queue held 1,300-1,800 connections (docs/FLEET-SCALE.md) and nothing the Manager
exported said so; ``inferencekey_accept_queue_connections`` does now.

Linux reports both figures of a listening socket in ``TCP_INFO``: ``tcpi_unacked`` is the queue's
length and ``tcpi_sacked`` its limit (the ``backlog`` given to ``listen``, capped by
``net.core.somaxconn``). Elsewhere, or on a socket that is not TCP, there is no figure.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from typing import Any, Protocol

# struct tcp_info (linux/tcp.h): eight one-byte fields, then u32 rto, ato, snd_mss, rcv_mss,
# unacked, sacked.
_TCP_INFO = struct.Struct("8B6I")
_UNACKED, _SACKED = 12, 13
_LISTEN = 10  # TCP_LISTEN, tcpi_state of a listening socket


class Listening(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def accept_queue(sockets: Iterable[Listening]) -> tuple[int, int] | None:
    """(connections waiting to be accepted, the most that may wait) over ``sockets``' listening
    TCP sockets; None where the system says neither (not Linux, no listening TCP socket)."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    waiting = limit = 0
    found = False
    for sock in sockets:
        try:
            info = _TCP_INFO.unpack_from(sock.getsockopt(socket.IPPROTO_TCP, option, 104))
        except (OSError, struct.error):  # a Unix socket, a closed one, a short answer
            continue
        if info[0] != _LISTEN:
            continue
        found = True
        waiting += info[_UNACKED]
        limit += info[_SACKED]
    return (waiting, limit) if found else None


def listening_sockets(servers: Iterable[Any]) -> list[Listening]:
    """The sockets ``servers`` (uvicorn's) listen on: none before they start serving."""
    return [
        sock
        for server in servers
        for listener in getattr(server, "servers", ())
        for sock in listener.sockets
    ]
