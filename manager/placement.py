"""Placement: which worker and GPUs a new replica goes to, or why it fits nowhere.

Pure functions over a snapshot of workers, their GPUs and current claims, so the rules can be
tested without a database. Filters pick the workers a workload may use (its pool: private worker
ids, or shared workers with GPUs named in ``gpu_pool`` and an allowed CUDA version); a fit check
per engine claim kind picks GPUs, within what is left of the workload's hourly cost ceiling;
candidates are ordered to spread a workload's replicas across hosts. A custom backend claims
like llama.cpp (memory on one GPU, or a CPU-only worker), or nothing at all when its package
says ``cpu_only``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ik_contracts.engines import ENGINES, engine_for
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
    # The operator's hourly price for this display name (the GPU catalog); None when unpriced.
    price_usd_per_hour: float | None = None
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
    cuda_version: str | None = None
    # Workload id -> its replicas here; changed through add_replica and forget_replicas only,
    # which keep ``replica_total`` (placement orders a thousand workers by it per decision).
    replicas_of: dict[str, int] = field(default_factory=dict)
    # ``gpus`` by id: a replica's GPUs found without a scan of its worker's.
    gpu_of: dict[str, GpuSlot] = field(init=False, repr=False, compare=False)
    replica_total: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        self.gpu_of = {gpu.id: gpu for gpu in self.gpus}
        self.replica_total = sum(self.replicas_of.values())

    def add_replica(self, workload_id: str) -> None:
        self.replicas_of[workload_id] = self.replicas_of.get(workload_id, 0) + 1
        self.replica_total += 1

    def forget_replicas(self) -> None:
        self.replicas_of = {}
        self.replica_total = 0


@dataclass(frozen=True)
class Pool:
    """Where a workload may run and what it may spend: its policy config's pool keys
    (`manager.policies.pools.pool_of`). The default is any ready worker of the project or the
    shared pool, at any cost."""

    private_worker_ids: tuple[str, ...] | None = None  # workers.source "private"
    gpu_names: tuple[str, ...] | None = None  # gpu_pool: the shared pool, these GPUs only
    cuda_versions: tuple[str, ...] | None = None  # allowed_cuda_versions
    max_hourly_cost_usd: float | None = None  # the lower of the root's and the cloud pool's
    max_instances: int | None = None

    def describe(self) -> str:
        """The pool as a reason names it, in the config's own words."""
        if self.private_worker_ids is not None:
            return f"private_worker_ids [{', '.join(self.private_worker_ids)}]"
        if self.gpu_names is None:
            return "this project's workers and the shared pool"
        text = f"gpu_pool [{', '.join(self.gpu_names)}]"
        if self.cuda_versions is not None:
            text += f" with allowed_cuda_versions [{', '.join(self.cuda_versions)}]"
        return text

    def usable_gpus(self, worker: WorkerSlot) -> list[GpuSlot]:
        """The worker's GPUs this pool may use (all of them outside a gpu_pool)."""
        if self.gpu_names is None:
            return list(worker.gpus)
        if self.cuda_versions is not None and worker.cuda_version not in self.cuda_versions:
            return []
        return [g for g in worker.gpus if g.name in self.gpu_names]

    def admits(self, worker: WorkerSlot, project_id: str, gpu_ids: Iterable[str]) -> bool:
        """Whether a replica on ``worker`` holding ``gpu_ids`` is inside this pool."""
        if self.private_worker_ids is not None:
            if worker.project_id != project_id or worker.id not in self.private_worker_ids:
                return False
        elif worker.project_id not in (None, project_id) or (
            self.gpu_names is not None and worker.project_id is not None
        ):
            return False  # another project's worker, or a private one for a shared-pool pool
        if self.gpu_names is None and self.max_hourly_cost_usd is None:
            return True
        usable = {g.id: g for g in self.usable_gpus(worker)}
        held = [usable.get(gpu_id) for gpu_id in gpu_ids]
        # A cost-limited pool uses priced GPUs only.
        return all(
            gpu is not None
            and (self.max_hourly_cost_usd is None or gpu.price_usd_per_hour is not None)
            for gpu in held
        )


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
    pool: Pool = field(default_factory=Pool)
    # Hourly USD left under the pool's cost ceiling (None: no ceiling), and the GPUs the
    # workload holds already (another replica on one of them costs nothing more).
    budget_usd_per_hour: float | None = None
    held_gpu_ids: frozenset[str] = frozenset()
    # ``backend`` is a custom backend's slug with a published version; ``cpu_only``: its
    # package needs no GPU.
    custom_backend: bool = False
    cpu_only: bool = False


@dataclass(frozen=True)
class Placement:
    worker_id: str
    gpu_ids: tuple[str, ...]
    gpu_uuids: tuple[str, ...]
    claim_memory_mb: int
    added_usd_per_hour: float = 0.0


@dataclass(frozen=True)
class Unschedulable:
    reason: str
    # Some worker had room but not within the cost ceiling: what the cheapest such replica
    # would add per hour. None when room, not money, is what is missing.
    over_budget_usd_per_hour: float | None = None


@dataclass(frozen=True)
class OverBudget:
    """A fit that the cost ceiling rules out; a miss, with what it would have cost."""

    reason: str
    added_usd_per_hour: float


def _added_cost(demand: Demand, gpus: Iterable[GpuSlot]) -> float:
    return sum(g.price_usd_per_hour or 0.0 for g in gpus if g.id not in demand.held_gpu_ids)


def _priced(demand: Demand, gpus: list[GpuSlot]) -> list[GpuSlot]:
    """In a cost-limited pool, only GPUs with a price; cheapest first."""
    if demand.pool.max_hourly_cost_usd is None:
        return gpus
    priced = [g for g in gpus if g.price_usd_per_hour is not None]
    return sorted(priced, key=lambda g: g.price_usd_per_hour or 0.0)


def _unpriced_note(demand: Demand, gpus: list[GpuSlot]) -> str:
    if demand.pool.max_hourly_cost_usd is None:
        return ""
    unpriced = sorted({g.name for g in gpus if g.price_usd_per_hour is None})
    if not unpriced:
        return ""
    return (
        f" ({', '.join(unpriced)} unpriced: a pool with max_hourly_cost_usd uses priced GPUs "
        "only; set one with `inferencekey admin gpu-price set`)"
    )


def claims_whole_gpus(backend: str) -> bool:
    """Whether a replica of ``backend`` holds its GPUs alone (custom backends share)."""
    engine = ENGINES.get(backend)
    return engine is not None and engine.gpu_claim == "whole"


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
    pool = demand.pool
    if pool.private_worker_ids is not None:
        allowed = [
            w
            for w in workers
            if w.id in pool.private_worker_ids and w.project_id == demand.project_id
        ]
        if not allowed:
            return [], f"no worker of {pool.describe()} is registered to this project"
    elif pool.gpu_names is not None:
        shared = [w for w in workers if w.project_id is None]
        allowed = [w for w in shared if pool.usable_gpus(w)]
        if not allowed:
            seen = sorted(
                {f"{g.name} (CUDA {w.cuda_version or '?'})" for w in shared for g in w.gpus}
            )
            return [], (
                f"no shared-pool worker has a GPU in {pool.describe()}; the shared pool has "
                f"{', '.join(seen) if seen else 'no GPUs'}"
            )
    else:
        project_id = demand.project_id
        allowed = [w for w in workers if w.project_id is None or w.project_id == project_id]
    where = "this project may use" if pool == Pool() else f"in {pool.describe()}"
    if demand.gpu_pin:
        allowed = [w for w in allowed if any(g.id == demand.gpu_pin for g in w.gpus)]
        if not allowed:
            return [], f"pinned GPU {demand.gpu_pin} is not on any worker {where}"
    if demand.worker_pin:
        allowed = [w for w in allowed if w.id == demand.worker_pin]
        if not allowed:
            return (
                [],
                f"pinned worker {demand.worker_pin} does not exist or belongs to another project"
                + ("" if pool == Pool() else f" (or is not in {pool.describe()})"),
            )
    if not allowed:
        return [], (
            "no worker is registered for this project or the shared pool; create one with "
            "`inferencekey admin worker create` and start its agent"
        )
    ready_state = WorkerState.READY.value  # a plain str: compared a thousand times
    ready = [w for w in allowed if w.state == ready_state]
    if not ready:
        states = "; ".join(
            f"{w.id} is {w.state} ({w.state_reason or 'no heartbeat yet'})" for w in allowed
        )
        return [], f"no ready worker: {states}"
    return ready, None


def _usable(demand: Demand, worker: WorkerSlot) -> tuple[list[GpuSlot], str]:
    """The worker's GPUs this replica may take (pool, price), and a note on any left out."""
    in_pool = demand.pool.usable_gpus(worker)
    return _priced(demand, in_pool), _unpriced_note(demand, in_pool)


def _within_budget(demand: Demand, fit: Placement, worker: WorkerSlot) -> Placement | OverBudget:
    budget = demand.budget_usd_per_hour
    if budget is None or fit.added_usd_per_hour <= budget + 1e-9:
        return fit
    chosen = [g for g in worker.gpus if g.id in fit.gpu_ids]
    return OverBudget(
        f"{worker.id}: {len(chosen)} x {chosen[0].name} would add "
        f"{fit.added_usd_per_hour:.2f}/h, {budget:.2f}/h is left under max_hourly_cost_usd",
        fit.added_usd_per_hour,
    )


def _fit_whole(demand: Demand, worker: WorkerSlot, count: int) -> Placement | OverBudget | str:
    gpus, note = _usable(demand, worker)
    if demand.gpu_pin:
        pinned = next(g for g in worker.gpus if g.id == demand.gpu_pin)
        if count > 1:
            return (
                f"{worker.id}: the command asks for {count} GPUs (tensor parallel) but the "
                f"workload is pinned to one GPU ({pinned.id}); drop gpu_resource_id or pin a "
                "worker instead"
            )
        if pinned not in gpus:
            return f"{worker.id}: pinned GPU {pinned.id} is not in {demand.pool.describe()}{note}"
        if not pinned.wholly_free:
            return f"{worker.id}: pinned GPU {pinned.id} is not free (another replica uses it)"
    free = [g for g in gpus if g.wholly_free and (not demand.gpu_pin or g.id == demand.gpu_pin)]
    if len(free) < count:
        if not worker.gpus:
            have = "no GPUs (CPU only)"
        elif demand.pool.gpu_names is None and len(gpus) == len(worker.gpus):
            have = f"{len(free)} of {len(worker.gpus)} GPUs free"
        else:
            have = f"{len(free)} of {len(gpus)} usable GPUs free"
        return f"{worker.id}: {have}{note}"
    chosen = free[:count]
    fit = Placement(
        worker.id,
        tuple(g.id for g in chosen),
        tuple(g.uuid for g in chosen),
        0,
        _added_cost(demand, chosen),
    )
    return _within_budget(demand, fit, worker)


def _fit_shared(
    demand: Demand, worker: WorkerSlot, model_path: str | None
) -> Placement | OverBudget | str:
    claim = estimate_shared_claim_mb(model_path, worker)
    if not worker.gpus:
        return Placement(worker.id, (), (), 0)  # runs on the CPU
    gpus, note = _usable(demand, worker)
    candidates = [g for g in gpus if not demand.gpu_pin or g.id == demand.gpu_pin]
    roomy = [g for g in candidates if g.free_mb >= claim]
    if not roomy:
        most = max((g.free_mb for g in candidates), default=0)
        where = (
            f"pinned GPU {demand.gpu_pin} has" if demand.gpu_pin else "the most free on one GPU is"
        )
        return f"{worker.id}: needs ~{claim} MB of GPU memory, {where} {most} MB{note}"
    # Without a ceiling, the GPU with the most free memory; with one, the cheapest first (a GPU
    # the workload holds already costs nothing more).
    limited = demand.pool.max_hourly_cost_usd is not None
    best = min(roomy, key=lambda g: (_added_cost(demand, [g]) if limited else 0.0, -g.free_mb))
    fit = Placement(worker.id, (best.id,), (best.uuid,), claim, _added_cost(demand, [best]))
    return _within_budget(demand, fit, worker)


_LOAD = operator.attrgetter("replica_total", "id")


def _spreading(pool: list[WorkerSlot], workload_id: str) -> Iterator[WorkerSlot]:
    """The pool's workers in the order placement tries them: fewest replicas of this workload,
    then fewest replicas, then by id. The first is found without sorting the rest, which are
    sorted only if it does not fit: at a thousand workers, sorting them for every decision
    was most of a reconcile pass's CPU in a burst of creates."""

    def key(worker: WorkerSlot) -> tuple[int, int, str]:
        return worker.replicas_of.get(workload_id, 0), worker.replica_total, worker.id

    # The least loaded worker, by a key read in C; if it runs none of this workload's replicas
    # it is first by the whole key too (no count is below none).
    first = min(pool, key=_LOAD, default=None)
    if first is None:
        return
    if first.replicas_of.get(workload_id, 0):
        first = min(pool, key=key)
    yield first
    yield from sorted((w for w in pool if w is not first), key=key)


def place(demand: Demand, workers: list[WorkerSlot]) -> Placement | Unschedulable:
    """Pick a worker (and GPUs) for one more replica, spreading a workload across hosts."""
    if not demand.custom_backend and demand.backend not in ENGINES:
        return Unschedulable(
            f"backend {demand.backend!r} is not built in and the tenant has no custom backend "
            "of that slug with a published version"
        )
    pool, reason = _pool(demand, workers)
    if reason:
        return Unschedulable(reason)
    if demand.custom_backend:
        whole, gpus_needed, model_path = False, 0, None
    else:
        engine = engine_for(demand.backend)
        # The command is the same for every candidate: read what it asks for once.
        argv = _argv(demand)
        whole = engine.gpu_claim == "whole"
        gpus_needed = engine.tensor_parallel_size(argv) if whole else 0
        model_path = None if whole else engine.model_path(argv)
    misses: list[str] = []
    over_budget: list[float] = []
    for worker in _spreading(pool, demand.workload_id):
        if demand.cpu_only:
            return Placement(worker.id, (), (), 0)  # its package needs no GPU: claim none
        if whole:
            fit = _fit_whole(demand, worker, gpus_needed)
        else:
            fit = _fit_shared(demand, worker, model_path)
        if isinstance(fit, Placement):
            return fit
        if isinstance(fit, OverBudget):
            over_budget.append(fit.added_usd_per_hour)
            fit = fit.reason
        misses.append(fit)
    if whole:
        summary = f"{demand.backend} needs {gpus_needed} free whole GPU(s) on one worker"
    else:
        summary = f"{demand.backend} needs GPU memory or a CPU-only worker"
    if demand.pool != Pool():
        summary += f" in {demand.pool.describe()}"
    return Unschedulable(f"{summary}; " + "; ".join(misses), min(over_budget, default=None))


def claim(placement: Placement, workers: list[WorkerSlot], demand: Demand, *, whole: bool) -> None:
    """Record a placement in the snapshot, so the next decision in the same pass sees it."""
    worker = next(w for w in workers if w.id == placement.worker_id)
    worker.add_replica(demand.workload_id)
    for gpu in worker.gpus:
        if gpu.id in placement.gpu_ids:
            if whole:
                gpu.whole_claimed = True
            else:
                gpu.claimed_mb += placement.claim_memory_mb
                gpu.shared_claims += 1
