"""Engines as plain processes, for bare-metal hosts without Docker.

Each engine runs in its own session (so its process group is its own, and stop() reaches every
child it forked), logs to `<state_dir>/logs/<replica>.log`, and has a JSON record in
`<state_dir>/replicas/<replica>.json`. A restarted agent reads the records back and adopts the
engines whose process is still the one recorded (same pid and command line).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from worker_agent.runtimes.base import (
    LaunchError,
    LaunchSpec,
    RunningEngine,
    custom_backend_env,
    process_engine_env,
)

_LOG_TAIL_BYTES = 64 * 1024
_KILL_WAIT_S = 5.0  # SIGKILL cannot be refused, but the kernel takes a moment to finish the job


@dataclass(frozen=True)
class ProcessRecord:
    replica_id: str
    workload_id: str
    worker_id: str
    pid: int
    pgid: int
    port: int
    argv: list[str]
    started_at: str
    start_ticks: int  # start time from /proc/<pid>/stat: with the pid, names one process


class FileLogStream:
    """The last ``tail`` lines of a log file, then what is appended to it (when following)."""

    POLL_S = 0.2

    def __init__(self, path: Path, tail: int, follow: bool) -> None:
        self.path, self.tail, self.follow = path, tail, follow
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        try:
            log = open(self.path, "rb")  # noqa: SIM115 (closed in the finally below)
        except FileNotFoundError:
            return
        try:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - _LOG_TAIL_BYTES))
            lines = log.read().splitlines(keepends=True)[-self.tail :]
            if lines:
                yield b"".join(lines)
            while self.follow and not self._closed.is_set():
                chunk = log.read(65536)
                if chunk:
                    yield chunk
                else:
                    self._closed.wait(self.POLL_S)
        finally:
            log.close()

    def close(self) -> None:
        self._closed.set()


class ProcessRuntime:
    name = "process"
    bind_host = "127.0.0.1"  # the agent's proxy is on this host; nothing else needs the engine

    def __init__(self, state_dir: str | Path, binaries: dict[str, str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.binaries = binaries or {}
        self._records_dir = self.state_dir / "replicas"
        self._logs_dir = self.state_dir / "logs"
        self._records_dir.mkdir(parents=True, exist_ok=True)
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        # Only children of this process have a knowable exit code.
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        for record in self._records():
            if not _is_running(record):
                self._forget(record.replica_id)

    def start(self, spec: LaunchSpec) -> None:
        self.stop(spec.replica_id)
        argv = [self._resolve(spec.argv[0]), *spec.argv[1:]]
        inherited = custom_backend_env if spec.plain_process else process_engine_env
        env = {
            **inherited(os.environ),
            **spec.env,
            "CUDA_VISIBLE_DEVICES": ",".join(spec.gpu_uuids),
        }
        with open(self._log_path(spec.replica_id), "wb") as log:
            try:
                child = subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.state_dir,
                    start_new_session=True,
                )
            except OSError as error:
                raise LaunchError(f"cannot start {argv[0]}: {error}") from error
        self._children[spec.replica_id] = child
        stat = _proc_stat(child.pid)
        record = ProcessRecord(
            replica_id=spec.replica_id,
            workload_id=spec.workload_id,
            worker_id=spec.worker_id,
            pid=child.pid,
            pgid=child.pid,
            port=spec.port,
            argv=argv,
            started_at=datetime.now(UTC).isoformat(),
            start_ticks=stat.start_ticks if stat else 0,
        )
        path = self._record_path(spec.replica_id)
        path.with_suffix(".tmp").write_text(json.dumps(asdict(record)))
        path.with_suffix(".tmp").replace(path)

    def stop(self, replica_id: str, timeout_s: float = 10) -> None:
        record = self._record(replica_id)
        if record is not None:
            child = self._children.get(replica_id)
            # An adopted group is only ours while its leader is the recorded process; our own
            # child's group is ours even after the leader exited and left workers behind.
            owned = child is not None or _is_running(record)
            if owned:
                _signal_group(record.pgid, signal.SIGTERM)
                if not _wait_group_gone(record.pgid, child, timeout_s):
                    _signal_group(record.pgid, signal.SIGKILL)
                    _wait_group_gone(record.pgid, child, _KILL_WAIT_S)
            if child is not None:
                child.poll()
        self._forget(replica_id)

    def running(self) -> dict[str, RunningEngine]:
        engines = {}
        for record in self._records():
            child = self._children.get(record.replica_id)
            if child is not None:
                exit_code = child.poll()
                alive = exit_code is None
            else:
                exit_code, alive = None, _is_running(record)
            engines[record.replica_id] = RunningEngine(
                record.replica_id, record.port, alive, exit_code
            )
        return engines

    def knows(self, replica_id: str) -> bool:
        """Whether this runtime has a record of the replica's engine (running or not)."""
        return self._record_path(replica_id).exists()

    def log_tail(self, replica_id: str, lines: int = 40) -> str:
        try:
            with open(self._log_path(replica_id), "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_stream(self, replica_id: str, tail: int, follow: bool) -> FileLogStream:
        return FileLogStream(self._log_path(replica_id), tail, follow)

    def _resolve(self, program: str) -> str:
        path = self.binaries.get(program) or shutil.which(program)
        if path is None:
            raise LaunchError(f"{program} is not installed on this host (not on PATH)")
        return path

    def _records(self) -> list[ProcessRecord]:
        records = []
        for path in sorted(self._records_dir.glob("*.json")):
            try:
                records.append(ProcessRecord(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                path.unlink(missing_ok=True)  # a record we cannot read names no engine we can find
        return records

    def _record(self, replica_id: str) -> ProcessRecord | None:
        return next((r for r in self._records() if r.replica_id == replica_id), None)

    def _forget(self, replica_id: str) -> None:
        self._children.pop(replica_id, None)
        self._record_path(replica_id).unlink(missing_ok=True)

    def _record_path(self, replica_id: str) -> Path:
        return self._records_dir / f"{replica_id}.json"

    def _log_path(self, replica_id: str) -> Path:
        return self._logs_dir / f"{replica_id}.log"


class _ProcStat(NamedTuple):
    state: str
    pgid: int
    start_ticks: int


def _proc_stat(pid: int) -> _ProcStat | None:
    try:
        # Fields after the parenthesised name, from field 3 (state) on; see proc(5).
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return _ProcStat(fields[0], int(fields[2]), int(fields[19]))
    except (OSError, IndexError, ValueError):
        return None


def _is_running(record: ProcessRecord) -> bool:
    """Whether the recorded process is still alive and is still the one recorded (pids get reused).

    The command line identifies it, or else its start time: engines that rename their process
    (setproctitle) no longer show the argv they were started with.
    """
    stat = _proc_stat(record.pid)
    if stat is None or stat.state == "Z":
        return False
    if stat.start_ticks == record.start_ticks:
        return True
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.split(b"\0")[:-1] == [arg.encode() for arg in record.argv]


def _group_alive(pgid: int) -> bool:
    """Whether any process other than a zombie is left in the group."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat.pgid == pgid and stat.state != "Z":
                return True
    return False


def _wait_group_gone(pgid: int, child: subprocess.Popen[bytes] | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid):
        if child is not None:
            child.poll()  # reap our own child, or it lingers as a zombie in the group
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)
