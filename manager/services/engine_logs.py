"""An engine's log, relayed from the agent that runs it (the agent's `/replicas/{id}/logs`,
behind the worker's gateway credential, as the data plane is)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ik_contracts.forwarding import GATEWAY_HEADER
from ik_contracts.protocol import ReplicaState
from manager.db.models import Replica, Worker, Workload
from manager.errors import ReplicaNotFound, WorkerUnreachable
from manager.states import DesiredState


@dataclass(frozen=True)
class LogSource:
    url: str
    gateway_secret: str
    replica_id: str


async def locate(session: AsyncSession, workload: Workload, replica_id: str | None) -> LogSource:
    """Where the log of this workload's replica ``replica_id`` is (None: its newest replica
    that should run, a ready one first)."""
    if replica_id is not None:
        replica = await session.get(Replica, replica_id)
        if replica is None or replica.workload_id != workload.id:
            raise ReplicaNotFound(f'workload "{workload.slug}" has no replica {replica_id}')
    else:
        candidates = (
            await session.execute(
                select(Replica)
                .where(
                    Replica.workload_id == workload.id, Replica.desired_state == DesiredState.RUN
                )
                .order_by(Replica.created_at.desc())
            )
        ).scalars()
        replicas = sorted(candidates, key=lambda r: r.state != ReplicaState.READY)
        if not replicas:
            raise ReplicaNotFound(f'workload "{workload.slug}" has no replica to show logs of')
        replica = replicas[0]
    worker = await session.get(Worker, replica.worker_id)
    if worker is None or not worker.address:
        raise WorkerUnreachable(f"the worker of replica {replica.id} has no address yet")
    return LogSource(
        url=f"{worker.address.rstrip('/')}/replicas/{replica.id}/logs",
        gateway_secret=worker.gateway_secret,
        replica_id=replica.id,
    )


async def open_stream(source: LogSource, tail: int, follow: bool) -> AsyncIterator[bytes]:
    """Opens the agent's stream (errors are raised now, as problems) and returns its pieces."""
    client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
    request = client.build_request(
        "GET",
        source.url,
        params={"tail": tail, "follow": int(follow)},
        headers={GATEWAY_HEADER.decode(): source.gateway_secret},
    )
    try:
        response = await client.send(request, stream=True)
    except httpx.TransportError as error:
        await client.aclose()
        raise WorkerUnreachable(
            f"the agent running replica {source.replica_id} cannot be reached: {error}"
        ) from None
    if response.status_code != 200:
        await response.aclose()
        await client.aclose()
        if response.status_code == 404:
            raise ReplicaNotFound(f"replica {source.replica_id} runs no engine on its worker")
        raise WorkerUnreachable(
            f"the agent running replica {source.replica_id} answered {response.status_code}"
        )

    async def pieces() -> AsyncIterator[bytes]:
        try:
            async for piece in response.aiter_raw():
                yield piece
        finally:
            await response.aclose()
            await client.aclose()

    return pieces()
