"""Rules on spec fields that hold everywhere: slugs, blank fields, secrets, token redaction.

The SDK runs them before any request; the Manager repeats them because other clients don't.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

SECRET_PREFIXES: tuple[str, ...] = ("ik_live_", "ik_sdk_")
# A whole credential anywhere in a string (e.g. `--api-key ik_live_...` inside a command).
_EMBEDDED_TOKEN = re.compile(r"ik_(?:sdk|live|admin|agent)_[0-9a-f]{8}_[0-9a-f]{64}")
_TOKEN_SHAPE = re.compile(r"^ik_([a-z]+)_([^_]+)_(.+)$")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


def slugify(value: str) -> str:
    """Canonicalise a slug the way the Manager does.

    >>> slugify("Gemma 4 26B (llama.cpp / GGUF) on R9700")
    'gemma-4-26b-llama-cpp-gguf-on-r9700'
    """
    ascii_only = "".join(ch if ch.isascii() else "-" for ch in value)
    parts = _NOT_ALNUM.sub("-", ascii_only).lower().split("-")
    return "-".join(part for part in parts if part)


def redact_token(token: str) -> str:
    """What a log may show of a credential: ``ik_<kind>_<id8>…``."""
    match = _TOKEN_SHAPE.match(token or "")
    if not match or not match.group(3):
        return "ik…"
    return f"ik_{match.group(1)}_{match.group(2)[:8]}…"


def blank_field(fields: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` whose value is missing or blank, else None."""
    for name in names:
        value = fields.get(name)
        if not isinstance(value, str) or not value.strip():
            return name
    return None


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def secret_field(fields: Mapping[str, Any]) -> str | None:
    """The path of the first string that is (or contains) a credential, else None.

    A value starting with ``ik_live_``/``ik_sdk_`` is a secret; so is a whole well-formed
    credential anywhere inside a string. Mentioning the prefix in prose is fine.
    """
    for path, text in _strings(dict(fields), ""):
        if text.startswith(SECRET_PREFIXES) or _EMBEDDED_TOKEN.search(text):
            return path
    return None
