"""A Manager stops in bounded time, and says what held it up (manager/stopping.py).

uvicorn runs the lifespan's shutdown with no time limit, so one step of it that never ends kept
a Manager alive until it was killed, saying nothing. Here the step that never ends is the agent
requests' pool waiting for a connection that is never given back (asyncpg's ``Pool.close``
waits for every connection to be released): the Manager still stops within seconds, closes
that pool by force, and names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from manager import stopping
from tests.support import fastapi_app, own_manager


def test_a_manager_whose_pool_is_held_stops_within_seconds_and_names_the_pool(
    tmp_path: Path,
) -> None:
    with own_manager(tmp_path) as running:
        loop = running.server.loop
        assert loop is not None
        pool = fastapi_app(running).state.direct._pool
        # A connection taken from the agent requests' pool and never given back.

        async def take() -> Any:
            return await pool.acquire()

        held = asyncio.run_coroutine_threadsafe(take(), loop).result(timeout=10)
        connection = held._con  # the connection itself, which the proxy lets go of when closed
        assert not connection.is_closed()
        started = time.monotonic()
        with pytest.warns(UserWarning) as said:
            running.stop()
        took = time.monotonic() - started
    assert not running.thread.is_alive()
    assert took < 10, f"the Manager took {took:.1f} s to stop"
    messages = [str(warning.message) for warning in said]
    assert not [m for m in messages if "took over 15 s to stop" in m], messages
    [pool_step] = [m for m in messages if "stopping the agent requests' pool" in m]
    assert f"took over {stopping.STEP_S:g} s; cancelled it and went on" in pool_step
    # Where it waited: in asyncpg's Pool.close, for the connection never given back.
    assert "manager/db/direct.py" in pool_step and "asyncpg/pool.py" in pool_step, pool_step
    assert connection.is_closed()  # the pool, cancelled, closed its connections by force


async def test_a_step_that_never_ends_is_left_after_its_time_with_where_it_waited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def waits_forever() -> None:
        await asyncio.Event().wait()

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="inferencekey.manager"):
        await stopping.step("the stuck thing", waits_forever(), seconds=0.3)
    assert time.monotonic() - started < 2
    [record] = caplog.records
    assert record.getMessage().startswith(
        "stopping the stuck thing took over 0.3 s; cancelled it and went on."
    )
    assert "in waits_forever" in record.getMessage()


async def test_a_failing_step_is_logged_and_stopping_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("the pool was already gone")

    with caplog.at_level(logging.WARNING, logger="inferencekey.manager"):
        await stopping.step("the broken thing", fails())
    [record] = caplog.records
    assert record.getMessage() == "stopping the broken thing failed"
    assert record.exc_info is not None and "already gone" in str(record.exc_info[1])


async def test_tasks_that_end_when_cancelled_say_nothing_and_one_that_does_not_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def ends_when_cancelled() -> None:
        await asyncio.sleep(3600)

    release = asyncio.Event()

    async def keeps_going_once_cancelled() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # a clean-up that waits on something that does not come

    quiet = asyncio.create_task(ends_when_cancelled(), name="quiet")
    stubborn = asyncio.create_task(keeps_going_once_cancelled(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="inferencekey.manager"):
        await stopping.tasks_ended([quiet], seconds=0.3)
        assert quiet.cancelled() and not caplog.records
        await stopping.tasks_ended([stubborn], seconds=0.3)
    [record] = caplog.records
    assert record.getMessage().startswith(
        "stopping: the task 'stubborn' did not end within 0.3 s of being cancelled"
    )
    assert "in keeps_going_once_cancelled" in record.getMessage()
    release.set()
    await stubborn


async def test_a_background_task_that_fails_is_said_at_once_and_one_cancelled_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("the jobs table was gone")

    with caplog.at_level(logging.WARNING, logger="inferencekey.manager"):
        failed = stopping.background(fails(), name="jobs")
        with contextlib.suppress(RuntimeError):
            await failed
        await asyncio.sleep(0)  # the done callbacks run
        [record] = caplog.records
        assert record.getMessage() == "the task 'jobs' failed and ended"
        assert record.exc_info is not None and "jobs table was gone" in str(record.exc_info[1])
        cancelled = stopping.background(asyncio.sleep(3600), name="sleeper")
        await asyncio.sleep(0)
        await stopping.tasks_ended([cancelled, failed], seconds=0.3)
        await asyncio.sleep(0)
    assert cancelled.cancelled()
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
