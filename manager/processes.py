"""One Manager as several processes on one port (``inferencekey manager --processes N``).

One Python process uses one core, whatever the machine has: under a fleet (docs/DESIGN.md, "The
Manager on more than one core") its event loop was the bound long before the machine was. N
processes share the listening socket, and each serves as a whole Manager does, exactly as N
Managers on one database do: the API, the agent protocol and the gateway, listening for the
notifications the others send. One more process runs the reconciler alone (it stands for the
leader lock as any Manager's does), with no request to hold up its passes: under a fleet's load
a pass in a serving process waited behind hundreds of requests at each of its awaits. What the
processes share goes through Postgres, as it does between Managers on several hosts; what each
keeps in memory (caches, the gateway's in-flight counts, the failed-authentication limiter) is its
own.

This parent process holds the socket, runs no app, and:

- starts the processes (``spawn``: nothing of the parent's state is inherited by accident) and
  starts another in place of one that exits, saying why; one that keeps exiting right after it
  started (a database it cannot reach, a setting it refuses) stops the Manager instead of being
  restarted forever;
- gathers their metrics: prometheus-client's multiprocess mode, each process writing its series
  to files in a directory of its own, read together by ``/metrics`` in any process and by the
  metrics address, which the parent serves;
- on SIGTERM or SIGINT asks each process to stop (they finish what is in flight, as one does)
  and waits for them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from manager.settings import Settings

log = logging.getLogger("inferencekey.manager")

# prometheus-client's multiprocess mode is on in a process whose environment names this
# directory when prometheus_client is first imported (the children import it after spawn).
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Set by the supervisor only: a Manager of one process shows its own series whatever the
# environment says, and its processes know whom to outlive.
GATHERED_VARIABLE = "INFERENCEKEY_PROCESS_METRICS_DIR"
SUPERVISOR_VARIABLE = "INFERENCEKEY_SUPERVISOR_PID"
# A process that exits within this long of its start, this many times in a row, is not
# restarted again: whatever stops it will stop the next one too.
QUICK_EXIT_S = 10.0
QUICK_EXITS_TO_GIVE_UP = 3
# After the graceful shutdown a process gets to finish open streams, how long before it is killed.
KILL_AFTER_S = 5.0

Serve = Callable[[Settings, socket.socket, str], None]
Reconcile = Callable[[Settings, str], None]


def listening_socket(host: str, port: int) -> socket.socket:
    """The one socket every process accepts on (bound and listening here, before any starts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


@dataclass
class _Child:
    role: str  # "serving process N" or "reconciler process"
    target: Callable[..., None]
    args: tuple[Any, ...]
    process: BaseProcess | None = None
    started: float = 0.0


class Supervisor:
    """Runs ``count`` processes of ``serve(settings, sock, log_format)`` and, when the
    settings run the reconciler, one of ``reconcile(settings, log_format)``, until told to
    stop."""

    def __init__(
        self,
        serve: Serve,
        reconcile: Reconcile,
        settings: Settings,
        count: int,
        log_format: str,
        graceful_s: float,
    ) -> None:
        # The parent migrated the database and serves the metrics address itself; the
        # reconciler has a process of its own, where no request can hold up its passes.
        self.settings = replace(
            settings, run_migrations=False, metrics_address=None, run_reconciler=False
        )
        self.metrics_address = settings.metrics_address
        self.count = count
        self.log_format = log_format
        self.graceful_s = graceful_s
        self._serve = serve
        self._reconcile = reconcile if settings.run_reconciler else None
        self._context = multiprocessing.get_context("spawn")
        self._children: list[_Child] = []
        self._stopping = False
        self._quick_exits = 0

    def run(self, sock: socket.socket) -> int:
        """Until SIGTERM or SIGINT (0), or until the processes keep failing to start (1)."""
        previous = {
            signum: signal.signal(signum, self._stop) for signum in (signal.SIGTERM, signal.SIGINT)
        }
        self._children = [
            _Child(f"serving process {n}", self._serve, (self.settings, sock, self.log_format))
            for n in range(self.count)
        ]
        if self._reconcile is not None:
            reconciling = replace(self.settings, run_reconciler=True)
            self._children.append(
                _Child("reconciler process", self._reconcile, (reconciling, self.log_format))
            )
        os.environ[SUPERVISOR_VARIABLE] = str(os.getpid())
        try:
            with self._metrics_directory() as directory, self._metrics_served(directory):
                try:
                    for child in self._children:
                        self._start(child)
                    return self._watch(directory)
                finally:  # before the metrics go: a stopping process may still write them
                    self._stop_children()
        finally:
            os.environ.pop(SUPERVISOR_VARIABLE, None)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, child: _Child) -> None:
        child.process = self._context.Process(
            target=child.target, args=child.args, name=f"inferencekey {child.role}"
        )
        child.process.start()
        child.started = time.monotonic()
        log.info("Manager %s started (pid %s)", child.role, child.process.pid)

    def _watch(self, directory: str) -> int:
        while not self._stopping:
            sentinels = {
                child.process.sentinel: child
                for child in self._children
                if child.process is not None
            }
            ready = wait(list(sentinels), timeout=0.5)
            for sentinel in ready:
                if self._stopping:
                    break
                child = sentinels[sentinel]  # type: ignore[index]
                assert child.process is not None
                code = self._reap(child, directory)
                lived = time.monotonic() - child.started
                self._quick_exits = self._quick_exits + 1 if lived < QUICK_EXIT_S else 0
                if self._quick_exits >= QUICK_EXITS_TO_GIVE_UP:
                    log.error(
                        "Manager processes keep exiting right after they start (the last, "
                        "its %s, with %s after %.1f s; its log says why): stopping",
                        child.role,
                        _exit_text(code),
                        lived,
                    )
                    return 1
                log.warning(
                    "Manager %s (pid %s) exited with %s after %.1f s; starting another",
                    child.role,
                    child.process.pid,
                    _exit_text(code),
                    lived,
                )
                self._start(child)
        return 0

    def _reap(self, child: _Child, directory: str) -> int | None:
        assert child.process is not None
        child.process.join()
        if child.process.pid is not None and directory:
            # Its live gauges (in-flight requests, "leads the reconciler") are no longer counted.
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(child.process.pid, directory)
        return child.process.exitcode

    def _stop_children(self) -> None:
        alive = [
            child.process
            for child in self._children
            if child.process is not None and child.process.is_alive()
        ]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + self.graceful_s + KILL_AFTER_S
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in alive:
            if process.is_alive():
                log.warning("Manager process (pid %s) did not stop in time: killed", process.pid)
                process.kill()
                process.join()

    @contextlib.contextmanager
    def _metrics_directory(self) -> Iterator[str]:
        """The operator's PROMETHEUS_MULTIPROC_DIR (emptied: old processes' series would count
        again), else a temporary one, removed at the end."""
        given = os.environ.get(METRICS_DIR_VARIABLE, "").strip()
        directory = given or tempfile.mkdtemp(prefix="inferencekey-metrics-")
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.unlink(os.path.join(directory, name))
        os.environ[METRICS_DIR_VARIABLE] = directory
        os.environ[GATHERED_VARIABLE] = directory
        try:
            yield directory
        finally:
            os.environ.pop(GATHERED_VARIABLE, None)
            if not given:
                shutil.rmtree(directory, ignore_errors=True)
                os.environ.pop(METRICS_DIR_VARIABLE, None)

    @contextlib.contextmanager
    def _metrics_served(self, directory: str) -> Iterator[None]:
        if self.metrics_address is None:
            yield
            return
        from ik_contracts.metrics import MetricsServer

        server = MetricsServer(gathered_registry(directory))
        host, _, port = self.metrics_address.rpartition(":")
        server.serve(host or "127.0.0.1", int(port))
        try:
            yield
        finally:
            server.stop()


def stop_when_orphaned(every_s: float = 1.0) -> None:
    """In a Manager's process: stop as on SIGTERM if the parent goes without stopping it
    (SIGKILLed), rather than serve on, unsupervised, on the port."""
    # The supervisor's pid as it said it (it may be gone already, its child adopted by another).
    parent = int(os.environ.get(SUPERVISOR_VARIABLE) or os.getppid())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        log.warning("the Manager's parent process is gone: stopping this process")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def gathered_registry(directory: str) -> Any:
    """A registry of every process's series in ``directory``, summed as each metric says."""
    from prometheus_client import CollectorRegistry, multiprocess

    # A collector of the processes' files has no names of its own to describe: without this,
    # a scrape that asks for some series by name (``/metrics?name[]=...``) got none at all.
    registry = CollectorRegistry(support_collectors_without_names=True)
    multiprocess.MultiProcessCollector(registry, path=directory)
    return registry


def metrics_directory() -> str | None:
    """The directory this process's metrics are gathered from, when it is one of several."""
    return os.environ.get(GATHERED_VARIABLE, "").strip() or None


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:  # a real-time signal has no name
            return f"signal {-code}"
    return f"code {code}"
