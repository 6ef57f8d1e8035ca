"""The ``inferencekey`` command: run the Manager or a worker agent, and administer the Manager."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from manager.embedded_db import EmbeddedPostgres
from manager.settings import Settings, default_data_dir
from worker_agent.logs import LOG_FORMATS, configure_logging, log_format

if TYPE_CHECKING:
    from worker_agent.config import AgentConfig

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
# Open streams (SSE, long generations) must not keep a stopping Manager alive forever.
GRACEFUL_SHUTDOWN_SECONDS = 10

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inferencekey`` console script."""
    args = parse_args(argv)
    command: Command = args.command
    return command(args)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; exits 2 on a usage error, as argparse does."""
    return _parser().parse_args(argv)


# --- inferencekey manager -------------------------------------------------------------------


def run_manager(args: argparse.Namespace) -> int:
    # Here, not at the top: `inferencekey admin` need not load Alembic.
    from manager.db.migrate import SchemaTooNew, refuse_newer_schema

    if not _configure_logging(args):
        return 2
    settings = Settings.from_env(
        host=args.host, port=args.port, database_url=args.database_url, data_dir=args.data_dir
    )
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_cleanly)
    embedded: EmbeddedPostgres | None = None
    try:
        if settings.database_url is None:
            embedded = EmbeddedPostgres(settings.data_dir)
            settings.database_url = embedded.start()
        if settings.run_migrations:
            refuse_newer_schema(settings.database_url)
        _serve(settings, embedded)
    except SchemaTooNew as too_new:
        print(f"error: {too_new}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if embedded is not None:
            embedded.stop()
        signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    # Unwinds through run_manager's finally, which stops the embedded database.
    raise SystemExit(0)


def _serve(settings: Settings, embedded: EmbeddedPostgres | None) -> None:
    # Imported here so that `inferencekey admin` does not load the server stack.
    import uvicorn

    from manager.app import create_app
    from worker_agent.http_server import uvicorn_options

    assert settings.database_url is not None
    app = create_app(settings)
    database = mask_password(settings.database_url)
    if embedded is not None and embedded.install is not None:
        server = embedded.install
        database += (
            f" (embedded PostgreSQL {server.major} from {server.source}, in {embedded.cluster_dir})"
        )
    print(
        f"InferenceKey Manager listening on http://{settings.host}:{settings.port}, "
        f"database {database}",
        flush=True,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        log_config=None,  # the handlers _configure_logging installed, in the chosen format
        # A line per request costs the gateway ~7% of its throughput; opt in with the variable.
        access_log=os.environ.get("INFERENCEKEY_ACCESS_LOG", "").strip() in ("1", "true", "yes"),
        **uvicorn_options(settings.server_limits),
    )


def mask_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` becomes ``postgresql://user:***@host/db``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


# --- inferencekey admin ---------------------------------------------------------------------


def create_project(args: argparse.Namespace) -> int:
    body = _without_none({"slug": args.slug, "name": args.name})
    return _call_admin_api(args, "POST", "/api/admin/projects", body=body)


def list_projects(args: argparse.Namespace) -> int:
    return _list(args, "/api/admin/projects", "projects", PROJECT_COLUMNS)


def create_token(args: argparse.Namespace) -> int:
    body = _without_none({"project": args.project, "read_only": args.read_only, "name": args.name})
    return _call_admin_api(args, "POST", "/api/admin/tokens", body=body)


def list_tokens(args: argparse.Namespace) -> int:
    params = _without_none({"project": args.project})
    return _list(args, "/api/admin/tokens", "tokens", TOKEN_COLUMNS, params=params)


def create_key(args: argparse.Namespace) -> int:
    grant: dict[str, Any] = {"all": True} if args.all else {"workloads": args.workloads}
    body = _without_none({"project": args.project, **grant, "name": args.name})
    return _call_admin_api(args, "POST", "/api/admin/keys", body=body)


def revoke_token(args: argparse.Namespace) -> int:
    return _call_admin_api(args, "DELETE", f"/api/admin/tokens/{args.token_id}")


def create_worker(args: argparse.Namespace) -> int:
    body = _without_none({"name": args.name, "project": args.project})
    return _call_admin_api(args, "POST", "/api/admin/workers", body=body)


def list_workers(args: argparse.Namespace) -> int:
    return _list(args, "/api/workers", "workers", WORKER_COLUMNS)


def list_gpu_resources(args: argparse.Namespace) -> int:
    return _list(args, "/api/gpu-resources", "gpu_resources", GPU_COLUMNS)


def list_workloads(args: argparse.Namespace) -> int:
    return _list(args, "/api/admin/workloads", "workloads", WORKLOAD_COLUMNS)


def show_status(args: argparse.Namespace) -> int:
    """The Manager, its workers and every workload's phase, at a glance."""
    base_url = _base_url(args)
    try:
        health = httpx.get(f"{base_url}/healthz", timeout=10.0)
    except httpx.TransportError as failure:
        print(f"error: could not reach the Manager at {base_url}: {failure}", file=sys.stderr)
        return 1
    workers = _admin_request(args, "GET", "/api/workers")
    workloads = _admin_request(args, "GET", "/api/admin/workloads")
    if workers is None or workloads is None:
        return 1
    manager = {"url": base_url, "healthy": health.status_code == 200}
    if args.json:
        print(json.dumps({"manager": manager, **workers, **workloads}, indent=2))
        return 0
    worker_rows, workload_rows = workers["workers"], workloads["workloads"]
    print(f"Manager    {base_url}  {'ok' if manager['healthy'] else 'NOT HEALTHY'}")
    print(f"Workers    {len(worker_rows)}: {_counts(w['state'] for w in worker_rows)}")
    phases = (w["status"]["phase"] for w in workload_rows)
    print(f"Workloads  {len(workload_rows)}: {_counts(phases)}")
    for rows, columns in ((worker_rows, WORKER_COLUMNS), (workload_rows, WORKLOAD_COLUMNS)):
        if rows:
            print()
            print(render_table(rows, columns))
    return 0


def show_logs(args: argparse.Namespace) -> int:
    """A workload's engine log, printed as it arrives; ``-f`` follows it until Ctrl-C."""
    project, _, workload = args.workload.partition("/")
    if not project or not workload:
        print("error: name the workload as PROJECT/WORKLOAD", file=sys.stderr)
        return 2
    admin_token = _admin_token(args)
    if admin_token is None:
        return 1
    base_url = _base_url(args)
    params = _without_none({"tail": args.tail, "follow": int(args.follow), "replica": args.replica})
    path = f"/api/admin/workloads/{quote(project, safe='')}/{quote(workload, safe='')}/logs"
    try:
        with httpx.stream(
            "GET",
            base_url + path,
            params=params,
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=httpx.Timeout(30.0, read=None),
        ) as response:
            if response.is_error:
                response.read()
                print(f"error: {_error_message(response)}", file=sys.stderr)
                return 1
            for piece in response.iter_bytes():
                sys.stdout.buffer.write(piece)
                sys.stdout.buffer.flush()
    except httpx.TransportError as failure:
        print(f"error: could not reach the Manager at {base_url}: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _counts(values: Iterable[str]) -> str:
    counted: dict[str, int] = {}
    for value in values:
        counted[value] = counted.get(value, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counted.items())) or "none"


# --- tables ---------------------------------------------------------------------------------

Column = tuple[str, Callable[[dict[str, Any]], object]]


def _gpus(worker: dict[str, Any]) -> str:
    names: dict[str, int] = {}
    for gpu in worker.get("gpus") or []:
        names[gpu["name"]] = names.get(gpu["name"], 0) + 1
    return ", ".join(f"{n}x {name}" for name, n in names.items()) or "-"


def _ready(workload: dict[str, Any]) -> str:
    status = workload.get("status") or {}
    return f"{status.get('ready_replicas', 0)}/{status.get('desired_replicas', 0)}"


PROJECT_COLUMNS: list[Column] = [
    ("SLUG", lambda r: r["slug"]),
    ("ID", lambda r: r["id"]),
    ("NAME", lambda r: r["name"]),
    ("CREATED", lambda r: r["created_at"]),
]
TOKEN_COLUMNS: list[Column] = [
    ("ID", lambda r: r["id"]),
    ("KIND", lambda r: r["kind"]),
    ("PROJECT", lambda r: r.get("project_slug")),
    ("NAME", lambda r: r.get("name")),
    ("SCOPES / GRANTS", lambda r: ", ".join(r.get("scopes") or r.get("grants") or [])),
    ("CREATED", lambda r: r["created_at"]),
    ("REVOKED", lambda r: r.get("revoked_at")),
]
WORKER_COLUMNS: list[Column] = [
    ("WORKER", lambda r: r["id"]),
    ("NAME", lambda r: r["name"]),
    ("POOL", lambda r: r["pool"]),
    ("STATE", lambda r: r["state"]),
    ("GPUS", _gpus),
    ("LAST HEARTBEAT", lambda r: r.get("last_heartbeat_at")),
    ("REASON", lambda r: r.get("state_reason")),
]
GPU_COLUMNS: list[Column] = [
    ("GPU", lambda r: r["id"]),
    ("WORKER", lambda r: r.get("worker_name")),
    ("INDEX", lambda r: r["index"]),
    ("NAME", lambda r: r["name"]),
    ("MEMORY MB", lambda r: f"{r['memory_used_mb']}/{r['memory_total_mb']}"),
    ("UTIL %", lambda r: r["utilization_pct"]),
    ("SIMULATED", lambda r: "yes" if r.get("simulated") else "no"),
]
WORKLOAD_COLUMNS: list[Column] = [
    ("PROJECT", lambda r: r["project_slug"]),
    ("WORKLOAD", lambda r: r["slug"]),
    ("BACKEND", lambda r: r["backend"]),
    ("PHASE", lambda r: (r.get("status") or {}).get("phase")),
    ("READY", _ready),
    ("REASON", lambda r: (r.get("status") or {}).get("reason")),
]


def render_table(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    """Rows under upper-case headers, columns two spaces apart; "-" for what is empty."""
    cells = [[_cell(get(row)) for _, get in columns] for row in rows]
    widths = [
        max([len(header), *(len(line[i]) for line in cells)])
        for i, (header, _) in enumerate(columns)
    ]
    lines = [[header for header, _ in columns], *cells]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    # One line per row, whatever a reason or name holds.
    return " ".join(str(value).split())


def _list(
    args: argparse.Namespace,
    path: str,
    key: str,
    columns: list[Column],
    *,
    params: dict[str, Any] | None = None,
) -> int:
    answer = _admin_request(args, "GET", path, params=params)
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer[key]:
        print(render_table(answer[key], columns))
    else:
        print(f"no {key.replace('_', ' ')}")
    return 0


def token_id(value: str) -> str:
    """The 8-hex id of a token, from the id itself, its display form or the whole token."""
    value = value.strip()
    if re.fullmatch(r"[0-9a-f]{8}", value):
        return value
    match = re.match(r"ik_(?:sdk|live|agent)_([0-9a-f]{8})(?![0-9a-f])", value)
    if match is None:
        # Never echo the value: it may be a whole secret with a typo in it.
        raise argparse.ArgumentTypeError(
            "expected a token id (8 hex digits), a display form like ik_sdk_<id>… or a token"
        )
    return match.group(1)


def _call_admin_api(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> int:
    answer = _admin_request(args, method, path, body=body, params=params)
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2))
    return 0


def _base_url(args: argparse.Namespace) -> str:
    return str(args.base_url or os.environ.get("INFERENCEKEY_BASE_URL") or DEFAULT_BASE_URL).rstrip(
        "/"
    )


def _admin_request(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """The Manager's JSON answer, or None once the error is printed."""
    base_url = _base_url(args)
    admin_token = _admin_token(args)
    if admin_token is None:
        return None
    try:
        response = httpx.request(
            method,
            base_url + path,
            json=body,
            params=params,
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=30.0,
        )
    except httpx.TransportError as failure:
        print(f"error: could not reach the Manager at {base_url}: {failure}", file=sys.stderr)
        return None
    if response.is_error:
        print(f"error: {_error_message(response)}", file=sys.stderr)
        return None
    return response.json()


def _admin_token(args: argparse.Namespace) -> str | None:
    token = args.admin_token or os.environ.get("INFERENCEKEY_ADMIN_TOKEN")
    if token:
        return str(token)
    data_dir = args.data_dir or os.environ.get("INFERENCEKEY_DATA_DIR") or default_data_dir()
    token_file = Path(data_dir) / "admin-token"
    try:
        return token_file.read_text().strip()
    except OSError:
        print(
            f"error: no admin token: pass --admin-token, set INFERENCEKEY_ADMIN_TOKEN, or run "
            f"where the Manager wrote {token_file}",
            file=sys.stderr,
        )
        return None


def _error_message(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return answer["message"]
    return f"the Manager answered HTTP {response.status_code}"


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


# --- inferencekey agent ---------------------------------------------------------------------

AGENT_TOKEN_PREFIX = "ik_agent_"
AGENT_RUNTIMES = ("docker", "process")
AGENT_BACKENDS = ("ollama", "vllm", "vllm-omni", "sglang", "llamacpp")
DOCKER_NETWORK_MODES = ("bridge", "host")

# Flag (the argparse dest) -> environment variable; a flag wins over its variable, which wins
# over AgentConfig's default. Empty variables count as unset.
AGENT_ENV = {
    "manager_url": "INFERENCEKEY_MANAGER_URL",
    "token": "INFERENCEKEY_AGENT_TOKEN",
    "runtime": "INFERENCEKEY_AGENT_RUNTIME",
    "listen": "INFERENCEKEY_AGENT_LISTEN",
    "advertise_url": "INFERENCEKEY_AGENT_ADVERTISE_URL",
    "state_dir": "INFERENCEKEY_AGENT_STATE_DIR",
    "model_dir": "INFERENCEKEY_MODEL_DIR",
    "port_range": "INFERENCEKEY_AGENT_PORT_RANGE",
    "simulate_gpus": "INFERENCEKEY_SIMULATE_GPUS",
    "images": "INFERENCEKEY_ENGINE_IMAGES",
    "binaries": "INFERENCEKEY_ENGINE_BINARIES",
    "docker_network": "INFERENCEKEY_AGENT_DOCKER_NETWORK",
    "metrics_listen": "INFERENCEKEY_AGENT_METRICS_LISTEN",
}
AGENT_FLAGS = {
    "manager_url": "--manager",
    "token": "--token",
    "runtime": "--runtime",
    "listen": "--listen",
    "advertise_url": "--advertise-url",
    "state_dir": "--state-dir",
    "model_dir": "--model-dir",
    "port_range": "--port-range",
    "simulate_gpus": "--simulate-gpus",
    "images": "--image",
    "binaries": "--binary",
    "docker_network": "--docker-network",
    "metrics_listen": "--metrics-listen",
}


class AgentConfigError(ValueError):
    """A setting of ``inferencekey agent`` is missing or malformed; the message says which."""


def run_agent(args: argparse.Namespace) -> int:
    try:
        config = agent_config_from_args(args, os.environ)
    except AgentConfigError as error:
        print(f"inferencekey agent: error: {error}", file=sys.stderr)
        return 2
    # Imported here so that the Manager and `inferencekey admin` do not load the agent stack.
    from worker_agent.agent import run

    try:
        run(config)
    except KeyboardInterrupt:
        return 130
    return 0


def agent_config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> AgentConfig:
    """The agent's settings: each flag, else its environment variable, else AgentConfig's default.

    ``--image`` and ``--binary`` merge with their variables entry by entry, the flag winning for
    a backend or binary both name. Raises AgentConfigError, whose message never holds the token.
    """
    from worker_agent.config import AgentConfig

    def setting(dest: str) -> tuple[str | None, str]:
        """(value, where it came from) of a single-valued setting."""
        flagged = getattr(args, dest, None)
        if flagged is not None:
            return str(flagged), AGENT_FLAGS[dest]
        variable = AGENT_ENV[dest]
        return (environ.get(variable) or None), variable

    def either(dest: str) -> str:
        return f"{AGENT_FLAGS[dest]} or {AGENT_ENV[dest]}"

    manager_url, source = setting("manager_url")
    if manager_url is None:
        raise AgentConfigError(f"no Manager URL: pass {either('manager_url')}")
    manager_url = _http_url(manager_url.strip(), source)

    token, source = setting("token")
    if token is None:
        raise AgentConfigError(
            f"no agent token: set {AGENT_ENV['token']} (or pass {AGENT_FLAGS['token']}); "
            "create one with `inferencekey admin worker create` on the Manager host"
        )
    token = _agent_token(token.strip(), source)

    options: dict[str, Any] = {"manager_url": manager_url, "token": token}

    runtime, source = setting("runtime")
    if runtime is not None:
        options["runtime"] = _one_of(runtime.strip(), AGENT_RUNTIMES, source)

    listen, source = setting("listen")
    if listen is not None:
        options["listen_host"], options["listen_port"] = _host_port(listen.strip(), source)

    try:
        options["log_format"] = log_format(getattr(args, "log_format", None))
    except ValueError as error:
        raise AgentConfigError(str(error)) from None

    metrics_listen, source = setting("metrics_listen")
    if metrics_listen is not None:
        options["metrics_listen"] = _host_port(metrics_listen.strip(), source)

    advertise_url, source = setting("advertise_url")
    if advertise_url is not None:
        options["advertise_url"] = _http_url(advertise_url.strip(), source)

    for dest in ("state_dir", "model_dir"):
        directory, _ = setting(dest)
        if directory is not None:
            options[dest] = Path(directory).expanduser().absolute()

    port_range, source = setting("port_range")
    if port_range is not None:
        options["port_range"] = _port_range(port_range.strip(), source)

    simulate_gpus, source = setting("simulate_gpus")
    if simulate_gpus is not None and simulate_gpus.strip():
        options["simulate_gpus"] = _gpu_spec(simulate_gpus.strip(), source)

    docker_network, source = setting("docker_network")
    if docker_network is not None:
        options["docker_network_mode"] = _one_of(
            docker_network.strip(), DOCKER_NETWORK_MODES, source
        )

    images = _pairs(environ.get(AGENT_ENV["images"]), AGENT_ENV["images"], "BACKEND=IMAGE")
    images.update(_pairs(args.images, AGENT_FLAGS["images"], "BACKEND=IMAGE"))
    for backend in images:
        if backend not in AGENT_BACKENDS:
            raise AgentConfigError(
                f"unknown backend {backend!r} in an engine image: expected one of "
                f"{', '.join(AGENT_BACKENDS)}"
            )
    options["images"] = images

    binaries = _pairs(environ.get(AGENT_ENV["binaries"]), AGENT_ENV["binaries"], "NAME=PATH")
    binaries.update(_pairs(args.binaries, AGENT_FLAGS["binaries"], "NAME=PATH"))
    for name, path in binaries.items():
        if "/" in name:
            raise AgentConfigError(
                f"engine binary name {name!r} must be a program name as commands start with "
                "it (e.g. vllm=/opt/vllm/bin/vllm), not a path"
            )
        # Engines start in the state dir, so a relative path would not mean what it says.
        binaries[name] = str(Path(path).expanduser().absolute())
    options["binaries"] = binaries

    config = AgentConfig(**options)
    low, high = config.port_range
    if low <= config.listen_port <= high:
        raise AgentConfigError(
            f"the agent's listen port {config.listen_port} lies inside the engine port range "
            f"{low}-{high}: choose a --listen port or --port-range that do not overlap"
        )
    return config


def _agent_token(token: str, source: str) -> str:
    if token.startswith(AGENT_TOKEN_PREFIX) and len(token) > len(AGENT_TOKEN_PREFIX):
        return token
    # Name the kind of credential it is, when it is one, and nothing more of it.
    kind = re.match(r"ik_(sdk|live|admin)_", token)
    got = f"an {kind.group(0)} token" if kind else "something else"
    raise AgentConfigError(
        f"the agent token ({source}) must start with {AGENT_TOKEN_PREFIX}, got {got}; "
        "create a worker credential with `inferencekey admin worker create` on the Manager host"
    )


def _http_url(url: str, source: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AgentConfigError(f"{source} must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


def _one_of(value: str, choices: tuple[str, ...], source: str) -> str:
    if value not in choices:
        raise AgentConfigError(f"{source} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _host_port(value: str, source: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (all interfaces)."""
    match = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\s:\[\]]*)):(\d{1,5})", value)
    if match is None or not 1 <= int(match.group(3)) <= 65535:
        raise AgentConfigError(
            f"{source} must be HOST:PORT (e.g. 0.0.0.0:8090 or [::]:8090), got {value!r}"
        )
    return match.group(1) or match.group(2) or "0.0.0.0", int(match.group(3))


def _port_range(value: str, source: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", value)
    low, high = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not (match and 1 <= low < high <= 65535):
        raise AgentConfigError(
            f"{source} must be LOW-HIGH with 1 <= LOW < HIGH <= 65535 "
            f"(e.g. 41000-41999), got {value!r}"
        )
    return low, high


def _gpu_spec(spec: str, source: str) -> str:
    from worker_agent.gpus import SimulatedInventory

    try:
        SimulatedInventory(spec, seed="validation")
    except ValueError as error:
        raise AgentConfigError(f"{source}: {error}") from None
    return spec


def _pairs(values: str | list[str] | None, source: str, form: str) -> dict[str, str]:
    """``KEY=VALUE`` items from repeated flags (a list) or a comma-separated variable (a str)."""
    if not values:
        return {}
    items = values.split(",") if isinstance(values, str) else values
    pairs: dict[str, str] = {}
    for item in items:
        if not item.strip() and isinstance(values, str):
            continue  # a trailing comma
        key, equals, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not (equals and key and value):
            raise AgentConfigError(f"{source} takes {form}, got {item!r}")
        pairs[key] = value
    return pairs


# --- argument parsing -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferencekey",
        description="Self-hosted InferenceKey: run the Manager or a worker agent, and administer "
        "the Manager.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_manager_command(commands)
    _add_agent_command(commands)
    _add_admin_commands(commands)
    return parser


def _add_manager_command(commands: Any) -> None:
    manager = commands.add_parser("manager", help="run the Manager")
    manager.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    manager.add_argument("--port", type=int, help="port to listen on (default 8080)")
    manager.add_argument(
        "--database-url", help="Postgres URL; without one an embedded Postgres runs in the data dir"
    )
    manager.add_argument("--data-dir", type=Path, help="where the Manager keeps its files")
    _add_log_format(manager)
    manager.set_defaults(command=run_manager)


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text lines, or one JSON object per line with the ids of what each line is about "
        "(default text) [INFERENCEKEY_LOG_FORMAT]",
    )


def _configure_logging(args: argparse.Namespace) -> bool:
    try:
        configure_logging(log_format(args.log_format))
    except ValueError as error:
        print(f"inferencekey: error: {error}", file=sys.stderr)
        return False
    return True


def _add_agent_command(commands: Any) -> None:
    agent = commands.add_parser(
        "agent",
        help="run a worker agent on a GPU host",
        description="Run a worker agent: it joins the Manager with its ik_agent_ credential, "
        "reports this host's GPUs and runs the engines the Manager assigns it. Every option "
        "can also come from the environment variable named in its help; a flag wins.",
    )

    def option(dest: str, help_text: str, **kwargs: Any) -> None:
        agent.add_argument(
            AGENT_FLAGS[dest], dest=dest, help=f"{help_text} [{AGENT_ENV[dest]}]", **kwargs
        )

    option("manager_url", "the Manager's URL, e.g. http://manager.internal:8080", metavar="URL")
    option(
        "token",
        "the worker's ik_agent_ credential; prefer the variable, as every user on the host can "
        "read a command line",
        metavar="TOKEN",
    )
    option("runtime", "how engines run (default docker)", choices=AGENT_RUNTIMES)
    option(
        "listen",
        "where the agent's endpoint proxy listens (default 0.0.0.0:8090)",
        metavar="HOST:PORT",
    )
    option(
        "advertise_url",
        "the URL the Manager reaches this agent's endpoint proxy at "
        "(default http://<this host's name>:<listen port>)",
        metavar="URL",
    )
    option(
        "metrics_listen",
        "serve Prometheus metrics without a credential here (default: not at all); keep it on "
        "loopback or a network only Prometheus reaches",
        metavar="HOST:PORT",
    )
    option("state_dir", "where the agent keeps its state and engine logs", metavar="DIR")
    option("model_dir", "model files, reported to the Manager (default /models)", metavar="DIR")
    option("port_range", "ports for engines (default 41000-41999)", metavar="LOW-HIGH")
    option(
        "simulate_gpus",
        "report these GPUs instead of NVML's, e.g. '2xNVIDIA A100-SXM4-80GB' (tests, demos)",
        metavar="SPEC",
    )
    option(
        "images",
        "engine image for a backend (docker runtime), repeatable; the variable takes a "
        "comma-separated list",
        action="append",
        metavar="BACKEND=IMAGE",
    )
    option(
        "binaries",
        "engine binary path for a program name (process runtime), repeatable; the variable "
        "takes a comma-separated list",
        action="append",
        metavar="NAME=PATH",
    )
    option(
        "docker_network",
        "engine containers' network (default bridge, published on 127.0.0.1 only)",
        choices=DOCKER_NETWORK_MODES,
    )
    _add_log_format(agent)
    agent.set_defaults(command=run_agent)


def _add_admin_commands(commands: Any) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--base-url", help=f"the Manager's URL (default {DEFAULT_BASE_URL})")
    connection.add_argument("--admin-token", help="default: the data dir's admin-token file")
    connection.add_argument("--data-dir", type=Path, help="where to find the admin-token file")

    admin = commands.add_parser("admin", help="administer projects, tokens, keys and workers")
    resources = admin.add_subparsers(required=True, metavar="RESOURCE")

    def action(group: Any, name: str, command: Command, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(
            name, parents=[connection], help=help_text
        )
        parser.set_defaults(command=command)
        if name == "list":
            parser.add_argument("--json", action="store_true", help="JSON instead of a table")
        return parser

    projects = resources.add_parser("project", help="projects").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = action(projects, "create", create_project, "create a project")
    create.add_argument("slug")
    create.add_argument("--name")
    action(projects, "list", list_projects, "list projects")

    tokens = resources.add_parser("token", help="ik_sdk_ control-plane tokens").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = action(tokens, "create", create_token, "create an SDK token (shown once)")
    create.add_argument("--project", required=True, help="project slug or id")
    create.add_argument("--read-only", action="store_true", default=None)
    create.add_argument("--name")
    listing = action(tokens, "list", list_tokens, "list tokens and keys (never their secrets)")
    listing.add_argument("--project", help="only this project's")
    revoke = action(tokens, "revoke", revoke_token, "revoke a token or key")
    revoke.add_argument("token_id", metavar="ID", type=token_id, help="id, display form or token")

    keys = resources.add_parser("key", help="ik_live_ data-plane keys").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = action(keys, "create", create_key, "create a data-plane key (shown once)")
    create.add_argument("--project", required=True, help="project slug or id")
    grant = create.add_mutually_exclusive_group(required=True)
    grant.add_argument(
        "--workload", dest="workloads", action="append", metavar="SLUG", help="repeatable"
    )
    grant.add_argument("--all", action="store_true", help="every workload of the project")
    create.add_argument("--name")

    workers = resources.add_parser("worker", help="GPU workers and their agents").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = action(
        workers, "create", create_worker, "register a worker; prints its ik_agent_ token (once)"
    )
    create.add_argument(
        "--project", help="project slug or id: the worker serves only it (default: shared pool)"
    )
    create.add_argument("--name")
    action(workers, "list", list_workers, "list workers, their state and GPUs")

    gpus = resources.add_parser("gpu", help="GPU resources").add_subparsers(
        required=True, metavar="ACTION"
    )
    action(gpus, "list", list_gpu_resources, "list every worker's GPUs")

    workload_actions = resources.add_parser(
        "workload", help="every project's workloads"
    ).add_subparsers(required=True, metavar="ACTION")
    action(workload_actions, "list", list_workloads, "list workloads, their phase and replicas")

    logs = commands.add_parser(
        "logs",
        parents=[connection],
        help="a workload's engine log (one replica's)",
    )
    logs.add_argument("workload", metavar="PROJECT/WORKLOAD")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--tail", type=int, default=100, help="lines to start with (default 100)")
    logs.add_argument("--replica", help="this replica's (default: the newest, a ready one first)")
    logs.set_defaults(command=show_logs)

    status = commands.add_parser(
        "status",
        parents=[connection],
        help="the Manager, workers and workloads at a glance",
    )
    status.add_argument("--json", action="store_true", help="JSON instead of tables")
    status.set_defaults(command=show_status)


if __name__ == "__main__":
    raise SystemExit(main())
