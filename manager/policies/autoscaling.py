"""``autoscaling``: between ``min_workers`` and ``max_workers`` with demand.

Shapes (contract section 6): cloud pool with a cost ceiling, private worker ids, or the legacy
root ``gpu_pool`` (which cannot carry ``allowed_cuda_versions``).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from ._rules import (
    ROOT,
    fail,
    is_int,
    is_number,
    reject_unknown_keys,
    require_int,
    require_string_list,
)
from .base import Desired, Policy, PolicyContext

ROOT_KEYS = (
    "min_workers",
    "max_workers",
    "target_in_flight",
    "max_hourly_cost_usd",
    "workers",
    "gpu_pool",
)
# Requests in flight one replica is meant to carry; more and another replica is added.
DEFAULT_TARGET_IN_FLIGHT = 4
MAX_TARGET_IN_FLIGHT = 10_000
IDLE_REASON = "idle at zero replicas; the next request wakes it"
WORKERS_KEYS = ("source", "cloud_pool", "private_worker_ids")
CLOUD_POOL_KEYS = ("gpu_pool", "max_hourly_cost_usd", "max_instances", "allowed_cuda_versions")
SOURCES = ("cloud", "private")
_CUDA_VERSION = re.compile(r"^\d+\.\d+$")


def _require_positive_cost(config: dict[str, Any], path: str, *, required: bool) -> None:
    if "max_hourly_cost_usd" not in config:
        if required:
            raise fail(
                f"{path}.max_hourly_cost_usd", "is required for a cloud pool and must be > 0"
            )
        return
    value = config["max_hourly_cost_usd"]
    if not is_number(value) or value <= 0:
        raise fail(f"{path}.max_hourly_cost_usd", f"must be greater than zero, got {value!r}")


def _validate_cloud_pool(pool: Any, path: str, max_replicas: int) -> None:
    if not isinstance(pool, dict):
        raise fail(path, "must be an object")
    reject_unknown_keys(pool, CLOUD_POOL_KEYS, path, "autoscaling")
    require_string_list(pool.get("gpu_pool"), f"{path}.gpu_pool")
    _require_positive_cost(pool, path, required=False)
    require_int(pool, "max_instances", path, minimum=1, maximum=max_replicas)
    if "allowed_cuda_versions" in pool:
        versions = require_string_list(
            pool["allowed_cuda_versions"], f"{path}.allowed_cuda_versions"
        )
        for version in versions:
            if not _CUDA_VERSION.match(version):
                raise fail(f"{path}.allowed_cuda_versions", f"{version!r} is not like '13.0'")


def _validate_workers(workers: Any, config: dict[str, Any], max_replicas: int) -> None:
    path = f"{ROOT}.workers"
    if not isinstance(workers, dict):
        raise fail(path, "must be an object")
    reject_unknown_keys(workers, WORKERS_KEYS, path, "autoscaling")
    source = workers.get("source")
    if source not in SOURCES:
        raise fail(f"{path}.source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "cloud":
        if "private_worker_ids" in workers:
            raise fail(f"{path}.private_worker_ids", "is only for source 'private'")
        if "cloud_pool" not in workers:
            raise fail(f"{path}.cloud_pool", "is required for source 'cloud'")
        _require_positive_cost(config, ROOT, required=True)
        _validate_cloud_pool(workers["cloud_pool"], f"{path}.cloud_pool", max_replicas)
    else:
        if "cloud_pool" in workers:
            raise fail(f"{path}.cloud_pool", "is only for source 'cloud'")
        require_string_list(workers.get("private_worker_ids"), f"{path}.private_worker_ids")


def validate_config(config: dict[str, Any], max_replicas: int) -> None:
    if "allowed_cuda_versions" in config:
        raise fail(
            f"{ROOT}.allowed_cuda_versions",
            "cannot be set with the legacy root gpu_pool; use "
            "workers.cloud_pool.allowed_cuda_versions",
        )
    reject_unknown_keys(config, ROOT_KEYS, ROOT, "autoscaling")
    min_workers = require_int(config, "min_workers", ROOT, minimum=0, maximum=max_replicas)
    max_workers = require_int(config, "max_workers", ROOT, minimum=0, maximum=max_replicas)
    if is_int(min_workers) and is_int(max_workers) and min_workers > max_workers:  # type: ignore[operator]
        raise fail(
            f"{ROOT}.min_workers",
            f"({min_workers}) must be <= max_workers ({max_workers})",
        )
    _require_positive_cost(config, ROOT, required=False)
    if "target_in_flight" in config:
        target = config["target_in_flight"]
        if not is_number(target) or not 0 < target <= MAX_TARGET_IN_FLIGHT:
            raise fail(
                f"{ROOT}.target_in_flight",
                f"must be a number greater than 0 and at most {MAX_TARGET_IN_FLIGHT}, "
                f"got {target!r}",
            )
    if "gpu_pool" in config:
        if "workers" in config:
            raise fail(
                f"{ROOT}.gpu_pool", "cannot be combined with workers; use workers.cloud_pool"
            )
        require_string_list(config["gpu_pool"], f"{ROOT}.gpu_pool")
        _require_positive_cost(config, ROOT, required=True)
    elif "workers" in config:
        _validate_workers(config["workers"], config, max_replicas)
    else:
        # Without a pool the policy would scale onto any worker, at any cost.
        raise fail(
            f"{ROOT}.workers",
            'is required for policy \'autoscaling\': {"source": "cloud", "cloud_pool": '
            '{...}} or {"source": "private", "private_worker_ids": [...]} (or the '
            "legacy root gpu_pool)",
        )


def desired(context: PolicyContext) -> Desired:
    """Replicas for the demand: ``ceil(load / target_in_flight)`` between the bounds.

    The load is the highest of what the gateways report (requests in flight, held ones
    included, or their average over the last report's window) and what the ready replicas'
    engines report running or queued on their /metrics, plus queued async jobs. Up at
    once; down only once the count has been stable for the scale-down delay; to zero (with
    ``min_workers: 0``) only after the idle period without a request.
    """
    config, demand, now = context.config, context.demand, context.now
    floor = int(config.get("min_workers") or 0)
    ceiling = max(floor, int(config.get("max_workers") or 0))
    target = float(config.get("target_in_flight") or DEFAULT_TARGET_IN_FLIGHT)
    engine = float(demand.engine_requests or 0)
    load = max(float(demand.in_flight_requests), demand.concurrency, engine) + demand.queued_jobs
    wanted = min(max(math.ceil(load / target - 1e-9), floor), ceiling)
    current = context.current_replicas
    queued = f" incl. {demand.queued_jobs} queued job(s)" if demand.queued_jobs else ""
    figures = f"{load:g} in flight{queued}, target {target:g} per replica"
    if wanted > current:
        return wanted, f"scaled {current} → {wanted}: {figures}"
    if wanted == current:
        if current == 0:
            return 0, IDLE_REASON
        return current, f"holding {current}: {figures}"
    if wanted == 0:
        idle_since = _latest(demand.last_request_at, context.last_scaled_at)
        if idle_since is not None and (now - idle_since).total_seconds() < context.idle_s:
            wanted = 1  # not idle long enough for zero: down to one at most
        else:
            return 0, f"scaled {current} → 0: no request for {context.idle_s:g}s; {IDLE_REASON}"
    since = context.last_scaled_at
    stable_for = (now - since).total_seconds() if since is not None else math.inf
    if wanted >= current or stable_for < context.scale_down_delay_s:
        return current, f"holding {current}: {figures}"
    return wanted, f"scaled {current} → {wanted}: {figures}"


def _latest(*moments: datetime | None) -> datetime | None:
    known = [moment for moment in moments if moment is not None]
    return max(known) if known else None


POLICY = Policy(validate_config, desired)
