"""Rules on spec fields that hold everywhere: slugs, blank fields, secrets, token redaction.

The SDK runs them before any request; the Manager repeats them because other clients don't.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

SECRET_PREFIXES: tuple[str, ...] = ("ik_live_", "ik_sdk_")
# A whole credential anywhere in a string (e.g. `--api-key ik_live_...` inside a command): ours,
# and the well-known shapes of the keys people paste by mistake (Hugging Face, OpenAI and
# compatible, GitHub, GitLab, AWS, Slack, Google).
_EMBEDDED_TOKEN = re.compile(
    r"ik_(?:sdk|live|admin|agent)_[0-9a-f]{8}_[0-9a-f]{64}"
    r"|\bhf_[A-Za-z0-9]{30,}"
    r"|\bsk-(?:proj-|ant-|or-)?[A-Za-z0-9_-]{20,}"
    r"|\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}|\bgithub_pat_[A-Za-z0-9_]{40,}"
    r"|\bglpat-[A-Za-z0-9_-]{20,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
)
# Characters no name, slug, model or command has: C0 controls but tab, DEL, C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_BUT_LAYOUT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
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


def looks_like_credential(text: str) -> bool:
    """True for a string that is, or holds, a credential of a known shape."""
    return text.startswith(SECRET_PREFIXES) or _EMBEDDED_TOKEN.search(text) is not None


def secret_field(fields: Mapping[str, Any]) -> str | None:
    """The path of the first string or key that is (or contains) a credential, else None.

    A value starting with ``ik_live_``/``ik_sdk_`` is a secret; so is a whole well-formed
    credential of a known shape anywhere inside a string or an object key. Mentioning the
    prefix in prose is fine. A key that is a credential shows as ``<credential>`` in the path,
    so the path itself can be shown.
    """
    for path, text in _strings_and_keys(dict(fields), ""):
        if looks_like_credential(text):
            return path
    return None


def _strings_and_keys(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            shown = "<credential>" if looks_like_credential(str(key)) else str(key)
            key_path = f"{path}.{shown}" if path else shown
            yield key_path, str(key)
            yield from _strings_and_keys(item, key_path)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings_and_keys(item, f"{path}[{index}]")


def control_character_field(
    fields: Mapping[str, Any], multiline: tuple[str, ...] = ()
) -> str | None:
    """The path of the first string or key holding a control character (NUL and the like), or
    a lone surrogate, else None. Fields named in ``multiline`` may hold newlines and tabs."""
    for path, text in _strings_and_keys(dict(fields), ""):
        pattern = _CONTROL_BUT_LAYOUT if path in multiline else _CONTROL
        if pattern.search(text) or not _encodable(text):
            return path
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
