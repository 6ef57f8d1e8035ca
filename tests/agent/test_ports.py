"""Engine ports come from the configured range and never collide."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker_agent.config import DEFAULT_PORT_RANGE
from worker_agent.ports import PortAllocator, PortsExhausted, ephemeral_overlap


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_by_any_process_is_skipped(listener: int) -> None:
    allocator = PortAllocator(listener, listener + 1)
    assert allocator.allocate() == listener + 1


def test_reserved_ports_are_not_handed_out_until_released(listener: int) -> None:
    port = listener + 1
    allocator = PortAllocator(port, port + 1)
    allocator.reserve(port)  # e.g. an adopted engine's port
    assert allocator.allocate() == port + 1
    with pytest.raises(PortsExhausted):
        allocator.allocate()
    allocator.release(port)
    assert allocator.allocate() == port


def test_a_released_port_comes_back_last() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        start = sock.getsockname()[1]
    allocator = PortAllocator(start, start + 2)
    first = allocator.allocate()
    allocator.release(first)
    assert allocator.allocate() != first


def test_bad_range_is_rejected() -> None:
    with pytest.raises(ValueError):
        PortAllocator(5000, 4000)


def test_a_port_taken_meanwhile_is_traded_for_a_free_one_at_relaunch() -> None:
    allocator = PortAllocator(1024, 65535)
    port = allocator.allocate()
    assert allocator.still_free(port) == port  # nothing took it: the relaunch keeps it
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        replacement = allocator.still_free(port)
    assert replacement != port
    # The replacement is handed out (reserved), the taken port is not held any more.
    allocator.reserve(port)  # would be a no-op had still_free kept it
    allocator.release(port)
    assert allocator.still_free(replacement) == replacement


def test_the_default_range_lies_below_linuxs_ephemeral_ports(tmp_path: Path) -> None:
    linux_default = tmp_path / "ip_local_port_range"
    linux_default.write_text("32768\t60999\n")
    assert ephemeral_overlap(*DEFAULT_PORT_RANGE, source=linux_default) is None


def test_a_range_among_the_ephemeral_ports_is_named_with_the_kernels_range(
    tmp_path: Path,
) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768\t60999\n")
    said = ephemeral_overlap(41000, 41999, source=ranges)
    assert said is not None
    assert "41000-41999" in said and "32768-60999" in said
    assert ephemeral_overlap(30000, 32768, source=ranges) is not None  # its edge counts
    assert ephemeral_overlap(61000, 61999, source=ranges) is None
    assert ephemeral_overlap(41000, 41999, source=tmp_path / "absent") is None
