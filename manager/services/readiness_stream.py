"""The readiness stream: emit the phase on connect and on every change, end after ready/error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from inferencekey.enums import TERMINAL_READINESS_PHASES

from manager import notify
from manager.db.models import Workload

from .readiness import Readiness, readiness_of
from .timefmt import utcnow

# A missed notification costs at most this long; the keep-alive comments are sse-starlette's.
RECHECK_S = 5.0


async def readiness_stream(
    app: Any, workload_id: str, since: datetime
) -> AsyncIterator[dict[str, str]]:
    hub: notify.NotificationHub = app.state.hub
    last: Readiness | None = None
    while True:
        with hub.subscription(notify.WORKLOAD_STATUS, workload_id) as changed:
            async with app.state.sessions() as session:
                workload = await session.get(Workload, workload_id)
            if workload is None:
                return
            current = readiness_of(workload)
            if current != last:
                last = current
                frame = current.frame(since, utcnow())
                yield {"data": frame.model_dump_json(exclude_none=True)}
            if current.phase in TERMINAL_READINESS_PHASES:
                return
            await notify.wait_for(changed, RECHECK_S)
