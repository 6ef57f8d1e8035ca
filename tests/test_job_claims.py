"""A job's claim is the only thing that may finish or release it, and only runs count toward its
attempts: the dispatcher's writes, against a real Postgres (migrated, no Manager running)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from manager.db.migrate import upgrade_to_head
from manager.db.session import make_engine, make_sessionmaker
from manager.jobs.dispatcher import Claimed, JobDispatcher, ResultWriter
from manager.notify import NotificationHub
from manager.settings import Settings
from tests.support import create_database, drop_database

ME, OTHER = "mgr_me", "mgr_other"


@pytest.fixture(scope="module")
def migrated() -> Iterator[str]:
    url = create_database()
    upgrade_to_head(url)
    yield url
    drop_database(url)


async def running_job(url: str, *, claimed_by: str, attempts: int) -> Claimed:
    """A job some Manager claimed (running, its lease live), as the dispatcher holds it."""
    job_id = str(uuid.uuid4())
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "INSERT INTO jobs (id, project_id, workload_id, key_id, kind, route, body, "
            "content_type, status, attempts, claimed_by, lease_until, started_at) VALUES "
            "($1, 'prj', 'wl', 'key', 'chat', 'v1/chat/completions', $2, 'application/json', "
            "'running', $3, $4, now() + interval '1 minute', now())",
            job_id,
            json.dumps({"messages": []}).encode(),
            attempts,
            claimed_by,
        )
    finally:
        await connection.close()
    return Claimed(job_id, "wl", "v1/chat/completions", b"{}", "application/json", attempts)


async def row(url: str, job_id: str) -> dict[str, Any]:
    connection = await asyncpg.connect(url)
    try:
        found = await connection.fetchrow(
            "SELECT status, attempts, result, lease_until > now() + interval '30 seconds' AS "
            "long_lease FROM jobs WHERE id = $1",
            job_id,
        )
        assert found is not None
        return dict(found)
    finally:
        await connection.close()


def result(job: Claimed, body: bytes) -> dict[str, object]:
    return {
        "b_id": job.id,
        "b_attempts": job.attempts,
        "b_status": "succeeded",
        "b_result": body,
        "b_content_type": "application/json",
        "b_status_code": 200,
        "b_error": None,
    }


def test_results_are_written_in_one_batch_and_only_for_the_claim_that_ran_them(
    migrated: str,
) -> None:
    async def scenario() -> None:
        mine = [await running_job(migrated, claimed_by=ME, attempts=1) for _ in range(3)]
        # Claimed again since: by another process, or by this one under a newer attempt.
        taken = await running_job(migrated, claimed_by=OTHER, attempts=2)
        stale = await running_job(migrated, claimed_by=ME, attempts=3)
        engine = make_engine(migrated)
        writer = ResultWriter(make_sessionmaker(engine), ME)
        writing = asyncio.create_task(writer.run_forever())
        try:
            old_claims = [
                Claimed(j.id, j.workload_id, j.route, j.body, j.content_type, j.attempts - 1)
                for j in (taken, stale)
            ]
            await asyncio.gather(
                *(writer.write(result(job, b'{"n": 1}')) for job in [*mine, *old_claims])
            )
        finally:
            writing.cancel()
            await engine.dispose()
        for job in mine:
            assert (await row(migrated, job.id))["status"] == "succeeded"
        for job in (taken, stale):
            left = await row(migrated, job.id)
            assert (left["status"], left["result"]) == ("running", None)

    asyncio.run(scenario())


def test_a_job_released_unsent_gets_its_attempt_back_and_a_sent_one_keeps_it(
    migrated: str,
) -> None:
    async def scenario() -> None:
        engine = make_engine(migrated)
        dispatcher = JobDispatcher(
            make_sessionmaker(engine),
            routes=None,  # type: ignore[arg-type]  # releasing needs only the database
            client=None,  # type: ignore[arg-type]
            settings=Settings(database_url=migrated),
            hub=NotificationHub(migrated),
            manager_id=ME,
        )
        try:
            unsent = await running_job(migrated, claimed_by=ME, attempts=3)
            sent = await running_job(migrated, claimed_by=ME, attempts=3)
            foreign = await running_job(migrated, claimed_by=OTHER, attempts=3)
            await dispatcher._release(unsent, sent=False)
            await dispatcher._release(sent, sent=True)
            await dispatcher._release(foreign, sent=False)  # not this process's claim
        finally:
            await engine.dispose()
        assert (await row(migrated, unsent.id))["attempts"] == 2
        assert (await row(migrated, sent.id))["attempts"] == 3
        for job in (unsent, sent):
            assert not (await row(migrated, job.id))["long_lease"]  # claimable again soon
        untouched = await row(migrated, foreign.id)
        assert (untouched["attempts"], untouched["long_lease"]) == (3, True)

    asyncio.run(scenario())
