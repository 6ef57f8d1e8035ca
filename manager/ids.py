"""Server-assigned ids: a readable prefix and 128 random bits in lowercase base32."""

from __future__ import annotations

import base64
import secrets


def new_id(prefix: str) -> str:
    """``new_id("wl")`` -> ``wl_`` followed by 26 base32 characters."""
    raw = base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()
    return f"{prefix}_{raw}"
