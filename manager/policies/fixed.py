"""``fixed``: a constant number of replicas (``{"replicas": N}``, default 1, 0 stops it)."""

from __future__ import annotations

from typing import Any

from ._rules import ROOT, reject_unknown_keys, require_int

DEFAULT_REPLICAS = 1


def validate_config(config: dict[str, Any], max_replicas: int) -> None:
    reject_unknown_keys(config, ("replicas",), ROOT, "fixed")
    require_int(config, "replicas", ROOT, minimum=0, maximum=max_replicas)


def desired_replica_count(config: dict[str, Any] | None) -> int:
    replicas = (config or {}).get("replicas")
    return DEFAULT_REPLICAS if replicas is None else int(replicas)
