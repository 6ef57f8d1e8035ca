"""The leading Manager keeps the planner's statistics of the fleet's tables fresh
(manager/db/statistics.py): on this machine's Postgres autovacuum is off, so without it a table
of thousands of rows is planned as if it held one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from manager.db.statistics import FLEET_TABLES, PlannerStatistics
from manager.notify import plain_postgres_url
from tests.support import RunningManager, bearer, create_project, own_manager

PROJECTS = 30


@pytest.fixture
def lone(tmp_path: Path) -> Iterator[RunningManager]:
    with own_manager(tmp_path) as running:
        yield running


async def analyzed(connection: asyncpg.Connection, table: str) -> object:
    return await connection.fetchval(
        "SELECT greatest(last_analyze, last_autoanalyze) FROM pg_stat_user_tables"
        " WHERE relid = CAST($1 AS TEXT)::regclass",
        table,
    )


async def test_a_table_changed_by_more_than_its_share_is_analyzed_once(
    lone: RunningManager,
) -> None:
    with httpx.Client(base_url=lone.url, headers=bearer(lone.admin_token or "")) as admin:
        for _ in range(PROJECTS):
            create_project(admin)
    connection = await asyncpg.connect(plain_postgres_url(lone.database_url))
    try:
        # The Manager's leader keeps them fresh too: whichever analyzes first, the projects'
        # statistics come to exist.
        statistics = PlannerStatistics(min_changes=PROJECTS // 2)
        deadline = time.monotonic() + 20
        done: list[str] = []
        while await analyzed(connection, "projects") is None:
            assert time.monotonic() < deadline, "the projects table was never analyzed"
            statistics._next_check = 0.0  # the test does not wait the interval
            done = await statistics.keep_fresh(connection)
            await asyncio.sleep(0.2)
        assert set(done) <= set(FLEET_TABLES)
        first = await analyzed(connection, "projects")
        # Nothing changed since: nothing to do, and every fleet table is known to the query.
        statistics._next_check = 0.0
        assert "projects" not in await statistics.keep_fresh(connection)
        assert await analyzed(connection, "projects") == first
        # The share of live rows counts: 5 more projects in 35 are under 1 + half of them.
        with httpx.Client(base_url=lone.url, headers=bearer(lone.admin_token or "")) as admin:
            for _ in range(5):
                create_project(admin)
        halves = PlannerStatistics(min_changes=1, changed_share=0.5)
        few = PlannerStatistics(min_changes=1, changed_share=0.0)
        deadline = time.monotonic() + 20
        while "projects" not in await few.keep_fresh(connection):  # the counts come in ~1 s
            assert time.monotonic() < deadline, "the new projects were never counted"
            few._next_check = 0.0
            await asyncio.sleep(0.2)
        # ``few`` analyzed them; the same changes again would not reach half the table either.
        with httpx.Client(base_url=lone.url, headers=bearer(lone.admin_token or "")) as admin:
            for _ in range(5):
                create_project(admin)
        await asyncio.sleep(1.5)  # Postgres counts them within a second
        assert "projects" not in await halves.keep_fresh(connection)
        assert int(
            await connection.fetchval(
                "SELECT count(*) FROM pg_stat_user_tables"
                " WHERE relid = ANY(CAST($1 AS TEXT[])::regclass[])",
                list(FLEET_TABLES),
            )
        ) == len(FLEET_TABLES)
    finally:
        await connection.close()
