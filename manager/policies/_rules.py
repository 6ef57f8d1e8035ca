"""Small checks shared by the policy config validators; each error names the full key path."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from manager.errors import InvalidPolicyConfig

ROOT = "execution_policy_config"


def fail(path: str, message: str) -> InvalidPolicyConfig:
    return InvalidPolicyConfig(f"{path} {message}", field=path)


def reject_unknown_keys(
    config: dict[str, Any], allowed: Iterable[str], path: str, policy: str
) -> None:
    allowed = tuple(allowed)
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        raise InvalidPolicyConfig(
            f"{path} has unknown key(s) {names} for policy {policy!r}; "
            f"allowed keys: {', '.join(allowed)}",
            field=f"{path}.{unknown[0]}",
        )


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The setting that bounds replica counts, named in the error so operators know what to raise.
REPLICAS_SETTING = "INFERENCEKEY_MAX_REPLICAS_PER_WORKLOAD"


def require_int(
    config: dict[str, Any], key: str, path: str, *, minimum: int, maximum: int | None = None
) -> int | None:
    """An integer within bounds; ``maximum`` is a replica bound, named after its setting."""
    if key not in config:
        return None
    value = config[key]
    if not is_int(value) or value < minimum:
        raise fail(f"{path}.{key}", f"must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise fail(
            f"{path}.{key}",
            f"must be at most {maximum} (this Manager's {REPLICAS_SETTING}), got {value}",
        )
    return int(value)


def require_string_list(value: Any, path: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise fail(path, "must be a non-empty list of strings")
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise fail(path, "must contain only non-blank strings")
    return value
