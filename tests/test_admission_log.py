"""A process that sheds requests says so in its log (manager/admission.py): at once, then at most
once a period with how many were shed since, and what would give it more room."""

from __future__ import annotations

import asyncio
import logging

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

        await asyncio.sleep(PERIOD_S)
        await shed(admission, 2)
        assert len(lines()) == 2
        # The two shed within the period after the first line, and the one that wrote this.
        assert lines()[1].startswith("shed 3 agent requests in the last ")

    # A request that finds its turn is not shed, and writes nothing.
    async with admission.slot():
        pass
    await asyncio.sleep(PERIOD_S)
    async with admission.slot():
        pass
    assert len(lines()) == 2
