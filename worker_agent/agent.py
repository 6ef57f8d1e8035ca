"""The worker agent: report inventory and replica states, run what the Manager assigns.

Three loops share one picture of the replicas:
- heartbeat: renews the worker's lease, carrying the inventory and observed states only when
  they changed (worker_agent/heartbeats.py), at once on a change, and gets the full desired set
  back; after a failure it waits as the Manager's Retry-After says, else with jittered backoff;
- watch: long-polls the desired set, so a change reaches this host within a second;
- converge: starts what is missing, stops what is extra, health-checks, restarts crashed engines
  with capped exponential backoff. It waits for the first desired set, so a restarted agent
  adopts its running engines instead of killing them.

A replica of a custom backend is prepared before its first launch, in a task of its own that
the converge loop watches (worker_agent/custom_backends.py: download, verify, unpack, venv); the
replica is `starting` meanwhile, its reason naming the step, and `failed` with uv's words if it
cannot be prepared. Custom backends always run as plain processes (SplitRuntime under docker).

Engines outlive the agent unless it is told to stop for good (`stop_engines_on_exit`, the
`--stop-engines-on-exit` flag): then it stops every engine it runs as it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import uvicorn
from inferencekey.validation import redact_token

from ik_contracts.engines import BackendInstall, CustomBackendEngine, engine_for
from ik_contracts.http_server import uvicorn_options
from ik_contracts.logs import configure_logging, ids
from ik_contracts.protocol import MAX_WAIT_S, Assignments, ReplicaAssignment, ReplicaState
from ik_contracts.upstream import UpstreamClient
from worker_agent import __version__
from worker_agent.config import AgentConfig
from worker_agent.custom_backends import CustomBackendStore
from worker_agent.gpus import InventorySource, detect_inventory, model_files
from worker_agent.hardening import forbid_dumping
from worker_agent.heartbeats import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    HEARTBEAT_BACKOFF_CAP_S,
    MANAGER_CONNECTION_LIMITS,
    WATCH_BACKOFF_CAP_S,
    WATCH_RETRY_S,
    Backoff,
    HeartbeatReports,
    retry_after_s,
    was_shed,
)
from worker_agent.metrics import AgentMetrics
from worker_agent.ports import PortAllocator, ephemeral_overlap
from worker_agent.proxy import AgentProxy
from worker_agent.replicas import LocalReplica
from worker_agent.runtimes.base import LaunchError, LaunchSpec, RunningEngine, Runtime

log = logging.getLogger("inferencekey.agent")

LOG_TAIL_LINES = 40
ENGINE_STOP_TIMEOUT_S = 10.0  # SIGTERM (docker stop) to SIGKILL, when stopping for good
READY_HEALTH_FAILURES = 3  # consecutive failed checks before a ready engine counts as unhealthy
BOOT_POLL_S = 0.1  # how often a booting engine is asked whether it is ready
STABLE_AFTER_S = 60.0  # a replica ready this long gets its restart backoff reset
# How long a stopping agent waits for its replicas' own tasks to end once cancelled (a package's
# build kills its uv and waits for it)
REPLICA_TASKS_STOP_S = 10.0


def build_runtime(config: AgentConfig, worker_id: str) -> Runtime:
    from worker_agent.runtimes.process import ProcessRuntime

    processes = ProcessRuntime(config.state_dir / "process", binaries=config.binaries)
    if config.runtime == "process":
        return processes
    if config.runtime == "docker":
        from worker_agent.runtimes.docker import DockerRuntime
        from worker_agent.runtimes.split import SplitRuntime

        containers = DockerRuntime(
            worker_id=worker_id,
            model_dir=str(config.model_dir),
            network_mode=config.docker_network_mode,
        )
        # Custom backends run as processes on the host even here.
        return SplitRuntime(containers, processes)
    raise ValueError(f"unknown runtime {config.runtime!r}; use 'docker' or 'process'")


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        inventory: InventorySource | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.config = config
        # Simulated GPU UUIDs are seeded per host and state dir: stable across restarts, and
        # distinct for two agents on one host, as real GPU UUIDs are.
        seed = f"{socket.gethostname()}:{config.state_dir}"
        self.inventory = inventory or detect_inventory(
            config.simulate_gpus, log, seed=seed, cuda_version=config.simulate_cuda_version
        )
        self.runtime = runtime
        self.ports = PortAllocator(*config.port_range)
        self.replicas: dict[str, LocalReplica] = {}
        self.desired: Assignments | None = None
        self.worker_id: str | None = None
        self._changed = asyncio.Event()  # local state changed: heartbeat now
        self.reports = HeartbeatReports()  # what each heartbeat carries
        self._desired_changed = asyncio.Event()  # desired set changed: converge now
        self._http = httpx.AsyncClient(
            base_url=config.manager_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {config.token}",
                "User-Agent": f"inferencekey-agent/{__version__}",
            },
            timeout=httpx.Timeout(10.0, read=MAX_WAIT_S + 10.0),
            limits=MANAGER_CONNECTION_LIMITS,
        )
        self._engine_http = httpx.AsyncClient(timeout=httpx.Timeout(2.0, read=5.0))
        self.custom_backends = CustomBackendStore(
            config.state_dir / "custom-backends",
            self._http,
            build_timeout_s=config.backend_build_timeout_s,
        )
        self.metrics = AgentMetrics()
        # Held around each engine start: stopping for good waits for a start under way, and
        # none begins after it.
        self._engine_starts = threading.Lock()
        self._engines_stopped_for_good = False

    @property
    def gateway_secret(self) -> str:
        return self.desired.gateway_secret if self.desired else ""

    @property
    def address(self) -> str:
        if self.config.advertise_url:
            return self.config.advertise_url.rstrip("/")
        return f"http://{socket.gethostname()}:{self.config.listen_port}"

    async def run(self) -> None:
        log.info(
            "agent %s starting: manager %s, credential %s, runtime %s",
            __version__,
            self.config.manager_url,
            redact_token(self.config.token),
            self.config.runtime,
        )
        if overlap := ephemeral_overlap(*self.config.port_range):
            log.warning("%s", overlap)
        upstream = UpstreamClient()
        proxy = uvicorn.Server(
            uvicorn.Config(
                AgentProxy(self, upstream),
                host=self.config.listen_host,
                port=self.config.listen_port,
                log_level="warning",
                access_log=False,
                proxy_headers=False,
                lifespan="off",
                timeout_graceful_shutdown=5,
                **uvicorn_options(self.config.server_limits),
            )
        )
        if self.config.metrics_listen is not None:
            self.metrics.server.serve(*self.config.metrics_listen)
        serving = asyncio.ensure_future(proxy.serve())
        try:
            # Shielded, so a stop lets the proxy finish its requests instead of dropping them.
            await asyncio.gather(
                self._heartbeat_loop(),
                self._watch_loop(),
                self._converge_loop(),
                asyncio.shield(serving),
            )
        finally:
            proxy.should_exit = True
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(serving, 10)
            await self._end_replica_tasks()
            if self.config.stop_engines_on_exit:
                await asyncio.to_thread(self.stop_engines)
            upstream.close()
            self.metrics.server.stop()
            await self._http.aclose()
            await self._engine_http.aclose()

    async def _end_replica_tasks(self) -> None:
        """Cancel what runs for each replica (a custom backend's build, an engine's
        preparation, a boot watch) and wait for it, at most ``REPLICA_TASKS_STOP_S``: a build
        cancelled here kills its uv, where a task left pending would be dropped with its event
        loop and leave uv running, its pipes open."""
        tasks = [
            task
            for local in self.replicas.values()
            for task in (local.install_task, local.prepare_task, local.boot_watch)
            if task is not None and not task.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=REPLICA_TASKS_STOP_S)
            if pending:
                log.warning(
                    "%d task(s) of replicas did not end within %g s of the agent stopping",
                    len(pending),
                    REPLICA_TASKS_STOP_S,
                )

    # --- talking to the Manager -------------------------------------------------------------

    def _heartbeat_body(self) -> dict[str, object]:
        snapshot = self.inventory.snapshot()
        self.metrics.observe_inventory(snapshot)
        inventory = snapshot.to_wire()
        inventory["model_files"] = model_files(self.config.model_dir)
        return self.reports.body(
            agent_version=__version__,
            address=self.address,
            inventory=inventory,
            replicas=[replica.observed() for replica in self.replicas.values()],
            desired_version=self.desired.version if self.desired else None,
        )

    def _accept(self, answer: Assignments) -> None:
        if self.worker_id is None:
            log.info("registered as worker %s", answer.worker_id)
        self.worker_id = answer.worker_id
        if self.desired is None or answer.version != self.desired.version:
            self.desired = answer
            self._desired_changed.set()

    async def _heartbeat_loop(self) -> None:
        backoff = Backoff(HEARTBEAT_BACKOFF_CAP_S)
        while True:
            interval = (
                self.desired.heartbeat_interval_s if self.desired else DEFAULT_HEARTBEAT_INTERVAL_S
            )
            # Cleared before the picture is taken: a change while the heartbeat is in flight
            # sends the next one at once.
            self._changed.clear()
            try:
                body = await asyncio.to_thread(self._heartbeat_body)
                response = await self._http.post("/api/agent/heartbeat", json=body)
                response.raise_for_status()
                answer = Assignments.model_validate(response.json())
            except (httpx.HTTPError, ValueError) as error:
                self.reports.failed(shed=was_shed(error))
                wait = backoff.failed(interval, retry_after_s(error))
                if backoff.failures == 1 or backoff.failures % 30 == 0:
                    log.warning(
                        "heartbeat failed (%s); engines keep running; retrying in %.1fs",
                        _describe(error),
                        wait,
                    )
                # Not cut short by a change: a Manager that sheds load gets the pause it asked for.
                await asyncio.sleep(wait)
                continue
            self.reports.acknowledged()
            self._accept(answer)
            if backoff.failures:
                log.info("manager reachable again after %d failed heartbeats", backoff.failures)
            backoff.reset()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), interval)

    async def _watch_loop(self) -> None:
        backoff = Backoff(WATCH_BACKOFF_CAP_S)
        while True:
            if self.desired is None:
                await asyncio.sleep(0.2)
                continue
            try:
                response = await self._http.get(
                    "/api/agent/assignments",
                    params={"version": self.desired.version, "wait": MAX_WAIT_S - 5},
                )
                response.raise_for_status()
                answer = Assignments.model_validate(response.json())
            except (httpx.HTTPError, ValueError) as error:
                wait = backoff.failed(WATCH_RETRY_S, retry_after_s(error))
                log.debug("watch failed (%s); retrying in %.1fs", _describe(error), wait)
                await asyncio.sleep(wait)
                continue
            backoff.reset()
            self._accept(answer)

    # --- converging ---------------------------------------------------------------------------

    async def _converge_loop(self) -> None:
        while self.desired is None or self.worker_id is None:
            await asyncio.sleep(0.1)
        if self.runtime is None:
            self.runtime = await asyncio.to_thread(build_runtime, self.config, self.worker_id)
        while True:
            self._desired_changed.clear()
            try:
                await self.converge_once()
            except Exception:
                log.exception("converge pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._desired_changed.wait(), self.config.health_interval_s)

    async def converge_once(self) -> None:
        assert self.runtime is not None and self.desired is not None and self.worker_id
        running = await asyncio.to_thread(self.runtime.running)
        wanted = {assignment.id: assignment for assignment in self.desired.replicas}
        for replica_id in [r for r in self.replicas if r not in wanted]:
            await self._stop(replica_id)
        for replica_id in [r for r in running if r not in wanted and r not in self.replicas]:
            log.info(
                "removing engine %s: not assigned to this worker",
                replica_id,
                extra=ids(replica_id=replica_id, worker_id=self.worker_id),
            )
            await asyncio.to_thread(self.runtime.stop, replica_id)
        for assignment in wanted.values():
            local = self.replicas.get(assignment.id)
            engine_now = running.get(assignment.id)
            if local is None:
                await self._adopt_or_launch(assignment, engine_now)
            else:
                await self._check(local, engine_now)

    async def _adopt_or_launch(
        self, assignment: ReplicaAssignment, engine_now: RunningEngine | None
    ) -> None:
        engine = engine_for(assignment.backend, assignment.custom_backend)
        argv, _ = engine.build_argv(assignment.command, assignment.model_name, "127.0.0.1", 0)
        served_model = engine.served_model_name(argv, assignment.model_name)
        if engine_now is not None and engine_now.alive:
            self.ports.reserve(engine_now.port)
            local = LocalReplica(
                assignment,
                engine,
                engine_now.port,
                reason="adopted from an earlier agent run",
                served_model=served_model,
            )
            self.replicas[assignment.id] = local
            log.info(
                "adopted running engine %s on port %d",
                assignment.id,
                engine_now.port,
                extra=_replica_ids(assignment, self.worker_id),
            )
            self._changed.set()
            return
        local = LocalReplica(assignment, engine, self.ports.allocate(), served_model=served_model)
        self.replicas[assignment.id] = local
        await self._launch(local)

    async def _launch(self, local: LocalReplica) -> None:
        assert self.runtime is not None and self.worker_id is not None
        assignment = local.assignment
        if isinstance(local.engine, CustomBackendEngine) and local.engine.install is None:
            self._begin_install(local, local.engine)
            return
        custom = isinstance(local.engine, CustomBackendEngine)  # a host process, from no image
        try:
            local.port = await asyncio.to_thread(self.ports.still_free, local.port)
            argv, local.notices = local.engine.build_argv(
                assignment.command, assignment.model_name, self.runtime.bind_host, local.port
            )
            spec = LaunchSpec(
                replica_id=assignment.id,
                workload_id=assignment.workload_id,
                worker_id=self.worker_id,
                argv=argv,
                env=local.engine.env(self.runtime.bind_host, local.port),
                gpu_uuids=assignment.gpu_uuids,
                port=local.port,
                image=(
                    None
                    if custom
                    else local.engine.image(assignment.vllm_version, self.config.images)
                ),
                plain_process=custom,
            )
            await asyncio.to_thread(self._start_engine, spec)
        except Exception as error:
            self._failed(local, f"could not start the engine: {error}", log_tail=None)
            return
        local.state, local.reason = ReplicaState.STARTING, "engine launched; loading the model"
        local.ready_since, local.health_failures, local.prepare_task = None, 0, None
        if local.boot_watch is not None:
            local.boot_watch.cancel()
        local.boot_watch = asyncio.create_task(self._watch_boot(local))
        log.info(
            "started %s (%s) on port %d",
            assignment.id,
            assignment.backend,
            local.port,
            extra=_replica_ids(assignment, self.worker_id),
        )
        self._changed.set()

    def _begin_install(self, local: LocalReplica, engine: CustomBackendEngine) -> None:
        """Prepare the replica's package in a task of its own; `_check` launches it when done."""
        ref = engine.ref

        def progress(reason: str) -> None:
            if self.replicas.get(local.assignment.id) is local:
                local.reason = reason
                self._changed.set()

        local.state = ReplicaState.STARTING
        local.reason = f"preparing custom backend {ref.slug} {ref.version}"
        local.ready_since = None
        local.install_task = asyncio.create_task(self.custom_backends.install(ref, progress))
        local.install_task.add_done_callback(self._install_done)
        self._changed.set()

    def _install_done(self, task: asyncio.Task[BackendInstall]) -> None:
        if not task.cancelled():
            task.exception()  # seen here too, so a stopped replica's failure is not "unretrieved"
        self._desired_changed.set()  # converge now: launch it, or report why not

    async def _installed(self, local: LocalReplica, task: asyncio.Task[BackendInstall]) -> None:
        """Launch a replica whose package is ready, or fail it with the reason it is not."""
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or error is not None:
            reason = "preparing the custom backend was cancelled" if error is None else str(error)
            self._failed(local, reason, log_tail=getattr(error, "log_tail", None))
            return
        assert isinstance(local.engine, CustomBackendEngine)
        local.engine = local.engine.with_install(task.result())
        await self._launch(local)

    def _start_engine(self, spec: LaunchSpec) -> None:
        assert self.runtime is not None
        with self._engine_starts:
            if self._engines_stopped_for_good:
                raise LaunchError("the agent is stopping for good")
            self.runtime.start(spec)

    def stop_engines(self) -> int:
        """Stop every engine this agent's runtime runs and start none after: the agent is going
        away for good. Returns how many engines it stopped. Blocking; call it in a thread."""
        with self._engine_starts:
            self._engines_stopped_for_good = True
        runtime = self.runtime
        if runtime is None:
            from worker_agent.runtimes.process import ProcessRuntime

            # Its records name no worker: the engines it runs as processes (all of them, or the
            # custom backends of a docker agent) are found all the same.
            runtime = ProcessRuntime(self.config.state_dir / "process")
            if self.config.runtime != "process":
                log.warning(
                    "stopping no containers: the agent never registered, so it cannot tell "
                    "which are its worker's (docker ps --filter label=inferencekey.worker)"
                )
        engines = list(runtime.running())
        if not engines:
            log.info("no engines to stop")
            return 0

        def stop(replica_id: str) -> bool:
            local = self.replicas.get(replica_id)
            about = (
                f"{local.assignment.project_slug}/{local.assignment.workload_slug}"
                if local is not None
                else "not assigned to this agent run"
            )
            where = (
                _replica_ids(local.assignment, self.worker_id)
                if local is not None
                else ids(replica_id=replica_id, worker_id=self.worker_id)
            )
            try:
                runtime.stop(replica_id, timeout_s=ENGINE_STOP_TIMEOUT_S)
            except Exception as error:
                log.error(
                    "could not stop engine for replica %s (%s): %s",
                    replica_id,
                    about,
                    error,
                    extra=where,
                )
                return False
            log.info("stopped engine for replica %s (%s)", replica_id, about, extra=where)
            return True

        # Side by side: each may take its whole timeout.
        with ThreadPoolExecutor(max_workers=min(len(engines), 16)) as pool:
            stopped = sum(pool.map(stop, engines))
        if stopped < len(engines):
            log.error(
                "stopped %d of %d engines; the others are still running", stopped, len(engines)
            )
        else:
            log.info("stopped %d engine(s) for good", stopped)
        return stopped

    def _failed(self, local: LocalReplica, reason: str, log_tail: str | None) -> None:
        cfg = self.config
        local.backoff_s = min(
            cfg.restart_backoff_max_s, max(cfg.restart_backoff_initial_s, local.backoff_s * 2)
        )
        local.restart_at = time.monotonic() + local.backoff_s
        local.state = ReplicaState.FAILED
        local.reason = f"{reason}; restarting in {local.backoff_s:.0f}s"
        local.log_tail = log_tail
        local.ready_since = None
        log.warning(
            "replica %s failed: %s",
            local.assignment.id,
            local.reason,
            extra=_replica_ids(local.assignment, self.worker_id),
        )
        self._changed.set()

    async def _check(self, local: LocalReplica, engine_now: RunningEngine | None) -> None:
        assert self.runtime is not None
        if local.install_task is not None:
            if local.install_task.done():
                task, local.install_task = local.install_task, None
                await self._installed(local, task)
            return
        if local.state == ReplicaState.FAILED:
            if local.restart_at is not None and time.monotonic() >= local.restart_at:
                local.restarts += 1
                assignment = local.assignment
                self.metrics.engine_restarts.labels(
                    assignment.project_slug, assignment.workload_slug
                ).inc()
                if isinstance(local.engine, CustomBackendEngine):
                    # Check its package again (at once when it is complete; rebuilt if not).
                    local.engine = CustomBackendEngine(local.engine.ref)
                await self._launch(local)
            return
        if engine_now is None or not engine_now.alive:
            code = engine_now.exit_code if engine_now else None
            tail = await asyncio.to_thread(
                self.runtime.log_tail, local.assignment.id, LOG_TAIL_LINES
            )
            last_line = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
            what = (
                f"engine exited with code {code}" if code is not None else "engine is not running"
            )
            self._failed(local, f"{what}: {last_line}" if last_line else what, log_tail=tail)
            return
        base_url = f"http://127.0.0.1:{local.port}"
        if local.state == ReplicaState.STARTING:
            await self._progress_startup(local, base_url)
            return
        healthy = await local.engine.ready_check(base_url, self._engine_http)
        local.health_failures = 0 if healthy else local.health_failures + 1
        if healthy:
            local.engine_load = await local.engine.load(base_url, self._engine_http)
        if local.health_failures >= READY_HEALTH_FAILURES:
            local.state = ReplicaState.STARTING
            local.reason = "health check failing; waiting for the engine"
            local.ready_since = None
            self._changed.set()
        elif local.ready_since and time.monotonic() - local.ready_since > STABLE_AFTER_S:
            local.backoff_s = 0.0

    async def _progress_startup(self, local: LocalReplica, base_url: str) -> None:
        if local.prepare_task is None:
            local.prepare_task = asyncio.create_task(
                local.engine.prepare(base_url, local.assignment.model_name, self._engine_http)
            )
        if not local.prepare_task.done():
            return
        if error := local.prepare_task.exception():
            self._failed(local, f"preparing the engine failed: {error}", log_tail=None)
            return
        if await local.engine.ready_check(base_url, self._engine_http):
            local.state, local.reason = ReplicaState.READY, None
            local.ready_since = time.monotonic()
            log.info(
                "replica %s is ready on port %d",
                local.assignment.id,
                local.port,
                extra=_replica_ids(local.assignment, self.worker_id),
            )
            self._changed.set()

    async def _watch_boot(self, local: LocalReplica) -> None:
        """While the engine boots, ask it every tenth of a second whether it is ready, and run a
        converge pass as soon as it is: held requests wait for that replica (scale-from-zero),
        and the converge loop's own health checks come only every `health_interval_s`."""
        base_url = f"http://127.0.0.1:{local.port}"
        while (
            local.state == ReplicaState.STARTING and self.replicas.get(local.assignment.id) is local
        ):
            with contextlib.suppress(Exception):
                if await local.engine.ready_check(base_url, self._engine_http):
                    self._desired_changed.set()
                    return
            await asyncio.sleep(BOOT_POLL_S)

    async def _stop(self, replica_id: str) -> None:
        assert self.runtime is not None
        local = self.replicas.pop(replica_id)
        if local.install_task is not None:
            local.install_task.cancel()
        if local.prepare_task is not None:
            local.prepare_task.cancel()
        if local.boot_watch is not None:
            local.boot_watch.cancel()
        await asyncio.to_thread(self.runtime.stop, replica_id)
        self.ports.release(local.port)
        log.info("stopped %s", replica_id, extra=ids(replica_id=replica_id))
        self._changed.set()


def _describe(error: Exception) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        try:
            message = error.response.json().get("message")
        except ValueError:
            message = error.response.text[:200]
        return f"HTTP {error.response.status_code}: {message}"
    return f"{type(error).__name__}: {error}"


def _replica_ids(assignment: ReplicaAssignment, worker_id: str | None) -> dict[str, object]:
    return ids(
        project=assignment.project_slug,
        workload=assignment.workload_slug,
        workload_id=assignment.workload_id,
        replica_id=assignment.id,
        worker_id=worker_id,
    )


def run(config: AgentConfig) -> None:
    """Run the agent until SIGTERM or SIGINT. Engines keep running, and a restart adopts them,
    unless ``config.stop_engines_on_exit`` says to stop them too."""
    configure_logging(config.log_format)
    forbid_dumping()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await Agent(config).run()
        if config.stop_engines_on_exit:
            log.info("agent stopped for good, with its engines")
        else:
            log.info("agent stopped; engines left running for the next agent run to adopt")

    try:
        import uvloop  # the proxy relays every request: the faster loop is worth it
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
