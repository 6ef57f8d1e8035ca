"""The append-only event log of each workload."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from manager import wire
from manager.db.models import WorkloadEvent

from .timefmt import rfc3339


async def record(
    session: AsyncSession,
    workload_id: str,
    kind: str,
    message: str,
    data: dict[str, Any] | None = None,
) -> None:
    session.add(WorkloadEvent(workload_id=workload_id, kind=kind, message=message, data=data))


# The events' table, for a statement that records an event as one of its parts (a create).
_table = WorkloadEvent.__table__
assert isinstance(_table, Table)
EVENTS: Table = _table


async def list_events(
    session: AsyncSession, workload_id: str, *, limit: int = 200
) -> list[WorkloadEvent]:
    result = await session.execute(
        select(WorkloadEvent)
        .where(WorkloadEvent.workload_id == workload_id)
        .order_by(WorkloadEvent.id.desc())
        .limit(limit)
    )
    return list(reversed(result.scalars().all()))


def event_view(event: WorkloadEvent) -> wire.WorkloadEvent:
    return wire.WorkloadEvent(
        id=event.id,
        kind=event.kind,
        message=event.message,
        data=event.data,
        created_at=rfc3339(event.created_at),
    )
