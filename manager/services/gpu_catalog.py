"""The GPU catalog: the display names of the shared pool's GPUs, how many are free, and the
operator's hourly price for each. ``gpu_pool`` names come from it and cost ceilings read its
prices (the reconciler reads the ``gpu_prices`` table into its snapshot)."""

from __future__ import annotations

import math

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from manager import wire
from manager.db.models import GpuPrice, GpuResource, Replica, Worker
from manager.errors import ValidationFailed
from manager.states import WorkerState

from .timefmt import utcnow

MAX_NAME_LENGTH = 200
MAX_PRICE = 1_000_000.0  # per GPU-hour: anything above is a typo


async def _shared_gpus(session: AsyncSession) -> list[tuple[GpuResource, Worker]]:
    """Every GPU a shared-pool worker reported, present now or not."""
    result = await session.execute(
        select(GpuResource, Worker)
        .join(Worker, Worker.id == GpuResource.worker_id)
        .where(Worker.project_id.is_(None))
    )
    return [(gpu, worker) for gpu, worker in result.all()]


async def _prices(session: AsyncSession) -> dict[str, float]:
    return {
        row.name: row.usd_per_hour for row in (await session.execute(select(GpuPrice))).scalars()
    }


async def known_gpu_names(session: AsyncSession) -> set[str]:
    """Names the catalog has seen: reported by a shared-pool worker, or priced."""
    return {gpu.name for gpu, _ in await _shared_gpus(session)} | set(await _prices(session))


async def catalog(session: AsyncSession) -> wire.GpuCatalog:
    gpus = await _shared_gpus(session)
    prices = await _prices(session)
    held = {
        gpu_id
        for ids in (
            await session.execute(
                select(Replica.gpu_resource_ids).where(
                    Replica.worker_id.in_({worker.id for _, worker in gpus})
                )
            )
        ).scalars()
        for gpu_id in ids
    }
    entries: dict[str, wire.GpuCatalogEntry] = {
        name: wire.GpuCatalogEntry(
            name=name,
            memory_total_mb=None,
            total=0,
            free=0,
            cuda_versions=[],
            usd_per_hour=prices.get(name),
        )
        for name in {gpu.name for gpu, _ in gpus} | set(prices)
    }
    for gpu, worker in gpus:
        if not gpu.present:
            continue
        entry = entries[gpu.name]
        entry.total += 1
        entry.memory_total_mb = max(entry.memory_total_mb or 0, gpu.memory_total_mb)
        if worker.state == WorkerState.READY and gpu.id not in held:
            entry.free += 1
        cuda = (worker.inventory or {}).get("cuda_version")
        if cuda and cuda not in entry.cuda_versions:
            entry.cuda_versions.append(cuda)
    for entry in entries.values():
        entry.cuda_versions.sort()
    return wire.GpuCatalog(gpus=[entries[name] for name in sorted(entries)])


async def set_price(
    session: AsyncSession, name: str, usd_per_hour: float | int
) -> wire.GpuCatalogEntry:
    """Set (or change) the hourly price of a GPU display name; the catalog then knows it."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise ValidationFailed(
            f"name must be a GPU display name of 1 to {MAX_NAME_LENGTH} printable characters",
            field="name",
        )
    try:
        price = float(usd_per_hour)
    except OverflowError:
        price = math.inf
    if not math.isfinite(price) or price < 0 or price > MAX_PRICE:
        raise ValidationFailed(
            f"usd_per_hour must be a number from 0 to {MAX_PRICE:g}", field="usd_per_hour"
        )
    await session.execute(
        insert(GpuPrice)
        .values(name=name, usd_per_hour=price, updated_at=utcnow())
        .on_conflict_do_update(
            index_elements=[GpuPrice.name],
            set_={"usd_per_hour": price, "updated_at": utcnow()},
        )
    )
    return next(e for e in (await catalog(session)).gpus if e.name == name)
