"""A process that sheds requests says so in its log (manager/admission.py): at once, then at most
once a period with how many were shed since, and what would give it more room."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from manager.admission import Admission
from manager.errors import Overloaded

PERIOD_S = 0.5


async def shed(admission: Admission, times: int) -> None:
    for _ in range(times):
        with pytest.raises(Overloaded):
            async with admission.slot():
                pass


async def test_shedding_is_logged_at_once_then_once_a_period_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admission = Admission(
        1, 0.01, 2, busy="busy now", kind="agent requests", logged_every_s=PERIOD_S
    )
    caplog.set_level(logging.WARNING, logger="inferencekey.admission")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "inferencekey.admission"]

    async with admission.slot():  # the one turn, held: every other request is shed
        await shed(admission, 3)
        [first] = lines()
        assert first.startswith("shed 1 agent requests with 503 overloaded")
        assert "after waiting 0.01 s" in first
        assert "INFERENCEKEY_RECONCILER_PROCESS" in first
        assert "The control plane under a fleet" in first

        # The two shed since are written when the period ends, though no shed comes after it.
        await asyncio.sleep(PERIOD_S / 2)
        assert len(lines()) == 1
        await asyncio.sleep(PERIOD_S / 2 + 0.1)
        assert len(lines()) == 2
        assert lines()[1].startswith("shed 2 agent requests in the last ")

        # A period with no shed writes nothing; the next shed is written at once.
        await asyncio.sleep(PERIOD_S + 0.1)
        assert len(lines()) == 2
        await shed(admission, 1)
        assert len(lines()) == 3 and lines()[2].startswith("shed 1 agent requests in the last ")

        # Another kind of turn, shed under its own name, counts apart.
        lock = asyncio.Lock()
        await lock.acquire()
        with pytest.raises(Overloaded):
            await admission.take(lock, patient=False, busy="busy", kind="duplicate heartbeats")
        assert lines()[3].startswith("shed 1 duplicate heartbeats with 503 overloaded")

    # A request that finds its turn is not shed, and writes nothing.
    async with admission.slot():
        pass
    await asyncio.sleep(PERIOD_S + 0.1)
    assert len(lines()) == 4


async def test_a_shed_after_the_period_before_its_timer_runs_writes_the_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A busy loop runs the period's timer late. A shed that comes first writes the period's
    line, and the timer then writes nothing: it used to write a second line, "in the last 0 s",
    with the sheds that came between. Sheds are counted here as a request's timeout counts
    them, back to back in one turn of the loop, as they come on a loop that runs late."""
    admission = Admission(
        1, 0.01, 2, busy="busy now", kind="agent requests", logged_every_s=PERIOD_S
    )
    caplog.set_level(logging.WARNING, logger="inferencekey.admission")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "inferencekey.admission"]

    kind = "agent requests"
    admission._shed_one(kind)  # written at once
    admission._shed_one(kind)  # due by the period's timer
    time.sleep(PERIOD_S + 0.05)  # the loop held past the period: the timer is late
    admission._shed_one(kind)  # past the period: written at once, with the one before
    admission._shed_one(kind)  # in the new period
    assert len(lines()) == 2 and lines()[1].startswith("shed 2 agent requests in the last ")
    await asyncio.sleep(0.05)  # the late timer's turn
    assert len(lines()) == 2, lines()
    await asyncio.sleep(PERIOD_S)
    assert len(lines()) == 3 and lines()[2].startswith("shed 1 agent requests in the last ")
