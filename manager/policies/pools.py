"""Which workers a policy config allows and what it may spend: its pool keys, read once.

Contract section 6: ``workers.source`` ``private`` with ``private_worker_ids``, or ``cloud`` with
``cloud_pool`` (``gpu_pool``, ``allowed_cuda_versions``, ``max_hourly_cost_usd``,
``max_instances``); the legacy root ``gpu_pool`` is a cloud pool without a CUDA pin; the root
``max_hourly_cost_usd`` caps any pool. On a self-hosted install "cloud" is the shared pool.
Only ``autoscaling`` accepts these keys (its validator), so other policies get the default pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from manager.placement import Pool

from ._rules import ROOT

PRIVATE_IDS_FIELD = f"{ROOT}.workers.private_worker_ids"
CLOUD_GPU_POOL_FIELD = f"{ROOT}.workers.cloud_pool.gpu_pool"
ROOT_GPU_POOL_FIELD = f"{ROOT}.gpu_pool"


def _names(value: Any) -> tuple[str, ...] | None:
    return tuple(value) if isinstance(value, list) else None


def pool_of(config: Mapping[str, Any]) -> Pool:
    """The pool a validated policy config describes."""
    workers = config.get("workers")
    workers = workers if isinstance(workers, Mapping) else {}
    cloud = workers.get("cloud_pool") if workers.get("source") == "cloud" else None
    cloud = cloud if isinstance(cloud, Mapping) else {}
    ceilings = [
        float(c["max_hourly_cost_usd"])
        for c in (config, cloud)
        if c.get("max_hourly_cost_usd") is not None
    ]
    ceiling = min(ceilings) if ceilings else None
    max_instances = cloud.get("max_instances")
    if workers.get("source") == "private":
        return Pool(
            private_worker_ids=_names(workers.get("private_worker_ids")),
            max_hourly_cost_usd=ceiling,
        )
    if cloud:
        return Pool(
            gpu_names=_names(cloud.get("gpu_pool")),
            cuda_versions=_names(cloud.get("allowed_cuda_versions")),
            max_hourly_cost_usd=ceiling,
            max_instances=max_instances if isinstance(max_instances, int) else None,
        )
    return Pool(gpu_names=_names(config.get("gpu_pool")), max_hourly_cost_usd=ceiling)


def gpu_pool_field(config: Mapping[str, Any]) -> str:
    """The key path of the config's gpu_pool, for a 400 that names it."""
    return CLOUD_GPU_POOL_FIELD if "workers" in config else ROOT_GPU_POOL_FIELD
