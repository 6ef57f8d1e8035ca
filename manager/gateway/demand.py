"""Demand figures per workload (in-flight requests, requests per second), for the autoscaler.

Each Manager process counts what its gateway sees and writes it to `workload_demand` every
couple of seconds under its own id; the autoscaler sums the fresh rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from manager import notify
from manager.db.models import WorkloadDemand
from manager.ids import new_id
from manager.policies import DemandFigures

from .flushing import FLUSH_S, PeriodicFlush

log = logging.getLogger("inferencekey.gateway")
# A row not refreshed for this long is from a Manager process that stopped: its figures are gone.
STALE_AFTER_S = 3 * FLUSH_S


async def fresh_demand(session: AsyncSession) -> dict[str, DemandFigures]:
    """Each workload's demand now, summed over the Manager processes that still report; the
    last request is the latest any process saw, reporting or not."""
    fresh = WorkloadDemand.updated_at > func.now() - timedelta(seconds=STALE_AFTER_S)

    def if_fresh(column: Any) -> Any:
        return func.coalesce(func.sum(case((fresh, column), else_=0)), 0)

    rows = await session.execute(
        select(
            WorkloadDemand.workload_id,
            if_fresh(WorkloadDemand.in_flight),
            if_fresh(WorkloadDemand.requests_per_s),
            if_fresh(WorkloadDemand.concurrency),
            func.max(WorkloadDemand.last_request_at),
        ).group_by(WorkloadDemand.workload_id)
    )
    return {
        workload_id: DemandFigures(
            in_flight_requests=int(in_flight),
            requests_per_s=float(rate),
            concurrency=float(concurrency),
            last_request_at=last_request_at,
        )
        for workload_id, in_flight, rate, concurrency, last_request_at in rows.all()
    }


class _Load:
    """One workload's requests in this process: in flight now, and their time-weighted sum
    since the last report (the area under the in-flight curve)."""

    __slots__ = ("area", "changed_at", "in_flight", "last_request_at", "requests")

    def __init__(self, now: float) -> None:
        self.in_flight = 0
        self.requests = 0
        self.area = 0.0
        self.changed_at = now
        self.last_request_at: datetime | None = None

    def step(self, now: float, change: int) -> None:
        self.area += self.in_flight * (now - self.changed_at)
        self.changed_at = now
        self.in_flight += change


class DemandMeter(PeriodicFlush):
    task_name = "gateway-demand"
    failure = "writing demand figures failed"

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__()
        self._sessions = sessions
        self.manager_id = new_id("mgr")
        self._loads: dict[str, _Load] = {}
        self._reported: set[str] = set()
        self._since = time.monotonic()
        self._lock = asyncio.Lock()

    @property
    def in_flight(self) -> dict[str, int]:
        return {workload_id: load.in_flight for workload_id, load in self._loads.items()}

    def started(self, workload_id: str) -> None:
        now = time.monotonic()
        load = self._loads.get(workload_id)
        if load is None:
            load = self._loads[workload_id] = _Load(self._since)
        load.step(now, +1)
        load.requests += 1
        load.last_request_at = datetime.now(UTC)

    def finished(self, workload_id: str) -> None:
        self._loads[workload_id].step(time.monotonic(), -1)

    async def wake(self, workload_id: str) -> None:
        """Report now and wake the reconciler: a request waits for this workload's first
        replica (scale-from-zero)."""
        await self.flush(wake=workload_id)

    async def flush(self, wake: str | None = None) -> None:
        async with self._lock:
            await self._flush(wake)

    async def _flush(self, wake: str | None) -> None:
        now = time.monotonic()
        elapsed, self._since = max(now - self._since, 1e-6), now
        rows = []
        active: set[str] = set()
        for workload_id, load in list(self._loads.items()):
            load.step(now, 0)
            if load.in_flight or load.requests or load.area:
                active.add(workload_id)
            if workload_id in active or workload_id in self._reported:
                rows.append(
                    {
                        "manager_id": self.manager_id,
                        "workload_id": workload_id,
                        "in_flight": load.in_flight,
                        "requests_per_s": load.requests / elapsed,
                        "concurrency": load.area / elapsed,
                        "last_request_at": load.last_request_at,
                    }
                )
            load.requests, load.area = 0, 0.0
            if not load.in_flight and workload_id not in active:
                del self._loads[workload_id]  # reported idle once; nothing more to say
        self._reported = active
        if not rows:
            return
        statement = insert(WorkloadDemand).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=["manager_id", "workload_id"],
            set_={
                "in_flight": statement.excluded.in_flight,
                "requests_per_s": statement.excluded.requests_per_s,
                "concurrency": statement.excluded.concurrency,
                "last_request_at": func.coalesce(
                    statement.excluded.last_request_at, WorkloadDemand.last_request_at
                ),
                "updated_at": func.now(),
            },
        )
        async with self._sessions() as session:
            await session.execute(statement)
            if wake is not None:
                await notify.notify(session, notify.RECONCILE, wake)
            await session.commit()
