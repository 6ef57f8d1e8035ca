"""What a test run must not leave behind: processes, engine containers and servers it started.

A run marks itself with ``RUN_MARKER=<id>`` in ``os.environ`` before any test starts, so every
process it starts inherits the mark, and engine processes (which see only an allow-list of their
agent's environment) are found by their working directory, the agent's state dir under the run's
temporary root. Docker containers are found by name: every engine container this process started
through the docker runtime is recorded as it starts. tests/conftest.py checks at the end of the
run, kills or removes what it finds, and fails the run naming each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Not INFERENCEKEY_*: tests start Managers and agents with those stripped from the environment.
RUN_MARKER = "IK_TEST_RUN"
# Threads tests/support.py runs a Manager or an agent in.
SERVER_THREAD_NAMES = ("manager", "agent")
_TERM_WAIT_S = 5.0


@dataclass
class TestRun:
    """One pytest session: its id, its temporary root, the engine containers it started."""

    __test__ = False

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    temp_root: Path | None = None
    docker_hosts: set[str] = field(default_factory=set)
    containers: set[str] = field(default_factory=set)
    leftovers_found: list[str] = field(default_factory=list)

    def mark_environment(self) -> None:
        os.environ[RUN_MARKER] = self.run_id


@dataclass(frozen=True)
class Leftover:
    description: str
    clean_up: Callable[[], None]


def environment_without_marker() -> dict[str, str]:
    """The environment for a process meant to outlive the run (the tests' own Docker daemon)."""
    return {name: value for name, value in os.environ.items() if name != RUN_MARKER}


def find_leftovers(run: TestRun) -> list[Leftover]:
    return [*_leftover_threads(), *_leftover_processes(run), *_leftover_containers(run)]


def _leftover_threads() -> list[Leftover]:
    deadline = time.monotonic() + 10  # a Manager finishing its graceful shutdown right now
    while True:
        alive = [t for t in threading.enumerate() if t.name in SERVER_THREAD_NAMES and t.is_alive()]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # A thread cannot be killed; the process exits with it, as these are daemon threads.
    return [Leftover(f"a {t.name} thread in the test process", _nothing) for t in alive]


def _leftover_processes(run: TestRun) -> list[Leftover]:
    marker = f"{RUN_MARKER}={run.run_id}".encode()
    ours = {os.getpid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        pid = int(entry.name)
        try:
            if _state(pid) == "Z":
                continue
            marked = marker in (entry / "environ").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        in_temp = run.temp_root is not None and cwd.is_relative_to(run.temp_root)
        if marked or in_temp:
            why = "started by this run" if marked else f"working in {cwd}"
            found.append(
                Leftover(f"process {pid} ({why}): {command.strip()[:200]}", _terminator(pid))
            )
    return found


def _leftover_containers(run: TestRun) -> list[Leftover]:
    if not run.containers:
        return []
    import docker
    import docker.errors

    found = []
    for host in sorted(run.docker_hosts):
        client = docker.DockerClient(base_url=host, timeout=30)
        for name in sorted(run.containers):
            with contextlib.suppress(docker.errors.NotFound):
                container = client.containers.get(name)
                found.append(
                    Leftover(
                        f"engine container {name} ({container.status}) on {host}",
                        _remover(host, name),
                    )
                )
        client.close()
    return found


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _terminator(pid: int) -> Callable[[], None]:
    def terminate() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + _TERM_WAIT_S
            while time.monotonic() < deadline and _state_or_gone(pid) not in ("", "Z"):
                time.sleep(0.1)
            if _state_or_gone(pid) not in ("", "Z"):
                os.kill(pid, signal.SIGKILL)

    return terminate


def _state_or_gone(pid: int) -> str:
    try:
        return _state(pid)
    except OSError:
        return ""


def _remover(host: str, name: str) -> Callable[[], None]:
    def remove() -> None:
        import docker
        import docker.errors

        client = docker.DockerClient(base_url=host, timeout=60)
        try:
            with contextlib.suppress(docker.errors.NotFound):
                client.containers.get(name).remove(force=True)
        finally:
            client.close()

    return remove


def _nothing() -> None:
    pass
