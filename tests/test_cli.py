"""The `inferencekey` command line, against a real Manager."""

from __future__ import annotations

import asyncio
import contextlib
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
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ik_command import main
from ik_command import parse_args as parse_cli
from ik_contracts.engines import BUILTIN_BACKENDS, ENGINES
from manager.db.migrate import upgrade_to_head
from manager.settings import Settings
from tests.support import create_database, drop_database, new_admin_token, run_sql
from tests.webhook_receiver import receiving, terminal_delivery
from worker_agent.cli import AGENT_ENV, AgentConfigError, agent_config_from_args
from worker_agent.config import AgentConfig

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
    code, out, _ = cli("project", "list", "--json")

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

    code, out, _ = cli("token", "list", "--project", project_slug, "--json")

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


def test_worker_create_prints_an_agent_token_once_for_the_shared_pool(cli: RunCli) -> None:
    code, out, err = cli("worker", "create", "--name", "gpu-box-1")

    assert code == 0, err
    worker = json.loads(out)
    assert worker["id"].startswith("wrk_")
    assert worker["name"] == "gpu-box-1"
    assert worker["pool"] == "shared"
    assert worker["token"].startswith("ik_agent_")
    assert out.count(worker["token"]) == 1


def test_worker_create_for_a_project_makes_it_private(cli: RunCli, project_slug: str) -> None:
    _, projects, _ = cli("project", "list", "--json")
    project_id = next(
        project["id"] for project in json.loads(projects)["projects"]
        if project["slug"] == project_slug
    )  # fmt: skip

    code, out, err = cli("worker", "create", "--project", project_slug)

    assert code == 0, err
    worker = json.loads(out)
    assert worker["pool"] == "private"
    assert worker["project_id"] == project_id
    assert worker["token"].startswith("ik_agent_")


def test_worker_list_shows_a_created_worker_without_its_token(cli: RunCli) -> None:
    _, created, _ = cli("worker", "create", "--name", "listed")
    worker = json.loads(created)

    code, out, err = cli("worker", "list", "--json")

    assert code == 0, err
    listed = {item["id"]: item for item in json.loads(out)["workers"]}
    assert listed[worker["id"]]["name"] == "listed"
    assert "token" not in listed[worker["id"]]
    assert worker["token"] not in out


def test_listings_print_a_table_by_default(cli: RunCli, project_slug: str) -> None:
    code, out, err = cli("project", "list")

    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["SLUG", "ID", "NAME", "CREATED"]
    assert any(row.split()[0] == project_slug for row in rows)


def test_workload_list_and_status_show_every_projects_workloads_and_phases(
    cli: RunCli, manager: Any, admin: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    project = admin.post("/api/admin/projects", json={"slug": _unique_slug()}).json()["slug"]
    token = admin.post("/api/admin/tokens", json={"project": project}).json()["token"]
    created = httpx.post(
        f"{manager.url}/api/projects/{project}/workloads",
        json={"name": "Listed", "slug": "listed", "backend": "vllm", "model_name": "m"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201, created.text

    code, out, err = cli("workload", "list")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["PROJECT", "WORKLOAD", "BACKEND", "PHASE", "READY", "REASON"]
    (row,) = [r.split() for r in rows if r.split()[0] == project]
    # READY is ready/desired; desired is 1 as soon as the reconciler has seen the workload.
    assert row[1:3] == ["listed", "vllm"] and row[4] in ("0/0", "0/1")

    code, out, err = cli("workload", "list", "--json")
    (listed,) = [w for w in json.loads(out)["workloads"] if w["project_slug"] == project]
    assert {"phase", "reason", "ready_replicas", "desired_replicas"} <= set(listed["status"])

    code = main(["status", "--base-url", manager.url, "--admin-token", manager.admin_token])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"Manager    {manager.url}  ok")
    assert "Workers " in out and "Workloads " in out
    assert any(line.split()[:2] == [project, "listed"] for line in out.splitlines())
    code = main(
        ["status", "--json", "--base-url", manager.url, "--admin-token", manager.admin_token]
    )
    status = json.loads(capsys.readouterr().out)
    assert status["manager"] == {"url": manager.url, "healthy": True}
    assert any(w["slug"] == "listed" for w in status["workloads"])


def test_endpoints_shows_and_switches_a_workloads_toggles(
    manager: Any, admin: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    project = admin.post("/api/admin/projects", json={"slug": _unique_slug()}).json()["slug"]
    token = admin.post("/api/admin/tokens", json={"project": project}).json()["token"]
    created = httpx.post(
        f"{manager.url}/api/projects/{project}/workloads",
        json={"name": "Toggled", "slug": "toggled", "backend": "llamacpp", "model_name": "m"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201, created.text
    connection = ["--base-url", manager.url, "--admin-token", manager.admin_token]

    def endpoints(*argv: str) -> tuple[int, str, str]:
        code = main(["endpoints", f"{project}/toggled", *argv, *connection])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = endpoints()
    assert code == 0, err
    assert [line.split() for line in out.splitlines()] == [
        ["ENDPOINT", "ON"],
        ["jobs", "on"],
        ["chat", "on"],
        ["completions", "on"],
    ]
    code, out, err = endpoints("--off", "jobs", "--off", "completions", "--json")
    assert code == 0, err
    assert json.loads(out)["endpoints"] == {"jobs": False, "chat": True, "completions": False}
    code, out, err = endpoints("--on", "jobs")
    assert code == 0 and ["jobs", "on"] in [line.split() for line in out.splitlines()]

    code, out, err = endpoints("--off", "images")
    assert code == 1 and "'images' is not an endpoint of a text2text workload" in err
    code, out, err = endpoints("--on", "chat", "--off", "chat")
    assert code == 2 and "both --on and --off for chat" in err
    code = main(["endpoints", "toggled", *connection])
    assert code == 2 and "PROJECT/WORKLOAD" in capsys.readouterr().err
    code = main(["endpoints", f"{project}/nope", *connection])
    assert code == 1 and 'workload "nope" not found' in capsys.readouterr().err


def test_webhooks_commands_add_list_mute_test_delete_and_redeliver(
    manager: Any, admin: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    created_project = admin.post("/api/admin/projects", json={"slug": _unique_slug()}).json()
    project = created_project["slug"]
    token = admin.post("/api/admin/tokens", json={"project": project}).json()["token"]
    workload = httpx.post(
        f"{manager.url}/api/projects/{project}/workloads",
        json={"name": "Hooked", "slug": "hooked", "backend": "llamacpp", "model_name": "m"},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    connection = ["--base-url", manager.url, "--admin-token", manager.admin_token]

    def webhooks(action: str, *argv: str) -> tuple[int, str, str]:
        code = main(["webhooks", action, f"{project}/hooked", *argv, *connection])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    with receiving() as receiver:
        code, out, err = webhooks("add", receiver.url())
        assert code == 0, err
        added, shown_once, secret = out.splitlines()
        hook_id = added.split()[2]
        assert added == f"Added webhook {hook_id} (on): {receiver.url()}"
        assert "shown once" in shown_once and secret.startswith("whsec_")

        code, out, err = webhooks("list")
        assert code == 0, err
        header, row = out.splitlines()
        assert header.split() == ["WEBHOOK", "URL", "STATE", "SECRET", "CREATED"]
        assert row.split()[:4] == [hook_id, receiver.url(), "on", f"{secret[:12]}…"]
        assert secret not in out

        code, out, err = webhooks("test", hook_id)
        assert code == 0 and out.startswith("delivered: HTTP 200 in "), (out, err)
        assert receiver.received[0].headers["x-inferencekey-event"] == "ping"

        code, out, _ = webhooks("mute", hook_id)
        assert code == 0 and out.startswith(f"{hook_id} muted")
        code, out, _ = webhooks("list", "--json")
        assert json.loads(out)["webhooks"][0]["enabled"] is False and secret not in out
        code, out, _ = webhooks("unmute", hook_id)
        assert code == 0 and out.startswith(f"{hook_id} unmuted")

    code, out, _ = webhooks("deliveries")
    assert (code, out.strip()) == (0, "no deliveries")
    _, delivery_id = asyncio.run(
        terminal_delivery(manager.database_url, created_project["id"], workload["id"], hook_id)
    )
    code, out, _ = webhooks("deliveries", "--status", "terminal")
    row = out.splitlines()[1].split()
    assert code == 0 and (row[0], row[2], row[4]) == (delivery_id, hook_id, "terminal")
    code, out, _ = webhooks("redeliver", delivery_id)
    assert code == 0 and out.startswith(f"{delivery_id} is pending again")
    code, _, err = webhooks("redeliver", delivery_id)
    assert code == 1 and "only a terminal or skipped delivery" in err

    code, out, _ = webhooks("delete", hook_id)
    assert code == 0 and out.startswith(f"deleted {hook_id}")
    code, out, _ = webhooks("list")
    assert out.strip() == "no webhook destinations"
    code, _, err = webhooks("add", "https://user:pw@example.com/")
    assert code == 1 and "must not carry credentials" in err
    code = main(["webhooks", "list", "hooked", *connection])
    assert code == 2 and "PROJECT/WORKLOAD" in capsys.readouterr().err


def test_gpu_list_prints_the_gpu_resources(cli: RunCli) -> None:
    code, out, err = cli("gpu", "list", "--json")

    assert code == 0, err
    assert isinstance(json.loads(out)["gpu_resources"], list)


def test_token_revoke_accepts_a_worker_token_without_printing_it(cli: RunCli) -> None:
    _, created, _ = cli("worker", "create")
    token = json.loads(created)["token"]

    code, out, err = cli("token", "revoke", token)

    assert code == 0, err
    revoked = json.loads(out)
    assert revoked["kind"] == "agent"
    assert revoked["revoked_at"] is not None
    assert token not in out + err


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
    data_dir = private_dir / "data"
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("INFERENCEKEY_")}
    stdout_path, stderr_path = private_dir / "stdout", private_dir / "stderr"
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "ik_command", "manager", "--port", str(port),
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


@pytest.mark.parametrize("processes", ["1", "2"])
def test_manager_says_which_database_it_cannot_reach_without_its_password(
    private_dir: Path, processes: str
) -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:{_free_port()}/inferencekey"
    env = {key: value for key, value in os.environ.items() if not key.startswith("INFERENCEKEY_")}
    finished = subprocess.run(
        [sys.executable, "-m", "ik_command", "manager", "--port", str(_free_port()),
         "--database-url", url, "--data-dir", str(private_dir), "--processes", processes],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert finished.returncode == 1, finished.stderr
    assert finished.stderr.startswith(
        f"error: cannot connect to the database {url.replace('hunter2', '***')}: "
    ), finished.stderr
    assert "hunter2" not in finished.stdout + finished.stderr
    assert "Traceback" not in finished.stderr


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("INFERENCEKEY_DB_POOL_SIZE", "twenty", "INFERENCEKEY_DB_POOL_SIZE must be a number"),
        ("INFERENCEKEY_PROCESSES", "0", "INFERENCEKEY_PROCESSES must be at least 1"),
        ("INFERENCEKEY_PORT", "80a", "INFERENCEKEY_PORT must be a port number"),
        ("INFERENCEKEY_PORT", "70000", "INFERENCEKEY_PORT must be a port from 0 to 65535"),
        ("INFERENCEKEY_METRICS_ADDRESS", "localhost", "INFERENCEKEY_METRICS_ADDRESS must be"),
        ("INFERENCEKEY_METRICS_ADDRESS", "127.0.0.1:9x", "INFERENCEKEY_METRICS_ADDRESS must be"),
        ("INFERENCEKEY_JOB_LEASE_S", "inf", "INFERENCEKEY_JOB_LEASE_S must be at most"),
        ("INFERENCEKEY_WORKER_NOT_READY_AFTER_S", "1e12", "must be at most 1e+09"),
        ("INFERENCEKEY_RECONCILE_INTERVAL_S", "nan", "must be at least"),
        ("INFERENCEKEY_HTTP_MAX_HEADER_BYTES", "lots", "INFERENCEKEY_HTTP_MAX_HEADER_BYTES"),
        ("INFERENCEKEY_ADMIN_TOKEN", "ik_admin_short", "INFERENCEKEY_ADMIN_TOKEN must look like"),
    ],
)
def test_manager_with_a_malformed_variable_exits_2_naming_it(
    private_dir: Path, variable: str, value: str, said: str
) -> None:
    env = {key: v for key, v in os.environ.items() if not key.startswith("INFERENCEKEY_")}
    env[variable] = value
    finished = subprocess.run(
        [sys.executable, "-m", "ik_command", "manager", "--data-dir", str(private_dir)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.startswith("inferencekey: error: "), finished.stderr
    assert said in finished.stderr
    assert "Traceback" not in finished.stderr
    assert not (private_dir / "postgres").exists()  # refused before anything started


def test_manager_port_flag_out_of_range_is_a_usage_error(private_dir: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "ik_command", "manager", "--port", "70000",
         "--data-dir", str(private_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert finished.returncode == 2, finished.stderr
    assert "argument --port: must be a port from 0 to 65535, got '70000'" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_manager_logs_json_lines_that_name_the_workload_they_are_about(
    private_dir: Path, database_url: str, manager: Any
) -> None:
    port = _free_port()
    admin_token = f"ik_admin_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex}{uuid.uuid4().hex}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("INFERENCEKEY_")}
    env["INFERENCEKEY_ADMIN_TOKEN"] = admin_token
    stderr_path = private_dir / "stderr"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "ik_command", "manager", "--port", str(port),
             "--database-url", database_url, "--data-dir", str(private_dir),
             "--log-format", "json"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        admin = {"Authorization": f"Bearer {admin_token}"}
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, stderr_path.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the Manager never answered"
                time.sleep(0.2)
        slug = _unique_slug()
        httpx.post(f"{base}/api/admin/projects", json={"slug": slug}, headers=admin)
        token = httpx.post(
            f"{base}/api/admin/tokens", json={"project": slug}, headers=admin
        ).json()["token"]
        created = httpx.post(
            f"{base}/api/projects/{slug}/workloads",
            json={"name": "Logged", "slug": "logged", "backend": "vllm", "model_name": "m"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    entries = [json.loads(line) for line in stderr_path.read_text().splitlines() if line]
    assert entries, "nothing was logged"
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    (about,) = [e for e in entries if e["message"].startswith("created workload")]
    assert (about["project"], about["workload"], about["workload_id"]) == (
        slug,
        "logged",
        created["id"],
    )
    assert token not in stderr_path.read_text()


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


# --- inferencekey agent: settings only; the agent itself runs in tests/agent ------------------

AGENT_TOKEN = "ik_agent_0123abcd_" + "5e" * 32
MANAGER_URL = "http://manager.test:8080"


@pytest.fixture
def agent_runs(monkeypatch: pytest.MonkeyPatch) -> list[AgentConfig]:
    """Stands in for worker_agent.agent.run and clears the agent's variables from os.environ."""
    for variable in AGENT_ENV.values():
        monkeypatch.delenv(variable, raising=False)
    runs: list[AgentConfig] = []
    monkeypatch.setitem(sys.modules, "worker_agent.agent", types.SimpleNamespace(run=runs.append))
    return runs


def _config(*flags: str, **environ: str) -> AgentConfig:
    return agent_config_from_args(parse_cli(["agent", *flags]), environ)


def _minimal_env(**more: str) -> dict[str, str]:
    return {
        "INFERENCEKEY_MANAGER_URL": MANAGER_URL,
        "INFERENCEKEY_AGENT_TOKEN": AGENT_TOKEN,
        **more,
    }


def _agent_exit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *flags: str, **env: str
) -> tuple[int, str]:
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    code = main(["agent", *flags])
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err


def test_agent_settings_default_to_agent_config() -> None:
    config = _config(**_minimal_env())

    assert config == AgentConfig(manager_url=MANAGER_URL, token=AGENT_TOKEN)


def test_agent_settings_come_from_the_environment() -> None:
    config = _config(
        **_minimal_env(
            INFERENCEKEY_AGENT_RUNTIME="process",
            INFERENCEKEY_AGENT_LISTEN="10.0.0.5:9000",
            INFERENCEKEY_AGENT_ADVERTISE_URL="http://gpu-box-1.internal:9000/",
            INFERENCEKEY_AGENT_STATE_DIR="/var/lib/inferencekey-agent",
            INFERENCEKEY_MODEL_DIR="/srv/models",
            INFERENCEKEY_AGENT_PORT_RANGE="42000-42099",
            INFERENCEKEY_SIMULATE_GPUS="2xNVIDIA A100-SXM4-80GB",
            INFERENCEKEY_ENGINE_IMAGES="vllm=vllm/vllm-openai:v0.6.3,llamacpp=ghcr.io/x/llama:1,",
            INFERENCEKEY_ENGINE_BINARIES="vllm=/opt/vllm/bin/vllm",
            INFERENCEKEY_AGENT_DOCKER_NETWORK="host",
        )
    )

    assert config.runtime == "process"
    assert (config.listen_host, config.listen_port) == ("10.0.0.5", 9000)
    assert config.advertise_url == "http://gpu-box-1.internal:9000"
    assert config.state_dir == Path("/var/lib/inferencekey-agent")
    assert config.model_dir == Path("/srv/models")
    assert config.port_range == (42000, 42099)
    assert config.simulate_gpus == "2xNVIDIA A100-SXM4-80GB"
    assert config.images == {"vllm": "vllm/vllm-openai:v0.6.3", "llamacpp": "ghcr.io/x/llama:1"}
    assert config.binaries == {"vllm": "/opt/vllm/bin/vllm"}
    assert config.docker_network_mode == "host"


def test_agent_flags_win_over_the_environment() -> None:
    environ = _minimal_env(
        INFERENCEKEY_AGENT_RUNTIME="docker",
        INFERENCEKEY_AGENT_LISTEN="10.0.0.5:9000",
        INFERENCEKEY_AGENT_PORT_RANGE="42000-42099",
        INFERENCEKEY_MODEL_DIR="/srv/models",
        INFERENCEKEY_ENGINE_IMAGES="vllm=from-env/vllm,sglang=from-env/sglang",
    )
    other_token = "ik_agent_fedcba98_" + "a1" * 32

    config = _config(
        "--manager", "https://other-manager.test/", "--token", other_token,
        "--runtime", "process", "--listen", "[::]:8091", "--port-range", "43000-43999",
        "--model-dir", "/data/models", "--image", "vllm=from-flag/vllm",
        "--image", "ollama=from-flag/ollama", "--docker-network", "host",
        **environ,
    )  # fmt: skip

    assert config.manager_url == "https://other-manager.test"
    assert config.token == other_token
    assert config.runtime == "process"
    assert (config.listen_host, config.listen_port) == ("::", 8091)
    assert config.port_range == (43000, 43999)
    assert config.model_dir == Path("/data/models")
    # Image and binary overrides merge entry by entry; a flag wins for a backend both name.
    assert config.images == {
        "vllm": "from-flag/vllm",
        "sglang": "from-env/sglang",
        "ollama": "from-flag/ollama",
    }
    assert config.docker_network_mode == "host"


def test_agent_empty_variables_count_as_unset() -> None:
    config = _config(**_minimal_env(INFERENCEKEY_AGENT_RUNTIME="", INFERENCEKEY_SIMULATE_GPUS=""))

    assert config.runtime == AgentConfig.runtime
    assert config.simulate_gpus is None


def test_agent_listen_without_a_host_listens_on_all_interfaces() -> None:
    config = _config("--listen", ":9001", **_minimal_env())

    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 9001)


def test_agent_binary_paths_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    config = _config("--binary", "llama-server=bin/llama-server", **_minimal_env())

    assert config.binaries == {"llama-server": str(tmp_path / "bin" / "llama-server")}


def test_agent_backends_are_the_engines_the_agent_has() -> None:
    assert set(BUILTIN_BACKENDS) == set(ENGINES)


def test_agent_command_runs_the_agent_with_its_settings(
    agent_runs: list[AgentConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCEKEY_AGENT_TOKEN", AGENT_TOKEN)

    code = main(["agent", "--manager", MANAGER_URL, "--simulate-gpus", "1xNVIDIA L4"])

    assert code == 0
    assert agent_runs == [
        AgentConfig(manager_url=MANAGER_URL, token=AGENT_TOKEN, simulate_gpus="1xNVIDIA L4")
    ]


@pytest.mark.parametrize(
    "token", ["ik_sdk_0123abcd_" + "5e" * 32, "ik_live_0123abcd_" + "5e" * 32, "5e" * 40]
)
def test_agent_token_of_another_kind_exits_2_without_echoing_it(
    agent_runs: list[AgentConfig],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    token: str,
) -> None:
    code, err = _agent_exit(capsys, monkeypatch, "--manager", MANAGER_URL, "--token", token)

    assert code == 2
    assert "must start with ik_agent_" in err
    assert "inferencekey admin worker create" in err
    assert token not in err
    assert "0123abcd" not in err and "5e5e" not in err
    assert agent_runs == []


def test_agent_token_from_the_environment_is_checked_too(
    agent_runs: list[AgentConfig],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "ik_admin_0123abcd_" + "5e" * 32

    code, err = _agent_exit(
        capsys, monkeypatch, INFERENCEKEY_MANAGER_URL=MANAGER_URL, INFERENCEKEY_AGENT_TOKEN=token
    )

    assert code == 2
    assert "INFERENCEKEY_AGENT_TOKEN" in err and "ik_agent_" in err
    assert token not in err and "0123abcd" not in err
    assert agent_runs == []


def test_agent_without_a_token_exits_2_saying_where_to_get_one(
    agent_runs: list[AgentConfig],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, err = _agent_exit(capsys, monkeypatch, "--manager", MANAGER_URL)

    assert code == 2
    assert "INFERENCEKEY_AGENT_TOKEN" in err
    assert "inferencekey admin worker create" in err
    assert agent_runs == []


@pytest.mark.parametrize(
    "port_range", ["41999-41000", "41000-41000", "41000", "0-100", "41000-70000", "a-b", "41000-"]
)
def test_agent_bad_port_range_exits_2(
    agent_runs: list[AgentConfig],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    port_range: str,
) -> None:
    code, err = _agent_exit(capsys, monkeypatch, "--port-range", port_range, **_minimal_env())

    assert code == 2
    assert "--port-range must be LOW-HIGH" in err
    assert repr(port_range) in err
    assert AGENT_TOKEN not in err
    assert agent_runs == []


def test_agent_bad_port_range_in_the_environment_names_the_variable() -> None:
    with pytest.raises(AgentConfigError, match="INFERENCEKEY_AGENT_PORT_RANGE must be LOW-HIGH"):
        _config(**_minimal_env(INFERENCEKEY_AGENT_PORT_RANGE="9-3"))


def test_agent_listen_port_inside_the_engine_port_range_is_refused() -> None:
    with pytest.raises(AgentConfigError, match="listen port 28500 lies inside"):
        _config("--listen", "0.0.0.0:28500", **_minimal_env())


@pytest.mark.parametrize(
    ("flags", "environ"),
    [
        (["--image", "tgi=ghcr.io/huggingface/text-generation-inference"], {}),
        ([], {"INFERENCEKEY_ENGINE_IMAGES": "vllm=vllm/vllm-openai,tgi=tgi:latest"}),
    ],
)
def test_agent_image_for_an_unknown_backend_exits_2(
    agent_runs: list[AgentConfig],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    environ: dict[str, str],
) -> None:
    code, err = _agent_exit(capsys, monkeypatch, *flags, **_minimal_env(**environ))

    assert code == 2
    assert "unknown backend 'tgi'" in err
    assert "ollama, vllm, vllm-omni, sglang, llamacpp" in err
    assert agent_runs == []


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        (["--image", "vllm"], {}, "--image takes BACKEND=IMAGE"),
        ([], {"INFERENCEKEY_ENGINE_IMAGES": "vllm="}, "INFERENCEKEY_ENGINE_IMAGES takes"),
        (["--binary", "/usr/bin/vllm=/opt/vllm"], {}, "must be a program name"),
        ([], {"INFERENCEKEY_ENGINE_BINARIES": "vllm"}, "INFERENCEKEY_ENGINE_BINARIES takes"),
        (["--listen", "8090"], {}, "--listen must be HOST:PORT"),
        (["--listen", "0.0.0.0:99999"], {}, "--listen must be HOST:PORT"),
        (["--manager", "manager.test:8080"], {}, "--manager must be an http:// or https:// URL"),
        (["--advertise-url", "ftp://x"], {}, "--advertise-url must be an http"),
        ([], {"INFERENCEKEY_AGENT_RUNTIME": "podman"}, "INFERENCEKEY_AGENT_RUNTIME must be one"),
        ([], {"INFERENCEKEY_AGENT_DOCKER_NETWORK": "none"}, "must be one of bridge, host"),
        (["--simulate-gpus", "0"], {}, "bad simulated GPU spec"),
    ],
)
def test_agent_malformed_settings_raise_a_message_naming_the_setting(
    flags: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(AgentConfigError) as error:
        _config(*flags, **_minimal_env(**environ))

    assert message in str(error.value)
    assert AGENT_TOKEN not in str(error.value)


def test_agent_without_a_manager_url_is_refused() -> None:
    with pytest.raises(AgentConfigError, match="INFERENCEKEY_MANAGER_URL"):
        _config(INFERENCEKEY_AGENT_TOKEN=AGENT_TOKEN)


STOP_ENGINES = "INFERENCEKEY_AGENT_STOP_ENGINES_ON_EXIT"


@pytest.mark.parametrize(
    ("flags", "environ", "stops_engines"),
    [
        ([], {}, False),
        (["--stop-engines-on-exit"], {}, True),
        ([], {STOP_ENGINES: "1"}, True),
        ([], {STOP_ENGINES: "True"}, True),
        ([], {STOP_ENGINES: "off"}, False),
        (["--no-stop-engines-on-exit"], {STOP_ENGINES: "yes"}, False),
        (["--stop-engines-on-exit"], {STOP_ENGINES: "0"}, True),
    ],
)
def test_agent_stops_its_engines_on_exit_only_when_told(
    flags: list[str], environ: dict[str, str], stops_engines: bool
) -> None:
    assert _config(*flags, **_minimal_env(**environ)).stop_engines_on_exit is stops_engines


def test_agent_stop_engines_on_exit_variable_must_be_a_yes_or_no() -> None:
    with pytest.raises(AgentConfigError, match=f"{STOP_ENGINES} must be 1, true, yes or on"):
        _config(**_minimal_env(**{STOP_ENGINES: "maybe"}))


def test_agent_unknown_runtime_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_cli(["agent", "--runtime", "podman"])

    assert exit_info.value.code == 2


def test_agent_simulated_cuda_version_comes_from_the_flag_or_the_environment() -> None:
    assert _config("--simulate-cuda-version", "13.0", **_minimal_env()).simulate_cuda_version == (
        "13.0"
    )
    environ = _minimal_env(INFERENCEKEY_SIMULATE_CUDA_VERSION="12.8")
    assert _config(**environ).simulate_cuda_version == "12.8"
    with pytest.raises(
        AgentConfigError, match=r"expected a CUDA version like 12\.4, got 'thirteen'"
    ):
        _config("--simulate-cuda-version", "thirteen", **_minimal_env())


def test_manager_with_an_admin_token_whose_id_another_credential_holds_says_so(
    private_dir: Path,
) -> None:
    # Only the database can tell: refused before the server starts, in a line, with exit 1.
    url = create_database()
    try:
        upgrade_to_head(url)
        admin_token = new_admin_token()
        run_sql(
            url,
            "INSERT INTO tokens (id, kind, digest, name) VALUES ($1, 'sdk', $2, 'squatter')",
            admin_token.split("_")[2],
            b"\0" * 32,
        )
        env = {key: v for key, v in os.environ.items() if not key.startswith("INFERENCEKEY_")}
        env["INFERENCEKEY_ADMIN_TOKEN"] = admin_token
        finished = subprocess.run(
            [sys.executable, "-m", "ik_command", "manager", "--port", str(_free_port()),
             "--database-url", url, "--data-dir", str(private_dir)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert finished.returncode == 1, finished.stderr
        assert finished.stderr.startswith(
            "error: INFERENCEKEY_ADMIN_TOKEN's id is taken by another credential in this "
            "database; generate one with: "
        ), finished.stderr
        assert "Traceback" not in finished.stderr
        assert admin_token not in finished.stdout + finished.stderr
        # The same token where nothing holds its id starts (and is then the admin's).
        run_sql(url, "DELETE FROM tokens WHERE name = 'squatter'")
        started = subprocess.Popen(
            [sys.executable, "-m", "ik_command", "manager", "--port", str(port := _free_port()),
             "--database-url", url, "--data-dir", str(private_dir)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    answer = httpx.get(
                        f"http://127.0.0.1:{port}/api/admin/projects",
                        headers={"Authorization": f"Bearer {admin_token}"},
                    )
                    assert answer.status_code == 200, answer.text
                    break
                assert started.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            started.terminate()
            started.wait(timeout=30)
    finally:
        drop_database(url)


def test_the_reconciler_process_comes_from_the_flag_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from manager.cli import manager_settings

    def settings(*flags: str, environ: str | None = None) -> Settings:
        if environ is None:
            monkeypatch.delenv("INFERENCEKEY_RECONCILER_PROCESS", raising=False)
        else:
            monkeypatch.setenv("INFERENCEKEY_RECONCILER_PROCESS", environ)
        return manager_settings(parse_cli(["manager", *flags]))

    assert not settings().reconciler_process
    assert not settings().supervised
    assert settings("--reconciler-process").supervised
    assert settings(environ="yes").reconciler_process
    assert not settings("--no-reconciler-process", environ="yes").reconciler_process
    assert settings("--reconciler-process", environ="no").reconciler_process
    # With several serving processes the reconciler has its own anyway.
    assert settings("--processes", "2", "--no-reconciler-process").supervised
