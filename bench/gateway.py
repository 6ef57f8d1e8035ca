"""What the data-plane gateway costs: the same instant upstream, called through each path.

    python bench/gateway.py [--quick] [--json out.json] [--no-install]

Paths, all ending in ``/v1/chat/completions`` and started by this script on 127.0.0.1:

- ``direct``: the upstream itself (``bench/upstream.py``, which answers at once: only proxy cost
  shows);
- ``nginx``: the near-limit reference (Debian's nginx, ``proxy_buffering off``, upstream keepalive);
- ``litellm``: the LiteLLM proxy, the peer users would otherwise pick;
- ``agent`` and ``manager+agent``: InferenceKey's own, from `start_inferencekey_paths`.

Per path: p50/p99 latency at concurrency 1 and requests per second at concurrency 32 (wrk, with
a Lua ``done()`` hook printing exact percentiles), and time to first chunk and total time of a
streamed response (sequential requests from a raw-socket client). Then the cost added over
``direct``, the ratios against direct, nginx and LiteLLM, and the issue's targets for the
Manager + agent path.

What it installs when missing (unless ``--no-install``): ``wrk`` and ``nginx-light`` with apt, and
``litellm[proxy]`` with pip into its own virtual environment (``INFERENCEKEY_BENCH_LITELLM_VENV``,
default ``~/.cache/inferencekey-bench/litellm-venv``; about a minute), because its pins would
otherwise move packages the platform runs on. Every server it starts is stopped when it exits,
Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import httptools

from worker_agent.config import DEFAULT_PORT_RANGE

BENCH_DIR = Path(__file__).resolve().parent
MODEL = "bench-model"
CHAT_PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say hello."}]
CHAT_BODY = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 16})
STREAM_BODY = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "stream": True})
LITELLM_VENV = Path(
    os.environ.get(
        "INFERENCEKEY_BENCH_LITELLM_VENV",
        Path.home() / ".cache" / "inferencekey-bench" / "litellm-venv",
    )
)
# The issue's figures for this machine kind (2 cores), printed beside ours for context.
ISSUE_FIGURES = (
    "direct ≈ 0.3 ms p50, ≈ 27,000 req/s; nginx adds ≈ 0.08 ms, keeps ≈ 19,000 req/s; "
    "LiteLLM adds ≈ 11 ms p50, ≈ 14 ms to the first chunk, ≈ 100 req/s"
)
REFERENCES = ("direct", "nginx", "litellm")
TARGET_PATH = "manager+agent"
# wrk's own output line from the Lua done() hook (see WRK_SCRIPT).
WRK_RESULT_PREFIX = "WRK_RESULT "
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "{prefix}{{\\"requests\\":%d,\\"duration_us\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d,"
    .. "\\"mean_us\\":%.1f,\\"max_us\\":%d,\\"errors\\":{{\\"connect\\":%d,\\"read\\":%d,"
    .. "\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d}}}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class BenchError(Exception):
    """A path or a tool that cannot be set up or measured; the message says why."""


@dataclass(frozen=True)
class Settings:
    warmup_s: float
    duration_s: float
    stream_requests: int
    chunks: int
    chunk_gap_ms: float
    # One wrk thread: on 2 cores a second one only takes CPU from the servers being measured.
    wrk_threads: int = 1
    concurrency: int = 32
    install: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        if args.quick:
            return cls(1.0, 3.0, 50, args.chunks, args.chunk_gap_ms, install=args.install)
        return cls(2.0, 8.0, 200, args.chunks, args.chunk_gap_ms, install=args.install)


@dataclass(frozen=True)
class BenchPath:
    """Where a path's requests go: ``base_url + CHAT_PATH``, with these headers."""

    name: str
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + CHAT_PATH


@dataclass
class PathResult:
    name: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests_per_s: float | None = None
    first_chunk_ms: float | None = None
    stream_total_ms: float | None = None
    problems: list[str] = field(default_factory=list)
    raw: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Processes


class Servers:
    """The processes this run starts; all stopped on exit, Ctrl-C and SIGTERM included."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # Run after the processes are stopped (e.g. dropping the bench database).
        self.cleanups: list[Callable[[], object]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.work_dir / f"{name}.log").open("wb")
        # A session of its own: the terminal's Ctrl-C reaches us only, and we stop the whole
        # group (LiteLLM and nginx have children).
        self.processes[name] = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=self.work_dir,
            start_new_session=True,
        )
        log.close()

    def exited(self, name: str) -> int | None:
        return self.processes[name].poll()

    def log_tail(self, name: str, lines: int = 15) -> str:
        text = (self.work_dir / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=10)

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)
        while self.cleanups:
            with contextlib.suppress(Exception):
                self.cleanups.pop()()

    def __enter__(self) -> Servers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def free_port() -> int:
    """A free loopback port outside the agent's default engine range, which the agent refuses as
    its own listen port."""
    low, high = DEFAULT_PORT_RANGE
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if not low <= port <= high:
            return port


def wait_until_ready(servers: Servers, name: str, url: str, timeout_s: float) -> float:
    """Poll ``url`` until it answers 200; return the seconds it took."""
    started = time.perf_counter()
    deadline = started + timeout_s
    while time.perf_counter() < deadline:
        if servers.exited(name) is not None:
            raise BenchError(f"{name} exited at start:\n{servers.log_tail(name)}")
        try:
            if LoopbackClient(url, timeout_s=2).request("GET", "").status == 200:
                return time.perf_counter() - started
        except (OSError, BenchError, httptools.HttpParserError):
            pass
        time.sleep(0.2)
    raise BenchError(f"{name} not ready after {timeout_s:.0f} s:\n{servers.log_tail(name)}")


# ---------------------------------------------------------------------------------------------
# Installing the tools


def apt_install(package: str, settings: Settings) -> None:
    if not settings.install:
        raise BenchError(f"{package} is not installed (and --no-install was given)")
    print(f"installing {package} with apt-get ...", flush=True)
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")


def ensure_wrk(settings: Settings) -> str:
    if shutil.which("wrk") is None:
        apt_install("wrk", settings)
    return _version_line(["wrk", "-v"])


def ensure_nginx(settings: Settings) -> str:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        apt_install("nginx-light", settings)
    return shutil.which("nginx") or "/usr/sbin/nginx"


def ensure_litellm(settings: Settings) -> Path:
    """The ``litellm`` CLI from its own venv, installed there on first use."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if executable.exists():
        return executable
    if not settings.install:
        raise BenchError(f"{executable} is missing (and --no-install was given)")
    print(f"installing litellm[proxy] into {LITELLM_VENV} (about a minute) ...", flush=True)
    started = time.perf_counter()
    steps = (
        [sys.executable, "-m", "venv", str(LITELLM_VENV)],
        [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
    )
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    print(f"installed litellm[proxy] in {time.perf_counter() - started:.0f} s", flush=True)
    return executable


def _version_line(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    output = (done.stdout + done.stderr).strip()
    return output.splitlines()[0] if output else "unknown"


# ---------------------------------------------------------------------------------------------
# The paths


def start_upstream(servers: Servers, settings: Settings) -> BenchPath:
    port = free_port()
    servers.start(
        "upstream",
        [
            sys.executable,
            str(BENCH_DIR / "upstream.py"),
            f"--port={port}",
            f"--chunks={settings.chunks}",
            f"--chunk-gap-ms={settings.chunk_gap_ms}",
        ],
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_until_ready(servers, "upstream", base_url + "/health", timeout_s=30)
    return BenchPath("direct", base_url)


NGINX_CONFIG = """\
# In the foreground, under our subprocess. One worker: on 2 cores the upstream and the load
# generator need the other one.
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;

events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    keepalive_requests 1000000;

    upstream bench_upstream {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(servers: Servers, upstream: BenchPath, settings: Settings) -> BenchPath:
    nginx = ensure_nginx(settings)
    work = servers.work_dir
    port = free_port()
    config = NGINX_CONFIG.format(work=work, upstream=urlsplit(upstream.base_url).netloc, port=port)
    (work / "nginx.conf").write_text(config)
    servers.start(
        "nginx",
        [
            nginx,
            "-p",
            str(work),
            "-e",
            str(work / "nginx-error.log"),
            "-c",
            str(work / "nginx.conf"),
        ],
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_until_ready(servers, "nginx", base_url + "/health", timeout_s=30)
    return BenchPath("nginx", base_url)


def start_litellm(servers: Servers, upstream: BenchPath, settings: Settings) -> BenchPath:
    litellm = ensure_litellm(settings)
    # LiteLLM refuses to start without a master key; a real one also makes it check auth the
    # way a deployment would, as the Manager checks ik_live_ keys.
    master_key = "sk-bench-" + secrets.token_hex(32)
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": upstream.base_url + "/v1",
                    "api_key": "sk-bench-upstream-dummy",
                },
            }
        ],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"telemetry": False},
    }
    # JSON is YAML: no yaml module needed on our side.
    config_path = servers.work_dir / "litellm.yaml"
    config_path.write_text(json.dumps(config, indent=2))
    port = free_port()
    servers.start(
        "litellm",
        [
            str(litellm),
            "--config",
            str(config_path),
            "--num_workers",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        # No network here: the bundled cost map instead of fetching it, no telemetry.
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"},
    )
    base_url = f"http://127.0.0.1:{port}"
    took = wait_until_ready(servers, "litellm", base_url + "/health/liveliness", timeout_s=180)
    print(f"litellm ready in {took:.1f} s", flush=True)
    return BenchPath("litellm", base_url, {"Authorization": f"Bearer {master_key}"})


# The agent runs the upstream as its "engine": `llama-server ... --port P` starts bench/upstream.py
# on the port the agent assigned, so the agent path is the real agent proxy in front of it.
ENGINE_WRAPPER = """\
#!/bin/sh
while [ $# -gt 0 ]; do
    case "$1" in --port) port="$2"; shift ;; esac
    shift
done
exec {python} {upstream} --port "$port" --chunks {chunks} --chunk-gap-ms {gap}
"""
BENCH_DATABASE_SERVER = os.environ.get(
    "INFERENCEKEY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _sql(url: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    import asyncpg

    async def run() -> list[tuple[object, ...]]:
        connection = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await connection.fetch(statement, *args)]
        finally:
            await connection.close()

    import asyncio

    return asyncio.run(run())


def _database_for_bench(servers: Servers) -> str:
    """A fresh database on the local Postgres, dropped when the run ends."""
    name = f"ik_bench_{os.getpid()}_{secrets.token_hex(3)}"
    _sql(BENCH_DATABASE_SERVER, f'CREATE DATABASE "{name}"')
    servers.cleanups.append(
        lambda: _sql(BENCH_DATABASE_SERVER, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    )
    parts = urlsplit(BENCH_DATABASE_SERVER)
    return parts._replace(path=f"/{name}").geturl()


def _admin(
    base_url: str, admin_token: str, path: str, body: dict[str, object]
) -> dict[str, object]:
    import httpx

    response = httpx.post(
        base_url + path, json=body, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
    )
    if response.status_code != 201:
        raise BenchError(f"{path}: {response.status_code} {response.text}")
    return dict(response.json())


def _stop_engines(state_dir: Path) -> None:
    from worker_agent.runtimes.process import ProcessRuntime

    runtime = ProcessRuntime(state_dir)
    for replica_id in runtime.running():
        runtime.stop(replica_id, timeout_s=5)


def start_inferencekey_paths(
    upstream_url: str,
    servers: Servers,
    settings: Settings,
    manager_env: dict[str, str] | None = None,
) -> dict[str, BenchPath]:
    """InferenceKey's own paths: a Manager and a real agent (process runtime) in front of an
    instance of the same upstream program, which the agent launches as the workload's engine."""
    import httpx
    from inferencekey import Backend, ManagementClient, WorkloadSpec

    work = servers.work_dir
    database_url = _database_for_bench(servers)
    admin_token = f"ik_admin_{secrets.token_hex(4)}_{secrets.token_hex(32)}"
    manager_port = free_port()
    manager_url = f"http://127.0.0.1:{manager_port}"
    servers.start(
        "manager",
        [sys.executable, "-m", "ik_command", "manager", "--port", str(manager_port)],
        env={
            "INFERENCEKEY_DATABASE_URL": database_url,
            "INFERENCEKEY_ADMIN_TOKEN": admin_token,
            "INFERENCEKEY_DATA_DIR": str(work / "manager-data"),
            "INFERENCEKEY_HEARTBEAT_INTERVAL_S": "1",
            **(manager_env or {}),
        },
    )
    wait_until_ready(servers, "manager", manager_url + "/healthz", timeout_s=60)
    _admin(manager_url, admin_token, "/api/admin/projects", {"slug": "bench"})
    sdk_token = _admin(manager_url, admin_token, "/api/admin/tokens", {"project": "bench"})["token"]
    live_key = _admin(
        manager_url, admin_token, "/api/admin/keys", {"project": "bench", "all": True}
    )["token"]
    worker = _admin(manager_url, admin_token, "/api/admin/workers", {"name": "bench"})

    wrapper = work / "llama-server"
    wrapper.write_text(
        ENGINE_WRAPPER.format(
            python=sys.executable,
            upstream=BENCH_DIR / "upstream.py",
            chunks=settings.chunks,
            gap=settings.chunk_gap_ms,
        )
    )
    wrapper.chmod(0o755)
    models = work / "models"
    models.mkdir(exist_ok=True)
    agent_port = free_port()
    # Runs after the agent is stopped: its engine outlives it on purpose, but not the bench.
    servers.cleanups.append(lambda: _stop_engines(work / "agent-state" / "process"))
    servers.start(
        "agent",
        [
            sys.executable,
            "-m",
            "ik_command",
            "agent",
            "--manager",
            manager_url,
            "--runtime",
            "process",
            "--state-dir",
            str(work / "agent-state"),
            "--model-dir",
            str(models),
            "--binary",
            f"llama-server={wrapper}",
            "--listen",
            f"127.0.0.1:{agent_port}",
            "--advertise-url",
            f"http://127.0.0.1:{agent_port}",
        ],
        env={"INFERENCEKEY_AGENT_TOKEN": str(worker["token"])},
    )
    with ManagementClient(base_url=manager_url, sdk_token=str(sdk_token), project="bench") as mgmt:
        mgmt.ensure(
            WorkloadSpec(
                name="echo",
                slug="echo",
                model=MODEL,
                backend=Backend.LLAMACPP,
                command=f"llama-server -m {models}/bench.gguf",
            )
        )
        mgmt.wait_until_ready("echo", timeout=120, silent=True)
    gateway = BenchPath(
        "manager+agent",
        f"{manager_url}/endpoint/bench/echo",
        {"Authorization": f"Bearer {live_key}"},
    )
    deadline = time.monotonic() + 30
    while (
        httpx.post(gateway.chat_url, content=CHAT_BODY, headers=gateway.headers).status_code != 200
    ):
        if time.monotonic() > deadline:
            raise BenchError("the gateway never routed to the bench workload")
        time.sleep(0.2)
    [(secret,)] = _sql(
        database_url, "SELECT gateway_secret FROM workers WHERE id = $1", worker["id"]
    )
    agent = BenchPath(
        "agent",
        f"http://127.0.0.1:{agent_port}/endpoint/bench/echo",
        {"X-InferenceKey-Gateway": str(secret)},
    )
    return {"agent": agent, "manager+agent": gateway}


# ---------------------------------------------------------------------------------------------
# A cheap HTTP client, for checks and streamed timings


@dataclass
class Response:
    status: int
    body: bytes
    first_body_s: float
    total_s: float


class _ResponseCollector:
    """httptools callbacks: the body, and when its first byte arrived."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_body_at: float | None = None
        self.parts: list[bytes] = []
        self.complete = False

    def on_body(self, body: bytes) -> None:
        if self.first_body_at is None:
            self.first_body_at = time.perf_counter()
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class LoopbackClient:
    """HTTP/1.1 keep-alive on a plain socket, parsed by httptools.

    Costs a few microseconds per request where httpx costs hundreds, so streamed timings show
    the path rather than the client.
    """

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout_s: float = 30):
        parts = urlsplit(url)
        if parts.hostname != "127.0.0.1":
            raise ValueError(f"only 127.0.0.1 is benchmarked, not {parts.hostname}")
        self.address = ("127.0.0.1", parts.port or 80)
        self.path = parts.path or "/"
        self.headers = headers or {}
        self.timeout_s = timeout_s
        self.sock: socket.socket | None = None

    def request(self, method: str, body: str) -> Response:
        message = self._message(method, body.encode())
        reused = self.sock is not None
        try:
            return self._exchange(message)
        except (ConnectionError, BenchError):
            self.close()
            if not reused:
                raise
            # The server closed an idle keep-alive connection: once more on a new one.
            return self._exchange(message)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _message(self, method: str, body: bytes) -> bytes:
        lines = [f"{method} {self.path} HTTP/1.1", f"Host: {self.address[0]}:{self.address[1]}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def _exchange(self, message: bytes) -> Response:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout_s)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        deadline = started + self.timeout_s
        collector = _ResponseCollector(started)
        parser = httptools.HttpResponseParser(collector)
        self.sock.sendall(message)
        while not collector.complete:
            if time.perf_counter() > deadline:
                raise BenchError(f"no complete response in {self.timeout_s:.0f} s")
            data = self.sock.recv(65536)
            if not data:
                raise BenchError("connection closed before the response ended")
            parser.feed_data(data)
        finished = time.perf_counter()
        if not parser.should_keep_alive():
            self.close()
        first_body_at = collector.first_body_at or finished
        return Response(
            status=parser.get_status_code(),
            body=b"".join(collector.parts),
            first_body_s=first_body_at - started,
            total_s=finished - started,
        )


# ---------------------------------------------------------------------------------------------
# Measurements


def check_path(path: BenchPath) -> None:
    """One plain and one streamed request: a path that answers errors fast must not score."""
    client = LoopbackClient(path.chat_url, path.headers)
    try:
        plain = client.request("POST", CHAT_BODY)
        if plain.status != 200 or not json.loads(plain.body).get("choices"):
            raise BenchError(f"plain request: HTTP {plain.status} {plain.body[:300]!r}")
        streamed = client.request("POST", STREAM_BODY)
        events = streamed.body.count(b"data:")
        if streamed.status != 200 or b"data: [DONE]" not in streamed.body or events < 2:
            raise BenchError(f"streamed request: HTTP {streamed.status} {streamed.body[:300]!r}")
    finally:
        client.close()


def run_wrk(
    path: BenchPath, script: Path, connections: int, duration_s: float, settings: Settings
) -> dict[str, object]:
    threads = min(settings.wrk_threads, connections)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "10s"]
    for name, value in path.headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv += ["-s", str(script), path.chat_url]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith(WRK_RESULT_PREFIX):
            result: dict[str, object] = json.loads(line.removeprefix(WRK_RESULT_PREFIX))
            return result
    raise BenchError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def _wrk_problems(label: str, result: dict[str, object]) -> list[str]:
    errors = result["errors"]
    assert isinstance(errors, dict)
    failed = {kind: count for kind, count in errors.items() if count}
    return [f"{label}: wrk counted errors {failed}"] if failed else []


def measure_latency(path: BenchPath, script: Path, settings: Settings, result: PathResult) -> None:
    """p50/p99 at concurrency 1: one request in flight, so the path's own latency."""
    wrk = run_wrk(path, script, 1, settings.duration_s, settings)
    result.p50_ms = _us_to_ms(wrk["p50_us"])
    result.p99_ms = _us_to_ms(wrk["p99_us"])
    result.raw["wrk_c1"] = wrk
    result.problems += _wrk_problems("c=1", wrk)


def measure_throughput(
    path: BenchPath, script: Path, settings: Settings, result: PathResult
) -> None:
    """Requests per second at concurrency 32: what the path sustains with both cores busy."""
    wrk = run_wrk(path, script, settings.concurrency, settings.duration_s, settings)
    requests, duration_us = wrk["requests"], wrk["duration_us"]
    assert isinstance(requests, int) and isinstance(duration_us, int)
    result.requests_per_s = requests / (duration_us / 1e6)
    result.raw[f"wrk_c{settings.concurrency}"] = wrk
    result.problems += _wrk_problems(f"c={settings.concurrency}", wrk)


def measure_stream(path: BenchPath, settings: Settings, result: PathResult) -> None:
    """Sequential streamed requests: p50 time to the first body chunk and to the last byte."""
    client = LoopbackClient(path.chat_url, path.headers)
    first_chunk_ms: list[float] = []
    total_ms: list[float] = []
    try:
        for index in range(settings.stream_requests + 5):
            response = client.request("POST", STREAM_BODY)
            if response.status != 200:
                raise BenchError(f"streamed request {index}: HTTP {response.status}")
            if index >= 5:  # the first few warm connections and caches
                first_chunk_ms.append(response.first_body_s * 1000)
                total_ms.append(response.total_s * 1000)
    finally:
        client.close()
    result.first_chunk_ms = statistics.median(first_chunk_ms)
    result.stream_total_ms = statistics.median(total_ms)
    result.raw["stream_first_chunk_ms"] = [round(value, 4) for value in first_chunk_ms]
    result.raw["stream_total_ms"] = [round(value, 4) for value in total_ms]


def measure_path(path: BenchPath, script: Path, settings: Settings) -> PathResult:
    print(f"measuring {path.name} ({path.chat_url}) ...", flush=True)
    result = PathResult(path.name)
    try:
        check_path(path)
        run_wrk(path, script, settings.concurrency, settings.warmup_s, settings)  # warm-up
        measure_latency(path, script, settings, result)
        measure_throughput(path, script, settings, result)
        measure_stream(path, settings, result)
    except (
        BenchError,
        OSError,
        ValueError,
        httptools.HttpParserError,
        subprocess.TimeoutExpired,
    ) as error:
        result.problems.append(f"not measured: {error}")
    for problem in result.problems:
        print(f"  {path.name}: {problem}", flush=True)
    return result


def _us_to_ms(value: object) -> float:
    assert isinstance(value, int | float)
    return value / 1000


# ---------------------------------------------------------------------------------------------
# Report

METRICS = (
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("requests_per_s", "req/s c=32"),
    ("first_chunk_ms", "1st chunk ms"),
    ("stream_total_ms", "stream ms"),
)
LATENCY_METRICS = ("p50_ms", "p99_ms", "first_chunk_ms", "stream_total_ms")


@dataclass(frozen=True)
class Target:
    label: str
    metric: str
    limit: float
    added: bool  # compare the cost added over direct, not the raw figure
    at_least: bool = False


TARGETS = (
    Target("added p50 at c=1", "p50_ms", 1.0, added=True),
    Target("added p99 at c=1", "p99_ms", 3.0, added=True),
    Target("added time to first chunk", "first_chunk_ms", 1.0, added=True),
    Target("req/s at c=32", "requests_per_s", 5000, added=False, at_least=True),
)


def _format(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if metric == "requests_per_s" else f"{value:.3f}"


def _format_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}x" if value >= 100 else f"{value:.3g}x"


def _table(title: str, rows: list[tuple[str, list[str]]], headers: list[str]) -> str:
    lines = [title, f"  {'path':<15}" + "".join(f"{header:>14}" for header in headers)]
    lines += [f"  {name:<15}" + "".join(f"{cell:>14}" for cell in cells) for name, cells in rows]
    return "\n".join(lines)


def _value(result: PathResult, metric: str) -> float | None:
    value = getattr(result, metric)
    return value if isinstance(value, float) else None


def added_over(result: PathResult, reference: PathResult, metric: str) -> float | None:
    value, base = _value(result, metric), _value(reference, metric)
    return None if value is None or base is None else value - base


def ratio(result: PathResult, reference: PathResult, metric: str) -> float | None:
    value, base = _value(result, metric), _value(reference, metric)
    return None if value is None or not base else value / base


def figures_table(results: dict[str, PathResult]) -> str:
    rows = [
        (name, [_format(metric, _value(result, metric)) for metric, _ in METRICS])
        for name, result in results.items()
    ]
    return _table("Figures", rows, [label for _, label in METRICS])


def added_table(results: dict[str, PathResult]) -> str:
    direct = results["direct"]
    rows = [
        (name, [_format(metric, added_over(result, direct, metric)) for metric in LATENCY_METRICS])
        for name, result in results.items()
        if name != "direct"
    ]
    labels = [label for metric, label in METRICS if metric in LATENCY_METRICS]
    return _table("Added over direct (ms)", rows, labels)


def ratio_tables(results: dict[str, PathResult]) -> list[str]:
    """Latency ratios (>1: slower) and req/s ratios (<1: fewer) against each reference."""
    tables = []
    for reference_name in REFERENCES:
        reference = results.get(reference_name)
        if reference is None or reference.p50_ms is None:
            continue
        rows = []
        for name, result in results.items():
            if name == reference_name:
                continue
            cells = [ratio(result, reference, metric) for metric, _ in METRICS]
            rows.append((name, [_format_ratio(cell) for cell in cells]))
        title = f"Ratios vs {reference_name}"
        tables.append(_table(title, rows, [label for _, label in METRICS]))
    return tables


def evaluate_targets(results: dict[str, PathResult]) -> list[dict[str, object]]:
    target_result = results.get(TARGET_PATH)
    verdicts: list[dict[str, object]] = []
    for target in TARGETS:
        value = None
        if target_result is not None:
            value = (
                added_over(target_result, results["direct"], target.metric)
                if target.added
                else _value(target_result, target.metric)
            )
        verdict: dict[str, object] = {"target": target.label, "limit": target.limit}
        if value is None:
            verdict |= {"value": None, "verdict": "NOT MEASURED"}
        else:
            margin = value - target.limit if target.at_least else target.limit - value
            verdict |= {"value": value, "verdict": "PASS" if margin >= 0 else "MISS", "by": margin}
        verdicts.append(verdict)
    return verdicts


def targets_text(verdicts: list[dict[str, object]]) -> str:
    lines = [f"Targets for {TARGET_PATH}"]
    for verdict, target in zip(verdicts, TARGETS, strict=True):
        unit = "" if target.metric == "requests_per_s" else " ms"
        sign = ">=" if target.at_least else "<="
        wanted = f"{target.label} {sign} {_format(target.metric, target.limit)}{unit}"
        value = verdict["value"]
        if not isinstance(value, float):
            lines.append(f"  {wanted:<40} NOT MEASURED")
            continue
        by = verdict["by"]
        assert isinstance(by, float)
        got = _format(target.metric, value) + unit
        margin = _format(target.metric, abs(by)) + unit
        lines.append(f"  {wanted:<40} {got:>12}  {verdict['verdict']} by {margin}")
    return "\n".join(lines)


def print_report(
    results: dict[str, PathResult], verdicts: list[dict[str, object]], environment: dict[str, str]
) -> None:
    print()
    print("Set-up")
    print("\n".join(f"  {key}: {value}" for key, value in environment.items()))
    print(f"  the issue's figures on this machine kind: {ISSUE_FIGURES}")
    print()
    print(figures_table(results))
    if "direct" in results and results["direct"].p50_ms is not None:
        print()
        print(added_table(results))
    for table in ratio_tables(results):
        print()
        print(table)
    print()
    print(targets_text(verdicts))
    problems = [f"{name}: {problem}" for name, r in results.items() for problem in r.problems]
    if problems:
        print()
        print("Problems")
        print("\n".join(f"  {problem}" for problem in problems))


# ---------------------------------------------------------------------------------------------
# Run


def start_paths(servers: Servers, settings: Settings) -> tuple[list[BenchPath], list[str]]:
    """Every path that can run here, and why the others cannot."""
    upstream = start_upstream(servers, settings)
    paths = [upstream]
    unavailable = []
    starters: tuple[tuple[str, Callable[[], list[BenchPath]]], ...] = (
        ("nginx", lambda: [start_nginx(servers, upstream, settings)]),
        ("litellm", lambda: [start_litellm(servers, upstream, settings)]),
        (
            "inferencekey",
            lambda: [*start_inferencekey_paths(upstream.base_url, servers, settings).values()],
        ),
    )
    for name, start in starters:
        try:
            paths += start()
        except (BenchError, OSError, subprocess.TimeoutExpired) as error:
            unavailable.append(f"{name}: {error}")
            print(f"{name} is not measured: {error}", flush=True)
    return paths, unavailable


def describe_environment(settings: Settings, load_at_start: tuple[float, ...]) -> dict[str, str]:
    litellm_python = LITELLM_VENV / "bin" / "python"
    litellm_version = "not installed"
    if litellm_python.exists():
        litellm_version = _version_line(
            [
                str(litellm_python),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ]
        )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return {
        "cpus": str(os.cpu_count()),
        # Other work on the machine shows in p99 and req/s first: say how busy it was.
        "load average at start (1, 5, 15 min)": " ".join(f"{load:.2f}" for load in load_at_start),
        "wrk": " ".join(_version_line(["wrk", "-v"]).split()[:2]),
        "nginx": _version_line([nginx, "-v"]) if Path(nginx).exists() else "not installed",
        "litellm": litellm_version,
        "upstream": f"{settings.chunks} chunks {settings.chunk_gap_ms:g} ms apart",
        "wrk runs": (
            f"{settings.duration_s:g} s after {settings.warmup_s:g} s warm-up, "
            f"{settings.wrk_threads} thread"
        ),
        "streamed requests per path": str(settings.stream_requests),
    }


def run(settings: Settings, json_path: Path | None) -> int:
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ik-bench-") as work:
        work_dir = Path(work)
        # nginx started by root runs its worker as "nobody", which must be able to enter it.
        os.chmod(work_dir, 0o755)
        ensure_wrk(settings)
        script = work_dir / "post.lua"
        script.write_text(WRK_SCRIPT.format(body=CHAT_BODY, prefix=WRK_RESULT_PREFIX))
        with Servers(work_dir) as servers:
            paths, unavailable = start_paths(servers, settings)
            results = {path.name: measure_path(path, script, settings) for path in paths}
        environment = describe_environment(settings, load_at_start)
    verdicts = evaluate_targets(results)
    print_report(results, verdicts, environment)
    if unavailable:
        print("\n".join(["", "Not started", *(f"  {reason}" for reason in unavailable)]))
    if json_path is not None:
        report = {
            "settings": asdict(settings),
            "environment": environment,
            "paths": {name: asdict(result) for name, result in results.items()},
            "targets": verdicts,
            "not_started": unavailable,
        }
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {json_path}")
    return 0


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # Turn SIGTERM into SystemExit so that the `with Servers()` block stops what it started.
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs, 50 streamed requests")
    parser.add_argument("--json", type=Path, help="write the raw numbers to this file")
    parser.add_argument(
        "--no-install", dest="install", action="store_false", help="never apt/pip install"
    )
    parser.add_argument("--chunks", type=int, default=10, help="SSE events per streamed answer")
    parser.add_argument("--chunk-gap-ms", type=float, default=2.0, help="pause between events")
    args = parser.parse_args()
    if args.chunks < 2:
        parser.error("--chunks must be at least 2 (a role event and a finish event)")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return run(Settings.from_args(args), args.json)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
