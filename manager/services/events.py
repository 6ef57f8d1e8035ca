"""The append-only event log of each workload."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, bindparam, func, insert, select
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


_EVENTS = WorkloadEvent.__table__
assert isinstance(_EVENTS, Table)
# One event written and its workload's id told on ``channel``, in one round trip and without the
# session's unit of work (a create's event flushed by the ORM was a tenth of its CPU).
_RECORD_AND_TELL = (
    insert(_EVENTS)
    .values(
        workload_id=bindparam("event_workload"),
        kind=bindparam("event_kind"),
        message=bindparam("event_message"),
    )
    .returning(func.pg_notify(bindparam("channel"), _EVENTS.c.workload_id))
)


async def record_and_tell(
    session: AsyncSession, workload_id: str, kind: str, message: str, channel: str
) -> None:
    """``record`` an event with no data, and ``NOTIFY channel`` the workload's id, in the
    session's transaction (both take effect at its commit)."""
    connection = await session.connection()
    await connection.execute(
        _RECORD_AND_TELL,
        {
            "event_workload": workload_id,
            "event_kind": kind,
            "event_message": message,
            "channel": channel,
        },
    )


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
