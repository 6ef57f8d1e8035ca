"""The `inferencekey` command line, against a real Manager."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from manager.cli import main
from manager.embedded_db import EmbeddedPostgresError, find_postgres_bin_dir

REPO_ROOT = Path(__file__).resolve().parents[1]

RunCli = Callable[..., tuple[int, str, str]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _unique_slug() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def private_dir() -> Iterator[Path]:
    # Not tmp_path: pytest resets its root to 0700 whenever another session starts, which
    # would lock out the unprivileged account the embedded Postgres runs as under root.
    path = Path(tempfile.mkdtemp(prefix="inferencekey-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cli(manager: Any, capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run `inferencekey admin ...` in-process against the test Manager."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(
            ["admin", *argv, "--base-url", manager.url, "--admin-token", manager.admin_token]
        )
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def project_slug(cli: RunCli) -> str:
    slug = _unique_slug()
    code, _, err = cli("project", "create", slug)
    assert code == 0, err
    return slug


def test_project_create_prints_the_project_as_json(cli: RunCli) -> None:
    slug = _unique_slug()

    code, out, err = cli("project", "create", slug, "--name", "CLI test")

    assert code == 0, err
    project = json.loads(out)
    assert project["id"].startswith("proj_")
    assert project["slug"] == slug
    assert project["name"] == "CLI test"


def test_project_list_includes_a_created_project(cli: RunCli, project_slug: str) -> None:
    code, out, _ = cli("project", "list")

    assert code == 0
    assert project_slug in [project["slug"] for project in json.loads(out)["projects"]]


def test_token_create_prints_the_sdk_token_once(cli: RunCli, project_slug: str) -> None:
    code, out, _ = cli("token", "create", "--project", project_slug, "--name", "ci")

    assert code == 0
    token = json.loads(out)
    assert token["token"].startswith("ik_sdk_")
    assert token["kind"] == "sdk"
    assert out.count(token["token"]) == 1


def test_token_create_read_only_has_only_the_read_scope(cli: RunCli, project_slug: str) -> None:
    code, out, _ = cli("token", "create", "--project", project_slug, "--read-only")

    assert code == 0
    assert json.loads(out)["scopes"] == ["workload:read"]


def test_token_list_never_prints_a_secret(cli: RunCli, project_slug: str) -> None:
    _, created, _ = cli("token", "create", "--project", project_slug)
    secret = json.loads(created)["token"]

    code, out, _ = cli("token", "list", "--project", project_slug)

    assert code == 0
    assert secret not in out
    assert json.loads(created)["id"] in [token["id"] for token in json.loads(out)["tokens"]]


def test_key_create_for_named_workloads_grants_those_workloads(
    cli: RunCli, project_slug: str
) -> None:
    code, out, err = cli(
        "key", "create", "--project", project_slug, "--workload", "support-bot",
        "--workload", "embedder",
    )  # fmt: skip

    assert code == 0, err
    key = json.loads(out)
    assert key["token"].startswith("ik_live_")
    assert sorted(key["grants"]) == [f"{project_slug}/embedder", f"{project_slug}/support-bot"]


def test_key_create_for_all_workloads_grants_the_project_wildcard(
    cli: RunCli, project_slug: str
) -> None:
    code, out, err = cli("key", "create", "--project", project_slug, "--all")

    assert code == 0, err
    key = json.loads(out)
    assert key["kind"] == "live"
    assert key["grants"] == [f"{project_slug}/*"]


def test_key_create_with_both_workload_and_all_is_a_usage_error(
    cli: RunCli, project_slug: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("key", "create", "--project", project_slug, "--workload", "bot", "--all")

    assert exit_info.value.code == 2


def test_token_revoke_by_id(cli: RunCli, project_slug: str) -> None:
    _, created, _ = cli("token", "create", "--project", project_slug)
    token_id = json.loads(created)["id"]

    code, out, _ = cli("token", "revoke", token_id)

    assert code == 0
    revoked = json.loads(out)
    assert revoked["id"] == token_id
    assert revoked["revoked_at"] is not None


def test_token_revoke_by_display_form(cli: RunCli, project_slug: str) -> None:
    _, created, _ = cli("key", "create", "--project", project_slug, "--all")
    key = json.loads(created)

    code, out, _ = cli("token", "revoke", key["display"])

    assert code == 0
    assert json.loads(out)["id"] == key["id"]
    assert json.loads(out)["revoked_at"] is not None


def test_token_revoke_by_whole_token_does_not_print_it(cli: RunCli, project_slug: str) -> None:
    _, created, _ = cli("token", "create", "--project", project_slug)
    token = json.loads(created)

    code, out, err = cli("token", "revoke", token["token"])

    assert code == 0
    assert json.loads(out)["id"] == token["id"]
    assert token["token"] not in out + err


def test_unknown_project_exits_1_with_the_managers_message(cli: RunCli, manager: Any) -> None:
    expected = httpx.post(
        f"{manager.url}/api/admin/tokens",
        json={"project": "no-such-project"},
        headers={"Authorization": f"Bearer {manager.admin_token}"},
    ).json()["message"]

    code, out, err = cli("token", "create", "--project", "no-such-project")

    assert code == 1
    assert out == ""
    assert err.strip() == f"error: {expected}"


def test_unreachable_manager_exits_1_naming_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_free_port()}"

    code = main(["admin", "project", "list", "--base-url", url, "--admin-token", "ik_admin_x"])

    assert code == 1
    assert url in capsys.readouterr().err


def test_manager_command_runs_on_embedded_postgres_and_stops_it_on_sigterm(
    private_dir: Path,
) -> None:
    try:
        find_postgres_bin_dir()
    except EmbeddedPostgresError as missing:
        pytest.skip(str(missing))
    data_dir = private_dir / "data"
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("INFERENCEKEY_")}
    stdout_path, stderr_path = private_dir / "stdout", private_dir / "stderr"
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "manager.cli", "manager", "--port", str(port),
             "--data-dir", str(data_dir)],
            cwd=REPO_ROOT, env=env, stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:
        admin_token = _wait_until_serving(process, port, data_dir, stderr_path)

        assert stat.S_IMODE((data_dir / "admin-token").stat().st_mode) == 0o600
        assert stdout_path.read_text().count(admin_token) == 1

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def _wait_until_serving(
    process: subprocess.Popen[bytes], port: int, data_dir: Path, stderr_path: Path
) -> str:
    """The admin token, once `GET /api/admin/projects` answers 200 with it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"manager exited:\n{stderr_path.read_text()[-3000:]}"
        token_file = data_dir / "admin-token"
        if token_file.exists():
            token = token_file.read_text().strip()
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/api/admin/projects",
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 200:
                return token
        time.sleep(0.5)
    raise AssertionError(f"manager not serving after 120 s:\n{stderr_path.read_text()[-3000:]}")
