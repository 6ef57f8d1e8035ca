"""Placement: which worker and GPUs a new replica goes to, or why it fits nowhere.

Pure functions over a snapshot of workers, their GPUs and current claims, so the rules can be
tested without a database. Filters pick the workers a workload may use; a fit check per engine
claim kind picks GPUs; candidates are ordered to spread a workload's replicas across hosts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ik_contracts.engines import engine_for
from manager.states import WorkerState

# Shared engines (llama.cpp, Ollama) claim the model file's size plus headroom for the KV cache.
SHARED_OVERHEAD_MB = 512
SHARED_HEADROOM = 1.2
UNKNOWN_MODEL_MB = 4096


@dataclass
class GpuSlot:
    id: str
    uuid: str
    name: str
    memory_total_mb: int
    claimed_mb: int = 0
    whole_claimed: bool = False
    shared_claims: int = 0

    @property
    def free_mb(self) -> int:
        return 0 if self.whole_claimed else self.memory_total_mb - self.claimed_mb

    @property
    def wholly_free(self) -> bool:
        return not self.whole_claimed and self.shared_claims == 0


@dataclass
class WorkerSlot:
    id: str
    name: str
    project_id: str | None
    state: str
    state_reason: str | None
    gpus: list[GpuSlot]
    model_files: dict[str, int] = field(default_factory=dict)
    replicas_of: dict[str, int] = field(default_factory=dict)  # workload id -> count

    @property
    def replica_total(self) -> int:
        return sum(self.replicas_of.values())


@dataclass(frozen=True)
class Demand:
    """What one more replica of a workload needs."""

    workload_id: str
    project_id: str
    backend: str
    model_name: str
    command: str | None
    worker_pin: str | None = None
    gpu_pin: str | None = None


@dataclass(frozen=True)
class Placement:
    worker_id: str
    gpu_ids: tuple[str, ...]
    gpu_uuids: tuple[str, ...]
    claim_memory_mb: int


@dataclass(frozen=True)
class Unschedulable:
    reason: str


def _argv(demand: Demand) -> list[str]:
    engine = engine_for(demand.backend)
    argv, _ = engine.build_argv(demand.command, demand.model_name, "127.0.0.1", 0)
    return argv


def estimate_shared_claim_mb(model_path: str | None, worker: WorkerSlot) -> int:
    """GPU memory a shared engine needs: from the model file's size when the worker knows it."""
    size = worker.model_files.get(model_path) if model_path else None
    if size is None:
        return UNKNOWN_MODEL_MB
    return int(size / (1024 * 1024) * SHARED_HEADROOM) + SHARED_OVERHEAD_MB


def _pool(demand: Demand, workers: list[WorkerSlot]) -> tuple[list[WorkerSlot], str | None]:
    """Workers this workload may use, or the reason there are none."""
    allowed = [w for w in workers if w.project_id in (None, demand.project_id)]
    if demand.gpu_pin:
        allowed = [w for w in allowed if any(g.id == demand.gpu_pin for g in w.gpus)]
        if not allowed:
            return [], f"pinned GPU {demand.gpu_pin} is not on any worker this project may use"
    if demand.worker_pin:
        allowed = [w for w in allowed if w.id == demand.worker_pin]
        if not allowed:
            return (
                [],
                f"pinned worker {demand.worker_pin} does not exist or belongs to another project",
            )
    if not allowed:
        return [], (
            "no worker is registered for this project or the shared pool; create one with "
            "`inferencekey admin worker create` and start its agent"
        )
    ready = [w for w in allowed if w.state == WorkerState.READY]
    if not ready:
        states = "; ".join(
            f"{w.id} is {w.state} ({w.state_reason or 'no heartbeat yet'})" for w in allowed
        )
        return [], f"no ready worker: {states}"
    return ready, None


def _fit_whole(demand: Demand, worker: WorkerSlot, count: int) -> Placement | str:
    if demand.gpu_pin:
        pinned = next(g for g in worker.gpus if g.id == demand.gpu_pin)
        if count > 1:
            return (
                f"{worker.id}: the command asks for {count} GPUs (tensor parallel) but the "
                f"workload is pinned to one GPU ({pinned.id}); drop gpu_resource_id or pin a "
                "worker instead"
            )
        if not pinned.wholly_free:
            return f"{worker.id}: pinned GPU {pinned.id} is not free (another replica uses it)"
    free = [
        g for g in worker.gpus if g.wholly_free and (not demand.gpu_pin or g.id == demand.gpu_pin)
    ]
    if len(free) < count:
        have = (
            "no GPUs (CPU only)"
            if not worker.gpus
            else f"{len(free)} of {len(worker.gpus)} GPUs free"
        )
        return f"{worker.id}: {have}"
    chosen = free[:count]
    return Placement(worker.id, tuple(g.id for g in chosen), tuple(g.uuid for g in chosen), 0)


def _fit_shared(demand: Demand, worker: WorkerSlot, model_path: str | None) -> Placement | str:
    claim = estimate_shared_claim_mb(model_path, worker)
    if not worker.gpus:
        return Placement(worker.id, (), (), 0)  # runs on the CPU
    candidates = [g for g in worker.gpus if not demand.gpu_pin or g.id == demand.gpu_pin]
    best = max(candidates, key=lambda g: g.free_mb, default=None)
    if best is None or best.free_mb < claim:
        most = best.free_mb if best else 0
        where = (
            f"pinned GPU {demand.gpu_pin} has" if demand.gpu_pin else "the most free on one GPU is"
        )
        return f"{worker.id}: needs ~{claim} MB of GPU memory, {where} {most} MB"
    return Placement(worker.id, (best.id,), (best.uuid,), claim)


def place(demand: Demand, workers: list[WorkerSlot]) -> Placement | Unschedulable:
    """Pick a worker (and GPUs) for one more replica, spreading a workload across hosts."""
    pool, reason = _pool(demand, workers)
    if reason:
        return Unschedulable(reason)
    engine = engine_for(demand.backend)
    # The command is the same for every candidate: read what it asks for once.
    argv = _argv(demand)
    whole = engine.gpu_claim == "whole"
    gpus_needed = engine.tensor_parallel_size(argv) if whole else 0
    model_path = None if whole else engine.model_path(argv)
    ordered = sorted(
        pool, key=lambda w: (w.replicas_of.get(demand.workload_id, 0), w.replica_total, w.id)
    )
    misses: list[str] = []
    for worker in ordered:
        if whole:
            fit = _fit_whole(demand, worker, gpus_needed)
        else:
            fit = _fit_shared(demand, worker, model_path)
        if isinstance(fit, Placement):
            return fit
        misses.append(fit)
    if whole:
        summary = f"{demand.backend} needs {gpus_needed} free whole GPU(s) on one worker"
    else:
        summary = f"{demand.backend} needs GPU memory or a CPU-only worker"
    return Unschedulable(f"{summary}; " + "; ".join(misses))


def claim(placement: Placement, workers: list[WorkerSlot], demand: Demand, *, whole: bool) -> None:
    """Record a placement in the snapshot, so the next decision in the same pass sees it."""
    worker = next(w for w in workers if w.id == placement.worker_id)
    worker.replicas_of[demand.workload_id] = worker.replicas_of.get(demand.workload_id, 0) + 1
    for gpu in worker.gpus:
        if gpu.id in placement.gpu_ids:
            if whole:
                gpu.whole_claimed = True
            else:
                gpu.claimed_mb += placement.claim_memory_mb
                gpu.shared_claims += 1
