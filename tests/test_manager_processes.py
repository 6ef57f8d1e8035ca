"""``inferencekey manager --processes N``: one Manager as N processes on one port, run as users
run it (the installed command): they share the port and the load, one leads the reconciler, the
metrics are gathered from all of them, a process that dies is replaced while the others serve, a
process that cannot start stops the Manager with a reason, and SIGTERM stops them all."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from manager.db.migrate import upgrade_to_head
from tests.support import (
    bearer,
    create_database,
    create_project,
    create_sdk_token,
    drop_database,
    free_port,
    metric,
    new_admin_token,
    run_sql,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = {"name": "Split", "slug": "split", "backend": "vllm", "model_name": "m"}


@pytest.fixture
def own_database() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


def children(pid: int) -> set[int]:
    """The Manager's serving processes: children of ``pid`` spawned by multiprocessing (not its
    resource tracker), from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses; split after the last ")".
        if int(stat.rpartition(")")[2].split()[1]) == pid and b"spawn_main" in command:
            found.add(int(entry.name))
    return found


def started_roles(log: str) -> dict[str, int]:
    """Each process role's pid, as the Manager's log last said it started."""
    found = re.findall(r"Manager (\w+ process(?: \d+)?) started \(pid (\d+)\)", log)
    return {role: int(pid) for role, pid in found}


class Started:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.process = process
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    started: list[Started] = []

    def run(*flags: str, **environ: str) -> Started:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCEKEY_")}
        env.update(environ)
        log = tmp_path / f"manager-{len(started)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "ik_command", "manager", "--port", str(port),
                 "--data-dir", str(tmp_path / "data"), *flags],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its processes are its group: stopped with it
            )  # fmt: skip
        started.append(Started(process, log, port))
        return started[-1]

    yield run
    for each in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(each.process.pid, signal.SIGKILL)
        each.process.wait()


def serving(started: Started) -> bool:
    assert started.process.poll() is None, started.text()[-3000:]
    try:
        return httpx.get(f"{started.url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_two_processes_share_the_port_one_leads_and_a_dead_one_is_replaced(
    start: object, own_database: str
) -> None:
    admin_token = new_admin_token()
    metrics_port = free_port()
    manager = start(  # type: ignore[operator]
        "--processes",
        "2",
        "--database-url",
        own_database,
        INFERENCEKEY_ADMIN_TOKEN=admin_token,
        INFERENCEKEY_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
        INFERENCEKEY_RECONCILE_INTERVAL_S="0.2",
    )
    wait_until(lambda: serving(manager), 90, "the Manager never answered")
    # Two serving processes and the reconciler's own.
    wait_until(lambda: len(children(manager.process.pid)) == 3, 30, "three processes")
    first = children(manager.process.pid)
    assert "(2 processes and the reconciler's own)" in manager.text()
    roles = started_roles(manager.text())
    assert set(roles) == {"serving process 0", "serving process 1", "reconciler process"}
    assert set(roles.values()) == first

    # Both processes answer on the one port: each new connection is accepted by one of them,
    # and the API works through whichever it is.
    admin = httpx.Client(base_url=manager.url, headers=bearer(admin_token), timeout=10)
    project = create_project(admin, "split")["slug"]
    token = create_sdk_token(admin, project)
    for n in range(20):
        with httpx.Client(base_url=manager.url, headers=bearer(token), timeout=10) as fresh:
            created = fresh.post(
                f"/api/projects/{project}/workloads", json={**WORKLOAD, "slug": f"split-{n}"}
            )
            assert created.status_code == 201, created.text
    listed = httpx.get(f"{manager.url}/api/projects/{project}/workloads", headers=bearer(token))
    assert len(listed.json()["workloads"]) == 20

    # The reconciler process heard of them and planned them: no worker, so it says so.
    def reason() -> str:
        shown = httpx.get(f"{manager.url}/api/workloads/split-19", headers=bearer(token))
        assert shown.status_code == 200, shown.text
        return shown.text

    wait_until(lambda: "no worker" in reason(), 30, "the reconciler planned the workload")

    # One Manager, so one leader among its processes; the metrics are those of both.
    def gathered() -> str:
        return httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text

    wait_until(lambda: metric(gathered(), "inferencekey_reconcile_leader") == 1, 30, "one leader")
    # The processes accept on one socket: its accept queue's limit, read by each, is one figure.
    limit = min(2048, int(Path("/proc/sys/net/core/somaxconn").read_text()))
    wait_until(
        lambda: metric(gathered(), "inferencekey_accept_queue_limit") == limit, 30, "the limit"
    )
    answered = metric(gathered(), "inferencekey_api_requests_total")
    # A scrape of some series by name gets those, gathered too (the bench reads only its own).
    named = httpx.get(
        f"http://127.0.0.1:{metrics_port}/metrics",
        params={"name[]": ["inferencekey_reconcile_leader", "inferencekey_api_requests_total"]},
        timeout=5,
    ).text
    assert metric(named, "inferencekey_reconcile_leader") == 1, named
    assert metric(named, "inferencekey_api_requests_total") >= answered, named
    assert "inferencekey_event_loop_lag_seconds" not in named, named
    assert answered >= 20 + 3, gathered()
    # /metrics on the main port, from whichever process answers, shows the same gathering.
    main_port = admin.get("/metrics")
    assert main_port.status_code == 200
    assert metric(main_port.text, "inferencekey_reconcile_leader") == 1
    assert metric(main_port.text, "inferencekey_api_requests_total") >= answered

    # A serving process killed outright: the other serves on, and the Manager starts another.
    victim = roles["serving process 0"]
    os.kill(victim, signal.SIGKILL)
    admin.close()  # its keep-alive connection may have been the killed process's: gone with it
    for _ in range(20):  # each on a new connection, accepted by a live process
        projects = httpx.get(f"{manager.url}/api/admin/projects", headers=bearer(admin_token))
        assert projects.status_code == 200
    wait_until(
        lambda: (
            len(children(manager.process.pid) - first) == 1
            and len(children(manager.process.pid)) == 3
        ),
        30,
        "a process started in place of the killed one",
    )
    assert re.search(
        rf"serving process 0 \(pid {victim}\) exited with signal SIGKILL", manager.text()
    )
    wait_until(lambda: serving(manager), 30, "serving after the replacement")

    # The reconciler killed: another takes its place and leads; its "leads" gauge went with it.
    os.kill(roles["reconciler process"], signal.SIGKILL)
    wait_until(
        lambda: started_roles(manager.text())["reconciler process"] != roles["reconciler process"],
        30,
        "a reconciler started in place of the killed one",
    )
    wait_until(
        lambda: metric(gathered(), "inferencekey_reconcile_leader") == 1,
        30,
        "one leader after the kill",
    )

    # SIGTERM stops every process, and the Manager exits 0.
    everyone = children(manager.process.pid)
    manager.process.send_signal(signal.SIGTERM)
    assert manager.process.wait(timeout=30) == 0, manager.text()[-3000:]
    for pid in everyone:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_the_reconciler_in_a_process_of_its_own_beside_one_serving_process(
    start: object, own_database: str
) -> None:
    admin_token = new_admin_token()
    metrics_port = free_port()
    manager = start(  # type: ignore[operator]
        "--database-url",
        own_database,
        INFERENCEKEY_RECONCILER_PROCESS="yes",
        INFERENCEKEY_ADMIN_TOKEN=admin_token,
        INFERENCEKEY_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
        INFERENCEKEY_RECONCILE_INTERVAL_S="0.2",
    )
    wait_until(lambda: serving(manager), 90, "the Manager never answered")
    wait_until(lambda: len(children(manager.process.pid)) == 2, 30, "two processes")
    assert "(1 process and the reconciler's own)" in manager.text()
    roles = started_roles(manager.text())
    assert set(roles) == {"serving process 0", "reconciler process"}
    assert set(roles.values()) == children(manager.process.pid)

    # The serving process takes the API; the reconciler's process plans what it wrote.
    with httpx.Client(base_url=manager.url, headers=bearer(admin_token), timeout=10) as admin:
        project = create_project(admin, "apart")["slug"]
        token = create_sdk_token(admin, project)
    with httpx.Client(base_url=manager.url, headers=bearer(token), timeout=10) as sdk:
        created = sdk.post(f"/api/projects/{project}/workloads", json={**WORKLOAD, "slug": "apart"})
        assert created.status_code == 201, created.text
        wait_until(
            lambda: "no worker" in sdk.get("/api/workloads/apart").text,
            30,
            "the reconciler process planned the workload",
        )
    gathered = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert metric(gathered, "inferencekey_reconcile_leader") == 1, gathered

    manager.process.send_signal(signal.SIGTERM)
    assert manager.process.wait(timeout=30) == 0, manager.text()[-3000:]


def test_processes_that_cannot_start_stop_the_manager_with_their_reason(
    start: object, own_database: str
) -> None:
    # What only a started process can find: the configured admin token's id is another
    # credential's in this database (a malformed token is refused before anything starts).
    admin_token = new_admin_token()
    upgrade_to_head(own_database)
    run_sql(
        own_database,
        "INSERT INTO tokens (id, kind, digest, name) VALUES ($1, 'sdk', $2, 'squatter')",
        admin_token.split("_")[2],
        b"\0" * 32,
    )
    manager = start(  # type: ignore[operator]
        "--processes", "2", "--database-url", own_database, INFERENCEKEY_ADMIN_TOKEN=admin_token
    )
    code = manager.process.wait(timeout=120)
    assert code == 1, manager.text()[-3000:]
    text = manager.text()
    assert "keep exiting right after they start" in text
    # The processes' own reason, in the same log.
    assert "INFERENCEKEY_ADMIN_TOKEN's id is taken by another credential" in text


def test_processes_must_be_a_whole_number_of_at_least_one(start: object) -> None:
    manager = start("--processes", "0")  # type: ignore[operator]
    assert manager.process.wait(timeout=30) == 2
    assert "--processes: at least 1, got 0" in manager.text()


def test_a_reconciler_process_setting_must_say_yes_or_no(start: object) -> None:
    manager = start(INFERENCEKEY_RECONCILER_PROCESS="sometimes")  # type: ignore[operator]
    assert manager.process.wait(timeout=30) == 2
    assert "INFERENCEKEY_RECONCILER_PROCESS" in manager.text(), manager.text()
