"""The connections a Manager may open, against what its database allows: the embedded database
is started with enough for the settings, and an operator's database that allows too few is
named at start-up, with the settings to change."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from manager.db.migrate import too_few_connections
from manager.embedded_db import DEFAULT_MAX_CONNECTIONS, EmbeddedPostgres
from manager.notify import plain_postgres_url
from manager.settings import Settings
from tests.support import (
    RunningManager,
    bearer,
    create_project,
    create_sdk_token,
    free_port,
    own_manager,
    wait_until,
)
from tests.test_api_admission import INVENTORY, WORKLOAD

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_connections_of_one_process_and_of_several() -> None:
    one = Settings(database_url="postgresql://unused/db")
    # The pool and its overflow, the agents' and the credential lookups' pools, LISTEN; the
    # reconciler's pool of two and its leader lock.
    serving = 20 + 10 + 8 + 4 + 1
    assert one.database_connections() == serving + 3
    # Several processes: each serves with its own, and the reconciler's process listens too.
    assert Settings(processes=3).database_connections() == 3 * serving + 4
    assert Settings(run_reconciler=False).database_connections() == serving
    # One serving process and the reconciler's own, which listens too.
    assert Settings(reconciler_process=True).database_connections() == serving + 4
    assert Settings(reconciler_process=True, run_reconciler=False).database_connections() == (
        serving
    )
    bigger = Settings(db_pool_size=50, db_max_overflow=0, agent_max_concurrent_db=2)
    assert bigger.database_connections() == 50 + 2 + 4 + 1 + 3


async def _max_connections(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval("SHOW max_connections"))
    finally:
        await connection.close()


async def _sql(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def test_a_database_that_allows_too_few_is_named_with_the_settings_to_change(
    database: str,
) -> None:
    # The tests connect as a superuser: the server's max_connections is the limit.
    most = asyncio.run(_max_connections(database))
    assert too_few_connections(database, most) is None
    warning = too_few_connections(database, most + 1)
    assert warning is not None
    assert f"up to {most + 1} connections to the database, which allows it {most}" in warning
    assert f"(max_connections {most})" in warning
    for setting in ("PROCESSES", "DB_POOL_SIZE", "AGENT_MAX_CONCURRENT_DB"):
        assert f"INFERENCEKEY_{setting}" in warning


def test_a_roles_connection_limit_is_the_one_named(database: str) -> None:
    role = f"ik_limited_{secrets.token_hex(4)}"
    asyncio.run(_sql(database, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 5"))
    try:
        parts = urlsplit(database)
        url = parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}").geturl()
        assert too_few_connections(url, 5) is None
        warning = too_few_connections(url, 6)
        assert warning is not None and "allows it 5 (the role's CONNECTION LIMIT 5)" in warning
    finally:
        asyncio.run(_sql(database, f"DROP ROLE {role}"))


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def _start_manager(directory: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """``inferencekey manager`` on a free port, its output in ``directory``, once it answers."""
    port = free_port()
    stdout, stderr = directory / "stdout", directory / "stderr"
    with stdout.open("wb") as out, stderr.open("wb") as errors:
        manager = subprocess.Popen(
            [sys.executable, "-m", "ik_command", "manager", "--port", str(port), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=errors,
        )

    def healthy() -> bool:
        assert manager.poll() is None, stderr.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, 120, "the Manager never answered")
    except BaseException:
        _stop(manager)
        raise
    return manager


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCEKEY_")}
    env.update({f"INFERENCEKEY_{name.upper()}": value for name, value in settings.items()})
    return env


def test_the_manager_warns_at_start_when_its_pools_outgrow_the_database(
    database: str, tmp_path: Path
) -> None:
    most = asyncio.run(_max_connections(database))
    # One process whose pool alone is all the server allows; its other connections are 26.
    data_dir = str(tmp_path / "data")
    manager = _start_manager(
        tmp_path, _env(db_pool_size=str(most)), "--database-url", database, "--data-dir", data_dir
    )
    _stop(manager)
    said = (tmp_path / "stderr").read_text()
    assert f"this Manager may open up to {most + 26} connections" in said, said
    assert "WARNING" in said


@pytest.fixture
def private_dir() -> Iterator[Path]:
    # Not tmp_path (0700 under pytest's root): the embedded server's account must reach it.
    path = Path(tempfile.mkdtemp(prefix="inferencekey-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_embedded_database_allows_what_it_is_started_with(private_dir: Path) -> None:
    embedded = EmbeddedPostgres(private_dir / "data")
    try:
        assert asyncio.run(_max_connections(embedded.start())) == DEFAULT_MAX_CONNECTIONS
        embedded.stop()
        # Fewer than Postgres's default is not asked for.
        url = embedded.start(max_connections=50)
        assert asyncio.run(_max_connections(url)) == DEFAULT_MAX_CONNECTIONS
        embedded.stop()
        # Each start takes the number it is given: a restart with more processes gets more.
        url = embedded.start(max_connections=180)
        assert asyncio.run(_max_connections(url)) == 180
        assert too_few_connections(url, 180) is None
    finally:
        embedded.stop()


def test_the_manager_starts_its_embedded_database_with_room_for_its_pools(
    private_dir: Path,
) -> None:
    data_dir = str(private_dir / "data")
    manager = _start_manager(private_dir, _env(db_pool_size="100"), "--data-dir", data_dir)
    try:
        # "... database postgresql://postgres@127.0.0.1:PORT/inferencekey (embedded ...)"
        url = (private_dir / "stdout").read_text().split(" database ", 1)[1].split()[0]
        most = asyncio.run(_max_connections(url))
    finally:
        _stop(manager)
    assert most == 126 + 10, (private_dir / "stdout").read_text()
    assert "may open up to" not in (private_dir / "stderr").read_text()


# Every pool of one Manager process as small as it goes, with overflow: 1 + 2 engine, 2 agent
# slots, 1 credential lookup, LISTEN, and the reconciler's 1 + 1 and its leader lock.
SMALL_POOLS: dict[str, int] = {
    "db_pool_size": 1,
    "db_max_overflow": 2,
    "agent_max_concurrent_db": 2,
    "db_credential_pool_size": 1,
}


async def _connections_of(manager: RunningManager, ours: set[int]) -> int:
    """The clients' connections to the Manager's database now (no autovacuum or parallel
    worker), less the test's own."""
    connection = await asyncpg.connect(plain_postgres_url(manager.database_url))
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> ALL($1::int[])",
                [*ours, await connection.fetchval("SELECT pg_backend_pid()")],
            )
        )
    finally:
        await connection.close()


@pytest.fixture
def small_pools(tmp_path: Path) -> Iterator[RunningManager]:
    with own_manager(tmp_path, **SMALL_POOLS) as manager:
        yield manager


async def test_a_manager_with_every_pool_full_holds_the_connections_it_counts(
    small_pools: RunningManager,
) -> None:
    """Requests held on rows locked by the test fill the engine's pool and its overflow and the
    agents' pool; new credentials are looked up meanwhile; the reconciler, LISTEN and the leader
    lock hold theirs. The most connections seen is what ``database_connections`` counts, less
    the reconciler's second, which it keeps room for."""
    manager = small_pools
    counted = manager.settings.database_connections()
    assert counted == 1 + 2 + 2 + 1 + 1 + 3
    admin = httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or ""))
    with admin:
        project = create_project(admin)["slug"]
        sdk_tokens = [bearer(create_sdk_token(admin, project)) for _ in range(3)]
        agents = []
        for name in ("a", "b"):
            made = admin.post("/api/admin/workers", json={"project": project, "name": name})
            assert made.status_code == 201, made.text
            agents.append((made.json()["id"], bearer(made.json()["token"])))
    async with httpx.AsyncClient(base_url=manager.url, timeout=60) as client:
        created = await client.post(
            f"/api/projects/{project}/workloads", json=WORKLOAD, headers=sdk_tokens[0]
        )
        assert created.status_code == 201, created.text
        workload_id = created.json()["id"]
        beat = {"address": "http://127.0.0.1:9", "inventory": INVENTORY, "replicas": []}
        for _, agent in agents:  # known from now on: the next ones skip the lookup
            answered = await client.post("/api/agent/heartbeat", json=beat, headers=agent)
            assert answered.status_code == 200, answered.text
        locker = await asyncpg.connect(plain_postgres_url(manager.database_url))
        ours = {await locker.fetchval("SELECT pg_backend_pid()")}
        held: list[asyncio.Task[httpx.Response]] = []
        peak = 0
        try:
            async with locker.transaction():
                await locker.execute(
                    "SELECT 1 FROM workloads WHERE id = $1 FOR UPDATE", workload_id
                )
                await locker.execute(
                    "SELECT 1 FROM workers WHERE id = ANY($1::text[]) FOR UPDATE",
                    [worker_id for worker_id, _ in agents],
                )
                # Three PATCHes wait on the workload's row, each on an engine connection.
                held += [
                    asyncio.create_task(
                        client.patch(
                            f"/api/workloads/{workload_id}",
                            json={"description": f"held {n}"},
                            headers=sdk_tokens[n],
                        )
                    )
                    for n in range(3)
                ]
                # A heartbeat of each worker waits on its row, on an agent connection.
                held += [
                    asyncio.create_task(
                        client.post(
                            "/api/agent/heartbeat",
                            json={"address": "http://127.0.0.1:9"},
                            headers=agent,
                        )
                    )
                    for _, agent in agents
                ]
                deadline = asyncio.get_running_loop().time() + 3
                while asyncio.get_running_loop().time() < deadline:
                    # A credential never seen: looked up (on the lookups' pool), 401.
                    unknown = bearer(f"ik_sdk_{secrets.token_urlsafe(24)}")
                    refused = await client.get(
                        f"/api/projects/{project}/workloads", headers=unknown
                    )
                    assert refused.status_code == 401, refused.text
                    peak = max(peak, await _connections_of(manager, ours))
                    await asyncio.sleep(0.05)
                assert not any(task.done() for task in held), [
                    t.result().text for t in held if t.done()
                ]
        finally:
            answers = await asyncio.gather(*held, return_exceptions=True)
            await locker.close()
        for answer in answers:
            assert isinstance(answer, httpx.Response), answer
            assert answer.status_code == 200, answer.text
    # All but the reconciler's second: it works on one session at a time, and its pool's
    # overflow of one is room the count keeps. A connection opened outside the count shows.
    assert peak == counted - 1, (peak, counted)
