"""The connections a Manager may open, against what its database allows: the embedded database
is started with enough for the settings, and an operator's database that allows too few is
named at start-up, with the settings to change."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from manager.db.migrate import too_few_connections
from manager.embedded_db import DEFAULT_MAX_CONNECTIONS, EmbeddedPostgres
from manager.settings import Settings
from tests.support import create_database, drop_database, free_port, wait_until

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
    bigger = Settings(db_pool_size=50, db_max_overflow=0, agent_max_concurrent_db=2)
    assert bigger.database_connections() == 50 + 2 + 4 + 1 + 3


async def _limits(url: str) -> tuple[int, int]:
    connection = await asyncpg.connect(url)
    try:
        most = int(await connection.fetchval("SHOW max_connections"))
        return most, int(await connection.fetchval("SHOW superuser_reserved_connections"))
    finally:
        await connection.close()


@pytest.fixture
def database() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


def test_a_database_that_allows_too_few_is_named_with_the_settings_to_change(
    database: str,
) -> None:
    most, reserved = asyncio.run(_limits(database))
    allowed = most - reserved

    assert too_few_connections(database, allowed) is None
    warning = too_few_connections(database, allowed + 1)
    assert warning is not None
    assert f"up to {allowed + 1} connections" in warning
    assert f"allows {allowed} (max_connections {most}, less {reserved}" in warning
    assert "INFERENCEKEY_PROCESSES" in warning and "INFERENCEKEY_DB_POOL_SIZE" in warning


def test_the_manager_warns_at_start_when_its_pools_outgrow_the_database(
    database: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCEKEY_")}
    # One process whose pool alone is larger than the test server's 100 connections.
    env["INFERENCEKEY_DB_POOL_SIZE"] = "100"
    port = free_port()
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as errors:
        manager = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ik_command",
                "manager",
                "--port",
                str(port),
                "--database-url",
                database,
                "--data-dir",
                str(tmp_path / "data"),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    try:

        def healthy() -> bool:
            assert manager.poll() is None, stderr.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success
            except httpx.TransportError:
                return False

        wait_until(healthy, 60, "the Manager never answered")
    finally:
        manager.send_signal(signal.SIGTERM)
        manager.wait(timeout=30)
    said = stderr.read_text()
    assert "warning: this Manager may open up to 126 connections" in said, said
    assert "INFERENCEKEY_DB_POOL_SIZE" in said


@pytest.fixture
def private_dir() -> Iterator[Path]:
    # Not tmp_path (0700 under pytest's root): the embedded server's account must reach it.
    path = Path(tempfile.mkdtemp(prefix="inferencekey-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_embedded_database_allows_what_it_is_started_with(private_dir: Path) -> None:
    embedded = EmbeddedPostgres(private_dir / "data")
    try:
        most, _ = asyncio.run(_limits(embedded.start()))
        assert most == DEFAULT_MAX_CONNECTIONS
        embedded.stop()
        # Each start takes the number it is given: a restart with more processes gets more.
        url = embedded.start(max_connections=180)
        assert asyncio.run(_limits(url))[0] == 180
        assert too_few_connections(url, 170) is None
    finally:
        embedded.stop()


async def test_the_manager_starts_its_embedded_database_with_room_for_its_pools(
    private_dir: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCEKEY_")}
    env["INFERENCEKEY_DB_POOL_SIZE"] = "100"
    port = free_port()
    stdout, stderr = private_dir / "stdout", private_dir / "stderr"
    with stdout.open("wb") as out, stderr.open("wb") as errors:
        manager = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ik_command",
                "manager",
                "--port",
                str(port),
                "--data-dir",
                str(private_dir / "data"),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=errors,
        )
    try:

        def listening() -> bool:
            assert manager.poll() is None, stderr.read_text()
            return "listening on" in stdout.read_text()

        wait_until(listening, 120, "the Manager never said where it listens")
        # "... database postgresql://postgres@127.0.0.1:PORT/inferencekey (embedded ...)"
        url = stdout.read_text().split(" database ", 1)[1].split()[0]
        most, _ = await _limits(url)
    finally:
        manager.send_signal(signal.SIGTERM)
        manager.wait(timeout=60)
    assert most == 126 + 10, stdout.read_text()
    assert "warning" not in stderr.read_text()
