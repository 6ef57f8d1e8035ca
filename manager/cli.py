"""The Manager's commands of ``inferencekey``: ``manager``, ``admin ...``, ``status``, ``logs``,
``usage``, ``webhooks ...``, ``backends ...``, ``tenant``.

``ik_command`` puts these and the agent's (``worker_agent.cli``) under one parser."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from ik_contracts.logs import add_log_format_option, configure_logging, log_format
from manager.embedded_db import EmbeddedPostgres
from manager.settings import Settings, agent_connection_warnings, default_data_dir, port_number

Command = Callable[[argparse.Namespace], int]

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
# Open streams (SSE, long generations) must not keep a stopping Manager alive forever.
GRACEFUL_SHUTDOWN_SECONDS = 10
# Connections the embedded database allows beyond the Manager's own (when those are more than
# Postgres's default 100): an operator's psql, a backup, a connection not yet reaped.
SPARE_CONNECTIONS = 10

# --- inferencekey manager -------------------------------------------------------------------


def manager_settings(args: argparse.Namespace) -> Settings:
    """The Manager's settings: ``INFERENCEKEY_*`` variables, and the flags given over them."""
    return Settings.from_env(
        host=args.host,
        port=args.port,
        database_url=args.database_url,
        data_dir=args.data_dir,
        processes=args.processes,
        reconciler_process=args.reconciler_process,
    )


def run_manager(args: argparse.Namespace) -> int:
    # Here, not at the top: `inferencekey admin` need not load Alembic.
    from manager.db.migrate import DatabaseUnreachable, SchemaTooNew, refuse_newer_schema
    from manager.services.tokens import (
        ADMIN_TOKEN_TAKEN,
        NEW_ADMIN_TOKEN,
        configured_admin_token_id,
    )

    if not _configure_logging(args):
        return 2
    try:
        settings = manager_settings(args)
        if settings.admin_token is not None:
            configured_admin_token_id(settings.admin_token)
    except ValueError as error:  # a malformed INFERENCEKEY_* variable: a usage error
        print(f"inferencekey: error: {error}", file=sys.stderr)
        return 2
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_cleanly)
    embedded: EmbeddedPostgres | None = None
    try:
        if settings.database_url is None:
            embedded = EmbeddedPostgres(settings.data_dir)
            settings.database_url = embedded.start(
                max_connections=settings.database_connections() + SPARE_CONNECTIONS
            )
        # The embedded one too: its own postgresql.conf, or initdb on a small host, may say less.
        _warn_if_too_few_connections(settings)
        for warning in agent_connection_warnings(settings):
            logging.getLogger("inferencekey.manager").warning("%s", warning)
        if settings.supervised:
            return _serve_processes(settings, embedded, log_format(args.log_format))
        if settings.run_migrations:
            refuse_newer_schema(settings.database_url)
        if settings.admin_token is not None and _admin_token_taken(settings):
            # (With --processes, each process finds it and the supervisor stops with it.)
            print(
                f"error: {ADMIN_TOKEN_TAKEN} in this database; {NEW_ADMIN_TOKEN}", file=sys.stderr
            )
            return 1
        _serve(settings, embedded)
    except SchemaTooNew as too_new:
        print(f"error: {too_new}", file=sys.stderr)
        return 1
    except DatabaseUnreachable as unreachable:
        where = mask_password(settings.database_url or "")
        print(f"error: cannot connect to the database {where}: {unreachable}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if embedded is not None:
            embedded.stop()
        signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


def _warn_if_too_few_connections(settings: Settings) -> None:
    from manager.db.migrate import too_few_connections

    assert settings.database_url is not None
    warning = too_few_connections(settings.database_url, settings.database_connections())
    if warning is not None:
        logging.getLogger("inferencekey.manager").warning("%s", warning)


def _admin_token_taken(settings: Settings) -> bool:
    """Whether another credential holds the configured admin token's id (tokens.py); a database
    that cannot be reached is the one-line error every other start-up check gives."""
    from manager.db.migrate import start_up_check
    from manager.services.tokens import admin_token_taken

    assert settings.database_url is not None and settings.admin_token is not None
    return start_up_check(admin_token_taken(settings.database_url, settings.admin_token))


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    # Unwinds through run_manager's finally, which stops the embedded database.
    raise SystemExit(0)


def _serve(settings: Settings, embedded: EmbeddedPostgres | None) -> None:
    _say_listening(settings, embedded)
    _run_server(settings)


def _say_listening(
    settings: Settings, embedded: EmbeddedPostgres | None, processes: str = ""
) -> None:
    assert settings.database_url is not None
    database = mask_password(settings.database_url)
    if embedded is not None and embedded.install is not None:
        server = embedded.install
        database += (
            f" (embedded PostgreSQL {server.major} from {server.source}, in {embedded.cluster_dir})"
        )
    print(
        f"InferenceKey Manager listening on http://{settings.host}:{settings.port}{processes}, "
        f"database {database}",
        flush=True,
    )


def _serve_processes(settings: Settings, embedded: EmbeddedPostgres | None, fmt: str) -> int:
    """``--processes N`` (or ``--reconciler-process``): migrate once here, then N serving
    processes on one socket and the reconciler's own (processes.py)."""
    from manager.db.migrate import upgrade_to_head
    from manager.processes import Supervisor, listening_socket

    assert settings.database_url is not None
    if settings.run_migrations:
        upgrade_to_head(settings.database_url)
    sock = listening_socket(settings.host, settings.port)
    serving = "1 process" if settings.processes == 1 else f"{settings.processes} processes"
    reconciler = " and the reconciler's own" if settings.run_reconciler else ""
    _say_listening(settings, embedded, f" ({serving}{reconciler})")
    supervisor = Supervisor(
        serve_one_process,
        reconcile_in_a_process,
        settings,
        settings.processes,
        fmt,
        GRACEFUL_SHUTDOWN_SECONDS,
    )
    try:
        return supervisor.run(sock)
    finally:
        sock.close()


def serve_one_process(settings: Settings, sock: socket.socket, fmt: str) -> None:
    """One of the Manager's processes (spawned by processes.Supervisor), on the shared socket."""
    from manager.processes import stop_when_orphaned

    configure_logging(fmt)
    stop_when_orphaned()
    _run_server(settings, sock)


def reconcile_in_a_process(settings: Settings, fmt: str) -> None:
    """The reconciler of a Manager of several processes (spawned by processes.Supervisor)."""
    import asyncio

    from manager.app import reconcile_until_stopped
    from manager.processes import stop_when_orphaned

    configure_logging(fmt)
    stop_when_orphaned()
    asyncio.run(reconcile_until_stopped(settings))


def _run_server(settings: Settings, sock: socket.socket | None = None) -> None:
    # Imported here so that `inferencekey admin` does not load the server stack.
    import uvicorn

    from ik_contracts.http_server import uvicorn_options
    from manager.accept_queue import listening_sockets
    from manager.app import create_app

    # Set below; the app asks whether it is shutting down, and which sockets it listens on.
    running: list[uvicorn.Server] = []
    app = create_app(
        settings,
        stopping=lambda: any(server.should_exit for server in running),
        listening=lambda: listening_sockets(running),
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        log_config=None,  # the handlers _configure_logging installed, in the chosen format
        # A line per request costs the gateway ~7% of its throughput; opt in with the variable.
        access_log=os.environ.get("INFERENCEKEY_ACCESS_LOG", "").strip() in ("1", "true", "yes"),
        **uvicorn_options(settings.server_limits),
    )
    running.append(uvicorn.Server(config))
    running[0].run(sockets=None if sock is None else [sock])


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


def show_gpu_catalog(args: argparse.Namespace) -> int:
    return _list(args, "/api/gpu-catalog", "gpus", GPU_CATALOG_COLUMNS)


def set_gpu_price(args: argparse.Namespace) -> int:
    body = {"name": args.name, "usd_per_hour": args.usd_per_hour}
    answer = _admin_request(args, "PUT", "/api/admin/gpu-prices", body=body)
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(render_table([answer], GPU_CATALOG_COLUMNS))
    return 0


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


def show_usage(args: argparse.Namespace) -> int:
    """A project's token usage, grouped by workload, key or day, with a total."""
    params = _without_none({"from": args.since, "to": args.until, "group_by": args.group_by})
    path = f"/api/admin/projects/{quote(args.project, safe='')}/usage"
    answer = _admin_request(args, "GET", path, params=params)
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(f"Usage of {answer['project']} from {answer['from']} to {answer['to']}")
    if not answer["rows"]:
        print("no data-plane requests in this range")
        return 0
    label: Column = USAGE_LABELS[answer["group_by"]]
    total = {**answer["total"], "_label": "TOTAL"}
    rows = [*answer["rows"], total]
    print(
        render_table(rows, [(label[0], lambda r: r.get("_label") or label[1](r)), *USAGE_COLUMNS])
    )
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
GPU_CATALOG_COLUMNS: list[Column] = [
    ("NAME", lambda r: r["name"]),
    ("MEMORY MB", lambda r: r.get("memory_total_mb")),
    ("FREE", lambda r: f"{r['free']}/{r['total']}"),
    ("CUDA", lambda r: ", ".join(r.get("cuda_versions") or [])),
    ("USD/H", lambda r: None if r.get("usd_per_hour") is None else f"{r['usd_per_hour']:.2f}"),
]
WORKLOAD_COLUMNS: list[Column] = [
    ("PROJECT", lambda r: r["project_slug"]),
    ("WORKLOAD", lambda r: r["slug"]),
    ("BACKEND", lambda r: r["backend"]),
    ("PHASE", lambda r: (r.get("status") or {}).get("phase")),
    ("READY", _ready),
    ("REASON", lambda r: (r.get("status") or {}).get("reason")),
]

USAGE_LABELS: dict[str, Column] = {
    "workload": ("WORKLOAD", lambda r: r.get("workload")),
    "key": ("KEY", lambda r: " ".join(filter(None, (r.get("key"), r.get("key_name"))))),
    "day": ("DAY", lambda r: r.get("day")),
}
USAGE_COLUMNS: list[Column] = [
    ("REQUESTS", lambda r: r["requests"]),
    ("PROMPT TOKENS", lambda r: r["prompt_tokens"]),
    ("COMPLETION TOKENS", lambda r: r["completion_tokens"]),
    ("TOTAL TOKENS", lambda r: r["total_tokens"]),
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


def show_endpoints(args: argparse.Namespace) -> int:
    """A workload's endpoint toggles, switching the named ones on or off first."""
    workload = _workload_path(args)
    if workload is None:
        return 2
    both = set(args.on) & set(args.off)
    if both:
        print(f"error: both --on and --off for {', '.join(sorted(both))}", file=sys.stderr)
        return 2
    path = f"{workload}/endpoints"
    changes = {name: True for name in args.on} | {name: False for name in args.off}
    answer = (
        _admin_request(args, "PATCH", path, body={"endpoints": changes})
        if changes
        else _admin_request(args, "GET", path)
    )
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    rows = [{"name": name, "on": on} for name, on in answer["endpoints"].items()]
    print(render_table(rows, [("ENDPOINT", lambda r: r["name"]), ("ON", _on_off)]))
    return 0


def _on_off(row: dict[str, Any]) -> str:
    return "on" if row["on"] else "off"


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
    return response.json() if response.content else {}  # {} for a 204


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


# --- inferencekey webhooks -----------------------------------------------------------------


def _workload_path(args: argparse.Namespace) -> str | None:
    """``/api/admin/workloads/{project}/{workload}`` of ``PROJECT/WORKLOAD``, or None once the
    usage error is printed."""
    project, _, workload = args.workload.partition("/")
    if not project or not workload:
        print("error: name the workload as PROJECT/WORKLOAD", file=sys.stderr)
        return None
    return f"/api/admin/workloads/{quote(project, safe='')}/{quote(workload, safe='')}"


def list_webhooks(args: argparse.Namespace) -> int:
    workload = _workload_path(args)
    if workload is None:
        return 2
    answer = _admin_request(args, "GET", f"{workload}/webhooks")
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer["webhooks"]:
        print(render_table(answer["webhooks"], WEBHOOK_COLUMNS))
    else:
        print("no webhook destinations")
    return 0


def add_webhook(args: argparse.Namespace) -> int:
    workload = _workload_path(args)
    if workload is None:
        return 2
    body = {"url": args.url, "enabled": not args.muted}
    answer = _admin_request(args, "POST", f"{workload}/webhooks", body=body)
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    state = "muted" if not answer["enabled"] else "on"
    print(f"Added webhook {answer['id']} ({state}): {answer['url']}")
    print("Signing secret (shown once: store it now, only its prefix is shown again):")
    print(answer["secret"])
    return 0


def switch_webhook(args: argparse.Namespace) -> int:
    """``mute`` and ``unmute``."""
    workload = _workload_path(args)
    if workload is None:
        return 2
    path = f"{workload}/webhooks/{quote(args.webhook_id, safe='')}"
    answer = _admin_request(args, "PATCH", path, body={"enabled": args.enabled})
    if answer is None:
        return 1
    print(f"{answer['id']} {'unmuted' if answer['enabled'] else 'muted'}: {answer['url']}")
    return 0


def delete_webhook(args: argparse.Namespace) -> int:
    workload = _workload_path(args)
    if workload is None:
        return 2
    path = f"{workload}/webhooks/{quote(args.webhook_id, safe='')}"
    if _admin_request(args, "DELETE", path) is None:
        return 1
    print(f"deleted {args.webhook_id} and its deliveries")
    return 0


def ping_webhook(args: argparse.Namespace) -> int:
    """A signed ping, now; exits 1 when it was not delivered."""
    workload = _workload_path(args)
    if workload is None:
        return 2
    path = f"{workload}/webhooks/{quote(args.webhook_id, safe='')}/test"
    answer = _admin_request(args, "POST", path)
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer["delivered"]:
        print(f"delivered: HTTP {answer['status_code']} in {answer['duration_ms']:g} ms")
    else:
        print(f"not delivered: {answer['error']} ({answer['duration_ms']:g} ms)")
    return 0 if answer["delivered"] else 1


def list_deliveries(args: argparse.Namespace) -> int:
    workload = _workload_path(args)
    if workload is None:
        return 2
    params = _without_none({"status": args.status, "limit": args.limit})
    answer = _admin_request(args, "GET", f"{workload}/deliveries", params=params)
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer["deliveries"]:
        print(render_table(answer["deliveries"], DELIVERY_COLUMNS))
    else:
        print("no deliveries")
    return 0


def redeliver(args: argparse.Namespace) -> int:
    workload = _workload_path(args)
    if workload is None:
        return 2
    path = f"{workload}/deliveries/{quote(args.delivery_id, safe='')}/redeliver"
    answer = _admin_request(args, "POST", path)
    if answer is None:
        return 1
    print(f"{answer['id']} is pending again: due now, attempts start over")
    return 0


WEBHOOK_COLUMNS: list[Column] = [
    ("WEBHOOK", lambda r: r["id"]),
    ("URL", lambda r: r["url"]),
    ("STATE", lambda r: "on" if r["enabled"] else "muted"),
    ("SECRET", lambda r: f"{r['secret_prefix']}…"),
    ("CREATED", lambda r: r["created_at"]),
]
DELIVERY_COLUMNS: list[Column] = [
    ("DELIVERY", lambda r: r["id"]),
    ("JOB", lambda r: r["job_id"]),
    ("WEBHOOK", lambda r: r["destination_id"]),
    ("EVENT", lambda r: r["event"]),
    ("STATUS", lambda r: r["status"]),
    ("ATTEMPTS", lambda r: r["attempts"]),
    ("NEXT", lambda r: r.get("next_attempt_at")),
    ("LAST ERROR", lambda r: r.get("last_error")),
]


# --- inferencekey backends, inferencekey tenant ---------------------------------------------


def _backends_path(args: argparse.Namespace, slug: str | None = None) -> str:
    path = f"/api/tenants/{quote(args.tenant, safe='')}/custom-backends"
    return path if slug is None else f"{path}/{quote(slug, safe='')}"


def list_custom_backends(args: argparse.Namespace) -> int:
    return _list(args, _backends_path(args), "custom_backends", CUSTOM_BACKEND_COLUMNS)


def show_custom_backend(args: argparse.Namespace) -> int:
    """A custom backend and all its versions, newest first (what new replicas run)."""
    answer = _admin_request(args, "GET", _backends_path(args, args.slug))
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(f"{answer['slug']}  {answer['name']}")
    if answer.get("description"):
        print(answer["description"])
    print()
    print(render_table(answer["versions"], CUSTOM_BACKEND_VERSION_COLUMNS))
    return 0


def delete_custom_backend(args: argparse.Namespace) -> int:
    if _admin_request(args, "DELETE", _backends_path(args, args.slug)) is None:
        return 1
    print(f"deleted custom backend {args.slug}: every version and its package")
    return 0


def show_tenant(args: argparse.Namespace) -> int:
    """The tenant id that publish_custom_backend and /api/tenants/{tenant_id}/... take."""
    answer = _admin_request(args, "GET", "/api/tenants")
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        for tenant in answer["tenants"]:
            print(tenant["id"])
    return 0


def _size(row: dict[str, Any]) -> str:
    size = int(row["size_bytes"])
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


CUSTOM_BACKEND_COLUMNS: list[Column] = [
    ("SLUG", lambda r: r["slug"]),
    ("VERSION", lambda r: r["version"]),
    ("VERSIONS", lambda r: r["versions"]),
    ("TASK TYPE", lambda r: r["task_type"] or "any"),
    ("CPU ONLY", lambda r: "yes" if r["cpu_only"] else "no"),
    ("SIZE", _size),
    ("PUBLISHED", lambda r: r["created_at"]),
]
CUSTOM_BACKEND_VERSION_COLUMNS: list[Column] = [
    ("VERSION", lambda r: r["version"]),
    ("ID", lambda r: r["id"]),
    ("TASK TYPE", lambda r: r["task_type"] or "any"),
    ("ENTRYPOINT", lambda r: r["entrypoint"]),
    ("PYTHON", lambda r: r["requires_python"]),
    ("CPU ONLY", lambda r: "yes" if r["cpu_only"] else "no"),
    ("SIZE", _size),
    ("SHA256", lambda r: r["sha256"][:16] + "…"),
    ("PUBLISHED", lambda r: r["created_at"]),
]


# --- argument parsing -----------------------------------------------------------------------


def add_manager_command(commands: Any) -> None:
    manager = commands.add_parser("manager", help="run the Manager")
    manager.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    manager.add_argument("--port", type=_port, help="port to listen on (default 8080)")
    manager.add_argument(
        "--database-url", help="Postgres URL; without one an embedded Postgres runs in the data dir"
    )
    manager.add_argument("--data-dir", type=Path, help="where the Manager keeps its files")
    manager.add_argument(
        "--processes",
        type=_at_least_one,
        help="processes serving the port, to use more than one core (default 1; "
        "INFERENCEKEY_PROCESSES); with 2 or more the reconciler runs in a process of its own",
    )
    manager.add_argument(
        "--reconciler-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the reconciler in a process of its own beside the one serving process, for a "
        "fleet of hundreds of agents on 2 cores or more (INFERENCEKEY_RECONCILER_PROCESS)",
    )
    add_log_format_option(manager)
    manager.set_defaults(command=run_manager)


def _port(raw: str) -> int:
    try:
        return port_number("the port", raw)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("the port ")) from None


def _at_least_one(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number is needed, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, got {value}")
    return value


def _configure_logging(args: argparse.Namespace) -> bool:
    try:
        configure_logging(log_format(args.log_format))
    except ValueError as error:
        print(f"inferencekey: error: {error}", file=sys.stderr)
        return False
    return True


def add_admin_commands(commands: Any) -> None:
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
    catalog = action(
        gpus, "catalog", show_gpu_catalog, "the shared pool's GPU names, free counts and prices"
    )
    catalog.add_argument("--json", action="store_true", help="JSON instead of a table")

    prices = resources.add_parser(
        "gpu-price", help="hourly GPU prices, for max_hourly_cost_usd"
    ).add_subparsers(required=True, metavar="ACTION")
    price = action(prices, "set", set_gpu_price, "set the hourly price of a GPU display name (USD)")
    price.add_argument("name", metavar="NAME", help='GPU display name, e.g. "NVIDIA L4"')
    price.add_argument("usd_per_hour", metavar="USD", type=float, help="price per GPU-hour")
    price.add_argument("--json", action="store_true", help="JSON instead of a table")

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

    usage = commands.add_parser(
        "usage",
        parents=[connection],
        help="a project's token usage by workload, key or day",
    )
    usage.add_argument("project", metavar="PROJECT")
    usage.add_argument(
        "--group-by",
        choices=("workload", "key", "day"),
        default="workload",
        help="rows per workload (default), per key or per UTC day",
    )
    usage.add_argument(
        "--from",
        dest="since",
        metavar="WHEN",
        help="ISO 8601 date or date-time, UTC unless given (default: 30 days before --to)",
    )
    usage.add_argument(
        "--to", dest="until", metavar="WHEN", help="ISO 8601, exclusive (default: now)"
    )
    usage.add_argument("--json", action="store_true", help="JSON instead of a table")
    usage.set_defaults(command=show_usage)

    endpoints = commands.add_parser(
        "endpoints",
        parents=[connection],
        help="a workload's endpoint toggles (jobs and one per route); switch them on or off",
    )
    endpoints.add_argument("workload", metavar="PROJECT/WORKLOAD")
    endpoints.add_argument(
        "--on", action="append", default=[], metavar="NAME", help="switch this endpoint on"
    )
    endpoints.add_argument(
        "--off", action="append", default=[], metavar="NAME", help="switch this endpoint off"
    )
    endpoints.add_argument("--json", action="store_true", help="JSON instead of a table")
    endpoints.set_defaults(command=show_endpoints)

    status = commands.add_parser(
        "status",
        parents=[connection],
        help="the Manager, workers and workloads at a glance",
    )
    status.add_argument("--json", action="store_true", help="JSON instead of tables")
    status.set_defaults(command=show_status)

    _add_webhook_commands(commands, connection)
    _add_backend_commands(commands, connection)


def _add_webhook_commands(commands: Any, connection: argparse.ArgumentParser) -> None:
    webhooks = commands.add_parser(
        "webhooks", help="a workload's webhook destinations and deliveries"
    ).add_subparsers(required=True, metavar="ACTION")

    def action(name: str, command: Command, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = webhooks.add_parser(
            name, parents=[connection], help=help_text
        )
        parser.add_argument("workload", metavar="PROJECT/WORKLOAD")
        parser.set_defaults(command=command)
        return parser

    listing = action("list", list_webhooks, "list destinations (never their secrets)")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    add = action("add", add_webhook, "add a destination; prints its signing secret (once)")
    add.add_argument("url", metavar="URL", help="https:// and a public host")
    add.add_argument("--muted", action="store_true", help="add it switched off")
    add.add_argument("--json", action="store_true", help="JSON instead of text")
    for name, enabled, help_text in (
        ("mute", False, "stop sending to a destination (its pending deliveries are skipped)"),
        ("unmute", True, "send to a muted destination again"),
    ):
        switch = action(name, switch_webhook, help_text)
        switch.add_argument("webhook_id", metavar="WEBHOOK")
        switch.set_defaults(enabled=enabled)
    delete = action("delete", delete_webhook, "delete a destination and its deliveries")
    delete.add_argument("webhook_id", metavar="WEBHOOK")
    ping = action("test", ping_webhook, "send a signed ping now")
    ping.add_argument("webhook_id", metavar="WEBHOOK")
    ping.add_argument("--json", action="store_true", help="JSON instead of text")
    deliveries = action("deliveries", list_deliveries, "list deliveries, newest first")
    deliveries.add_argument(
        "--status", choices=("pending", "delivered", "terminal", "skipped"), help="only these"
    )
    deliveries.add_argument("--limit", type=int, help="at most this many (default 50)")
    deliveries.add_argument("--json", action="store_true", help="JSON instead of a table")
    again = action("redeliver", redeliver, "send a terminal or skipped delivery again")
    again.add_argument("delivery_id", metavar="DELIVERY")


def _add_backend_commands(commands: Any, connection: argparse.ArgumentParser) -> None:
    backends = commands.add_parser(
        "backends", help="the tenant's custom backends (publish with publish_custom_backend)"
    ).add_subparsers(required=True, metavar="ACTION")

    def action(name: str, command: Command, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = backends.add_parser(
            name, parents=[connection], help=help_text
        )
        parser.add_argument(
            "--tenant", default="default", help="tenant id (default: this installation's)"
        )
        parser.set_defaults(command=command)
        return parser

    listing = action("list", list_custom_backends, "list custom backends and their newest version")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    show = action("show", show_custom_backend, "a custom backend and all its versions")
    show.add_argument("slug", metavar="SLUG")
    show.add_argument("--json", action="store_true", help="JSON instead of a table")
    delete = action(
        "delete", delete_custom_backend, "delete a custom backend no workload uses, every version"
    )
    delete.add_argument("slug", metavar="SLUG")

    tenant = commands.add_parser(
        "tenant",
        parents=[connection],
        help="print the tenant id (what publish_custom_backend and /api/tenants/... take)",
    )
    tenant.add_argument("--json", action="store_true", help="JSON instead of the id")
    tenant.set_defaults(command=show_tenant)
