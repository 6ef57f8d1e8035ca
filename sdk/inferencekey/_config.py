"""Where client settings come from: explicit argument > environment > default."""

from __future__ import annotations

import os

DEFAULT_BASE_URL = "https://api.inferencekey.com"


def present(value: str | None) -> str | None:
    """``value`` trimmed, or None when it is missing or blank."""
    if value is None:
        return None
    trimmed = value.strip()
    return trimmed or None


def from_env(explicit: str | None, name: str) -> str | None:
    """``explicit`` if given, else the environment variable ``name`` (trimmed; blank = absent)."""
    # A falsy explicit value falls through to the environment, as in the official client.
    return explicit or present(os.environ.get(name))
