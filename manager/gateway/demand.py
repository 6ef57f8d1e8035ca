"""Demand figures per workload (in-flight requests, requests per second), for the autoscaler.

Each Manager process counts what its gateway sees and writes it to `workload_demand` every
couple of seconds under its own id; the autoscaler sums the fresh rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from manager.db.models import WorkloadDemand
from manager.ids import new_id
from manager.policies import DemandFigures

log = logging.getLogger("inferencekey.gateway")
FLUSH_S = 2.0
# A row not refreshed for this long is from a Manager process that stopped: its figures are gone.
STALE_AFTER_S = 3 * FLUSH_S


async def fresh_demand(session: AsyncSession) -> dict[str, DemandFigures]:
    """Each workload's demand now, summed over the Manager processes that still report."""
    fresh = WorkloadDemand.updated_at > func.now() - timedelta(seconds=STALE_AFTER_S)
    rows = await session.execute(
        select(
            WorkloadDemand.workload_id,
            func.sum(WorkloadDemand.in_flight),
            func.sum(WorkloadDemand.requests_per_s),
        )
        .where(fresh)
        .group_by(WorkloadDemand.workload_id)
    )
    return {
        workload_id: DemandFigures(in_flight_requests=int(in_flight), requests_per_s=float(rate))
        for workload_id, in_flight, rate in rows.all()
    }


class DemandMeter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self.manager_id = new_id("mgr")
        self.in_flight: dict[str, int] = defaultdict(int)
        self._requests: dict[str, int] = defaultdict(int)
        self._reported: set[str] = set()
        self._since = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def started(self, workload_id: str) -> None:
        self.in_flight[workload_id] += 1
        self._requests[workload_id] += 1

    def finished(self, workload_id: str) -> None:
        self.in_flight[workload_id] -= 1

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="gateway-demand")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception:
                log.exception("writing demand figures failed")

    async def flush(self) -> None:
        now = time.monotonic()
        elapsed, self._since = max(now - self._since, 1e-6), now
        requests, self._requests = self._requests, defaultdict(int)
        active = {w for w, n in self.in_flight.items() if n} | set(requests)
        rows = [
            {
                "manager_id": self.manager_id,
                "workload_id": workload_id,
                "in_flight": self.in_flight.get(workload_id, 0),
                "requests_per_s": requests.get(workload_id, 0) / elapsed,
            }
            for workload_id in active | self._reported
        ]
        self._reported = active
        if not rows:
            return
        statement = insert(WorkloadDemand).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=["manager_id", "workload_id"],
            set_={
                "in_flight": statement.excluded.in_flight,
                "requests_per_s": statement.excluded.requests_per_s,
                "updated_at": statement.excluded.updated_at,
            },
        )
        async with self._sessions() as session:
            await session.execute(statement)
            await session.commit()
