"""A workload's endpoint toggles: which of its routes, and whether its async jobs, are served.

Stored as the toggles switched off (``workloads.endpoints_off``), so a new workload starts with
``jobs`` and every route of its task type on. The gateway reads them from its route table.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ik_contracts.endpoint_paths import task_type_toggles
from manager import notify, wire
from manager.db.models import Workload
from manager.errors import ValidationFailed

from . import events


def toggles_view(workload: Workload) -> wire.EndpointToggles:
    off = set(workload.endpoints_off or ())
    return wire.EndpointToggles(
        workload_id=workload.id,
        endpoints={name: name not in off for name in task_type_toggles(workload.task_type)},
    )


async def set_toggles(
    session: AsyncSession, workload: Workload, changes: dict[str, bool]
) -> wire.EndpointToggles:
    """Apply ``changes`` (toggle name -> on); every name must be one of the workload's."""
    known = task_type_toggles(workload.task_type)
    for name in changes:
        if name not in known:
            raise ValidationFailed(
                f"{name!r} is not an endpoint of a {workload.task_type} workload; its endpoints "
                f"are {', '.join(known)}",
                field=f"endpoints.{name}",
            )
    before = set(workload.endpoints_off or ())
    after = (before - {name for name, on in changes.items() if on}) | {
        name for name, on in changes.items() if not on
    }
    if after != before:
        # Kept in the task type's order, so the stored list reads like the view.
        workload.endpoints_off = [name for name in known if name in after]
        switched = [f"{name} {'off' if name in after else 'on'}" for name in sorted(after ^ before)]
        await events.record(
            session,
            workload.id,
            "endpoints_changed",
            "endpoints switched: " + ", ".join(switched),
            {"off": workload.endpoints_off},
        )
        # The gateways' route tables reload on a workload's status channel.
        await notify.notify(session, notify.WORKLOAD_STATUS, workload.id)
    return toggles_view(workload)
