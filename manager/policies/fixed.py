"""``fixed``: a constant number of replicas (``{"replicas": N}``, default 1, 0 stops it)."""

from __future__ import annotations

from typing import Any

from ._rules import ROOT, reject_unknown_keys, require_int
from .base import Desired, Policy, PolicyContext

DEFAULT_REPLICAS = 1


def validate_config(config: dict[str, Any], max_replicas: int) -> None:
    reject_unknown_keys(config, ("replicas",), ROOT, "fixed")
    require_int(config, "replicas", ROOT, minimum=0, maximum=max_replicas)


def desired(context: PolicyContext) -> Desired:
    replicas = context.config.get("replicas")
    count = DEFAULT_REPLICAS if replicas is None else int(replicas)
    return count, None if count else "fixed policy with replicas = 0"


POLICY = Policy(validate_config, desired)
