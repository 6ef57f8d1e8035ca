"""The plain list keeps each workload's JSON with its row's version (xmin), and writes again only
the workloads new or changed since: the same bytes as a list written afresh, whatever changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from inferencekey.wire import MAX_WORKLOAD_PAGE_SIZE
from sqlalchemy import select, text

from manager.db.migrate import upgrade_to_head_async
from manager.db.models import Project
from manager.db.session import make_engine, make_sessionmaker
from manager.services import workloads

WORKLOADS = 40


def _insert(project_id: str, first: int, last: int) -> str:
    return f"""
        INSERT INTO workloads (id, project_id, slug, name, task_type, backend, model_name,
            config, execution_policy, execution_policy_config, generation, desired_replicas,
            ready_replicas, endpoints_off, phase, phase_reason, created_at)
        SELECT 'wl_{project_id}_' || lpad(i::text, 6, '0'), '{project_id}', 'w-' || i,
            'Workload ' || i, 'text2text', 'llamacpp', 'gemma',
            '{{"command": "llama-server -c 512", "env": {{"B": "1", "A": "2"}}}}'::json,
            'fixed', '{{"replicas": 1}}'::json, 1, 1, 0, '{{}}', 'pending', 'placing',
            now() + i * interval '1 ms'
        FROM generate_series({first}, {last}) i
    """


@pytest.fixture
async def sql(database: str) -> AsyncIterator[asyncpg.Connection]:
    await upgrade_to_head_async(database)
    connection = await asyncpg.connect(database)
    await connection.execute(
        "INSERT INTO tenants (id, name) VALUES ('default', 'default') ON CONFLICT DO NOTHING;"
        "INSERT INTO projects (id, tenant_id, slug, name) VALUES"
        " ('pa', 'default', 'a', 'A'), ('pb', 'default', 'b', 'B');"
        + _insert("pa", 1, WORKLOADS)
        + ";"
        + _insert("pb", 1, 3)
    )
    try:
        yield connection
    finally:
        await connection.close()


class Lists:
    """Plain lists of a project, kept in one ``ListedWorkloads`` and written afresh, counting the
    workloads written from their rows."""

    def __init__(self, url: str, monkeypatch: pytest.MonkeyPatch, **keeping: Any) -> None:
        self.engine = make_engine(url)
        self.sessions = make_sessionmaker(self.engine)
        self.listed = workloads.ListedWorkloads(**keeping)
        self.written = 0
        write = workloads._listed

        def counted(row: Any, project_slug: str) -> dict[str, Any]:
            self.written += 1
            return write(row, project_slug)

        monkeypatch.setattr(workloads, "_listed", counted)

    async def both(self, project_id: str, begun: bool = False) -> tuple[bytes, int]:
        """The kept list, checked against the same workloads read as one page (written by
        the paged path, from one statement); and how many rows the list wrote. The list's
        session is new, as the route's is (the project comes with the credential), or with
        ``begun`` its transaction has begun already."""
        async with self.sessions() as session:
            project = (
                await session.execute(select(Project).where(Project.id == project_id))
            ).scalar_one()
        async with self.sessions() as session:
            if begun:
                await session.execute(select(1))
            before = self.written
            kept = await workloads.list_workloads_json(session, project, None, None, self.listed)
            written = self.written - before
            page = await workloads.list_workloads_json(
                session, project, MAX_WORKLOAD_PAGE_SIZE, None
            )
        # The same array, byte for byte: {"workloads":[...]} and {"workloads":[...],"next_...
        assert page.endswith(b',"next_cursor":null}'), page[-60:]
        assert kept == page[: -len(b',"next_cursor":null}')] + b"}"
        return kept, written


async def test_a_list_writes_again_only_what_changed_and_matches_a_fresh_one(
    database: str, sql: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    lists = Lists(database, monkeypatch)
    try:
        first, written = await lists.both("pa")
        assert written == WORKLOADS
        again, written = await lists.both("pa")
        assert (again, written) == (first, 0)
        # What the reconciler writes (the status), what a PATCH writes (a spec field), a
        # delete (hidden), a create, and an update that sets what was there: each a new version.
        await sql.execute(
            "UPDATE workloads SET phase = 'ready', phase_reason = '1/1 ready',"
            " ready_replicas = 1 WHERE id = 'wl_pa_000003'"
        )
        await sql.execute(
            "UPDATE workloads SET description = 'now with \"quotes\" and é',"
            ' config = \'{"command": "llama-server -c 4096"}\', generation = 2'
            " WHERE id = 'wl_pa_000007'"
        )
        await sql.execute("UPDATE workloads SET deleted_at = now() WHERE id = 'wl_pa_000010'")
        await sql.execute(_insert("pa", WORKLOADS + 1, WORKLOADS + 1))
        await sql.execute("UPDATE workloads SET name = name WHERE id = 'wl_pa_000020'")
        changed, written = await lists.both("pa")
        assert written == 4  # 3, 7, the new one and 20; 10 is gone
        assert b'"wl_pa_000010"' not in changed
        assert b"1/1 ready" in changed and b"-c 4096" in changed
        assert changed.count(b'"id":"wl_pa_') == WORKLOADS
        # Another project's list is its own; deleting every workload leaves an empty list.
        other, written = await lists.both("pb")
        assert (written, other.count(b'"id":"wl_pb_')) == (3, 3)
        await sql.execute("UPDATE workloads SET deleted_at = now() WHERE project_id = 'pb'")
        assert await lists.both("pb") == (b'{"workloads":[]}', 0)
    finally:
        await lists.engine.dispose()


async def test_only_the_projects_listed_last_are_kept(
    database: str, sql: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    lists = Lists(database, monkeypatch, projects=1)
    try:
        assert (await lists.both("pa"))[1] == WORKLOADS
        assert (await lists.both("pb"))[1] == 3  # and project a is let go
        assert (await lists.both("pb"))[1] == 0
        assert (await lists.both("pa"))[1] == WORKLOADS
    finally:
        await lists.engine.dispose()


def _changed_after_the_first_read(sql: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another connection commits a change to workloads 5 and 6 after the next list's first
    read (the ids and versions), before its second (the changed rows)."""
    read_versions = workloads._ids_and_versions
    pending = [True]  # once

    async def then_changed(session: Any, project: Project) -> tuple[list[str], list[str]]:
        read = await read_versions(session, project)
        if pending:
            pending.clear()
            # Committed by another connection after the first read, before the second.
            await sql.execute(
                "UPDATE workloads SET phase = 'failed', phase_reason = 'between'"
                " WHERE id IN ('wl_pa_000005', 'wl_pa_000006')"
            )
        return read

    monkeypatch.setattr(workloads, "_ids_and_versions", then_changed)


async def test_a_change_between_the_two_reads_is_not_seen_the_list_is_one_snapshot(
    database: str, sql: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ids and versions come from one read, the changed rows from a second, in one
    snapshot: a row changed in between is listed as the first read saw it, and only the
    rows changed before the list are written again."""
    lists = Lists(database, monkeypatch)
    try:
        assert (await lists.both("pa"))[1] == WORKLOADS
        await sql.execute("UPDATE workloads SET description = 'first' WHERE id = 'wl_pa_000005'")
        _changed_after_the_first_read(sql, monkeypatch)
        listed, written = await lists.both("pa")
        assert written == 1  # 5, at the version the first read saw
        assert listed.count(b'"first"') == 1 and b"between" not in listed
        listed, written = await lists.both("pa")
        assert written == 2 and listed.count(b"between") == 2  # the next list sees it
        # The level was the list's transaction's: its connection (the pool's only one) is back
        # at the default.
        assert lists.engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        async with lists.sessions() as session:
            level = (await session.execute(text("SHOW transaction_isolation"))).scalar_one()
        assert level == "read committed"
    finally:
        await lists.engine.dispose()


async def test_in_a_transaction_begun_before_a_change_between_the_reads_writes_it_afresh(
    database: str, sql: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the list's transaction had begun (READ COMMITTED, each statement its own
    snapshot), a row changed between the two reads is not mixed into the first read's list:
    the list is written afresh, whole."""
    lists = Lists(database, monkeypatch)
    try:
        assert (await lists.both("pa"))[1] == WORKLOADS
        await sql.execute("UPDATE workloads SET description = 'first' WHERE id = 'wl_pa_000005'")
        _changed_after_the_first_read(sql, monkeypatch)
        listed, written = await lists.both("pa", begun=True)
        # 5 read again at another version than the first read saw: then all written afresh.
        assert written == 1 + WORKLOADS
        assert listed.count(b"between") == 2
    finally:
        await lists.engine.dispose()


async def test_many_changes_a_lapse_of_time_or_too_many_bytes_write_the_list_afresh(
    database: str, sql: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    lists = Lists(database, monkeypatch)
    try:
        assert (await lists.both("pa"))[1] == WORKLOADS
        # More than a quarter changed: one ordered read writes them all.
        await sql.execute("UPDATE workloads SET ready_replicas = 1 WHERE project_id = 'pa'")
        assert (await lists.both("pa"))[1] == WORKLOADS
        assert (await lists.both("pa"))[1] == 0
    finally:
        await lists.engine.dispose()
    for keeping in ({"kept_s": 0.0}, {"max_bytes": 1024}):
        lists = Lists(database, monkeypatch, **keeping)
        try:
            assert (await lists.both("pa"))[1] == WORKLOADS
            assert (await lists.both("pa"))[1] == WORKLOADS, keeping
        finally:
            await lists.engine.dispose()
