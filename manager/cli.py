"""The ``inferencekey`` command: run the Manager, and administer projects, tokens and keys."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from manager.embedded_db import EmbeddedPostgres
from manager.settings import Settings, default_data_dir

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
# Open streams (SSE, long generations) must not keep a stopping Manager alive forever.
GRACEFUL_SHUTDOWN_SECONDS = 10

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inferencekey`` console script."""
    args = _parser().parse_args(argv)
    command: Command = args.command
    return command(args)


# --- inferencekey manager -------------------------------------------------------------------


def run_manager(args: argparse.Namespace) -> int:
    settings = Settings.from_env(
        host=args.host, port=args.port, database_url=args.database_url, data_dir=args.data_dir
    )
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_cleanly)
    embedded: EmbeddedPostgres | None = None
    try:
        if settings.database_url is None:
            embedded = EmbeddedPostgres(settings.data_dir)
            settings.database_url = embedded.start()
        _serve(settings, embedded)
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

    assert settings.database_url is not None
    app = create_app(settings)
    database = mask_password(settings.database_url)
    if embedded is not None:
        database += f" (embedded, in {embedded.cluster_dir})"
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
    return _call_admin_api(args, "GET", "/api/admin/projects")


def create_token(args: argparse.Namespace) -> int:
    body = _without_none({"project": args.project, "read_only": args.read_only, "name": args.name})
    return _call_admin_api(args, "POST", "/api/admin/tokens", body=body)


def list_tokens(args: argparse.Namespace) -> int:
    params = _without_none({"project": args.project})
    return _call_admin_api(args, "GET", "/api/admin/tokens", params=params)


def create_key(args: argparse.Namespace) -> int:
    grant: dict[str, Any] = {"all": True} if args.all else {"workloads": args.workloads}
    body = _without_none({"project": args.project, **grant, "name": args.name})
    return _call_admin_api(args, "POST", "/api/admin/keys", body=body)


def revoke_token(args: argparse.Namespace) -> int:
    return _call_admin_api(args, "DELETE", f"/api/admin/tokens/{args.token_id}")


def token_id(value: str) -> str:
    """The 8-hex id of a token, from the id itself, its display form or the whole token."""
    value = value.strip()
    if re.fullmatch(r"[0-9a-f]{8}", value):
        return value
    match = re.match(r"ik_(?:sdk|live)_([0-9a-f]{8})(?![0-9a-f])", value)
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
    base_url = (
        args.base_url or os.environ.get("INFERENCEKEY_BASE_URL") or DEFAULT_BASE_URL
    ).rstrip("/")
    admin_token = _admin_token(args)
    if admin_token is None:
        return 1
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
        return 1
    if response.is_error:
        print(f"error: {_error_message(response)}", file=sys.stderr)
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0


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


# --- argument parsing -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferencekey", description="Self-hosted InferenceKey: run and administer the Manager."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_manager_command(commands)
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
    manager.set_defaults(command=run_manager)


def _add_admin_commands(commands: Any) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--base-url", help=f"the Manager's URL (default {DEFAULT_BASE_URL})")
    connection.add_argument("--admin-token", help="default: the data dir's admin-token file")
    connection.add_argument("--data-dir", type=Path, help="where to find the admin-token file")

    admin = commands.add_parser("admin", help="administer projects, tokens and keys")
    resources = admin.add_subparsers(required=True, metavar="RESOURCE")

    def action(group: Any, name: str, command: Command, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(
            name, parents=[connection], help=help_text
        )
        parser.set_defaults(command=command)
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


if __name__ == "__main__":
    raise SystemExit(main())
