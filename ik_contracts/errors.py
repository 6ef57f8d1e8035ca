"""The platform's one error body, as every route of the Manager and the agent writes it."""

from __future__ import annotations

from typing import Any

from inferencekey.errors import PERMISSION_CODES


def problem(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The platform's error shape, ``{"error", "code", "message"}`` plus any ``extra`` keys.

    ``error`` is the code for the 403 codes the official client parses from it
    (``wrong_credential_type``, ``project_scope_mismatch``, ``scope_insufficient``) and the
    sentence otherwise, because the official client shows ``error`` as the message.
    """
    error = code if code in PERMISSION_CODES else message
    return {"error": error, "code": code, "message": message, **extra}
