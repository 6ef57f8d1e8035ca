"""The accept queue's figures, read from real listening sockets (manager/accept_queue.py)."""

from __future__ import annotations

import socket
import sys
from contextlib import ExitStack

import pytest

from manager.accept_queue import accept_queue

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO is Linux's")


def test_connections_not_yet_accepted_are_counted_against_the_backlog() -> None:
    with ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0), backlog=8))
        assert accept_queue([listener]) == (0, 8)
        clients = [
            stack.enter_context(socket.create_connection(listener.getsockname(), timeout=5))
            for _ in range(3)
        ]
        assert accept_queue([listener]) == (3, 8)
        accepted, _ = listener.accept()
        stack.enter_context(accepted)
        assert accept_queue([listener]) == (2, 8)
        assert len(clients) == 3


def test_two_listeners_add_up_and_other_sockets_are_left_out() -> None:
    with ExitStack() as stack:
        first = stack.enter_context(socket.create_server(("127.0.0.1", 0), backlog=4))
        second = stack.enter_context(socket.create_server(("127.0.0.1", 0), backlog=6))
        stack.enter_context(socket.create_connection(second.getsockname(), timeout=5))
        connected = stack.enter_context(socket.create_connection(first.getsockname(), timeout=5))
        unix = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        closed = socket.create_server(("127.0.0.1", 0))
        closed.close()
        assert accept_queue([first, second, connected, unix, closed]) == (2, 10)


def test_no_listening_socket_gives_no_figure() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        assert accept_queue([unix]) is None
    assert accept_queue([]) is None
