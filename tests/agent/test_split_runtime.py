"""A docker agent runs custom backends as host processes: SplitRuntime sends each engine to its
half, and finds both halves' engines again after a restart.

The container half here is a second process runtime (the docker runtime's own tests are
tests/agent/test_docker_runtime.py): what is tested is the routing, with real processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until
from worker_agent.runtimes.base import LaunchSpec
from worker_agent.runtimes.process import ProcessRuntime
from worker_agent.runtimes.split import SplitRuntime


def spec(replica_id: str, *, plain_process: bool) -> LaunchSpec:
    script = f"echo {replica_id} says hello; exec sleep 60"
    return LaunchSpec(
        replica_id, "wl", "wrk", ["sh", "-c", script], {}, [], 1, None, plain_process=plain_process
    )


@pytest.fixture
def halves(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    dirs = (tmp_path / "containers", tmp_path / "process")
    yield dirs
    for directory in dirs:
        runtime = ProcessRuntime(directory)
        for replica_id in runtime.running():
            runtime.stop(replica_id, timeout_s=2)


def split(halves: tuple[Path, Path]) -> SplitRuntime:
    return SplitRuntime(ProcessRuntime(halves[0]), ProcessRuntime(halves[1]))


def test_plain_process_engines_go_to_the_host_half_and_others_to_the_containers(
    halves: tuple[Path, Path],
) -> None:
    runtime = split(halves)
    runtime.start(spec("rep_image", plain_process=False))
    runtime.start(spec("rep_custom", plain_process=True))

    assert set(ProcessRuntime(halves[0]).running()) == {"rep_image"}
    assert set(ProcessRuntime(halves[1]).running()) == {"rep_custom"}
    assert {rid for rid, engine in runtime.running().items() if engine.alive} == {
        "rep_image",
        "rep_custom",
    }
    for replica_id in ("rep_image", "rep_custom"):
        wait_until(
            lambda rid=replica_id: f"{rid} says hello" in runtime.log_tail(rid),
            5,
            f"{replica_id}'s log never came through its half",
        )


def test_a_restarted_agent_finds_and_stops_the_engines_of_both_halves(
    halves: tuple[Path, Path],
) -> None:
    first = split(halves)
    first.start(spec("rep_image", plain_process=False))
    first.start(spec("rep_custom", plain_process=True))

    restarted = split(halves)
    assert {rid for rid, engine in restarted.running().items() if engine.alive} == {
        "rep_image",
        "rep_custom",
    }
    restarted.stop("rep_custom", timeout_s=2)
    assert set(restarted.running()) == {"rep_image"}
    restarted.stop("rep_image", timeout_s=2)
    assert restarted.running() == {}
