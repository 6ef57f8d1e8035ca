"""The SDK's error hierarchy (contract section 9) and the mapping from HTTP answers to it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .results import Job


class InferenceKeyError(Exception):
    """Base of every error the SDK raises.

    ``status`` is the HTTP status when the Manager answered, ``code`` its typed error code.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ConfigurationError(InferenceKeyError):
    """The client is misconfigured (no token, no project, a secret in a spec); no request sent."""


class ValidationError(InferenceKeyError):
    """The request is invalid: a local check failed, or the Manager answered 400."""


class DriftError(ValidationError):
    """``ensure(on_drift=OnDrift.FAIL)`` found the live workload differs from the spec."""

    def __init__(self, message: str, *, fields: list[str]):
        super().__init__(message, code="workload_drifted")
        self.fields = fields


class PermissionDenied(InferenceKeyError):
    """403: wrong plane, wrong project or missing scope. ``code`` says which."""


class AuthError(PermissionDenied):
    """401: the credential is missing, unknown, malformed or revoked.

    A subclass of ``PermissionDenied`` because the official client raises that for a 401.
    """


class ApiError(InferenceKeyError):
    """Any other failure: a non-2xx answer, or the Manager could not be reached."""


class NotFoundError(ApiError):
    """404: the project or workload does not exist."""


class ConflictError(ApiError):
    """409: the request conflicts with the current state (e.g. a taken slug)."""


class JobTimeoutError(InferenceKeyError, TimeoutError):
    """``wait_job`` gave up: the job had not finished when its ``timeout`` ran out.

    Also a builtin ``TimeoutError``. ``job`` is the job as last seen (still queued or running).
    """

    def __init__(self, message: str, *, job: Job) -> None:
        super().__init__(message, code="job_timeout")
        self.job = job


class WebhookVerificationError(InferenceKeyError):
    """A webhook delivery failed ``inferencekey.webhooks.verify``: answer it with a 400.

    ``code`` says why: ``signature_missing``, ``signature_malformed``, ``signature_mismatch``,
    ``timestamp_out_of_tolerance`` or ``body_not_json``.
    """


# The 403 codes parsed from a body's ``error`` (the official client's three, and this platform's
# ``endpoint_disabled``: a workload's route or jobs switched off); any other is ``forbidden``.
PERMISSION_CODES = frozenset(
    {"wrong_credential_type", "project_scope_mismatch", "scope_insufficient", "endpoint_disabled"}
)


def error_from_response(status: int, body: Any, text: str) -> InferenceKeyError:
    """Build the typed error for a non-2xx answer with JSON ``body`` (or raw ``text``)."""
    code: str | None = None
    message = text.strip() or "request failed"
    if isinstance(body, dict):
        raw_error = body.get("error")
        if isinstance(body.get("code"), str):
            code = body["code"]
        if isinstance(body.get("message"), str):
            message = body["message"]
        elif isinstance(raw_error, str):
            message = raw_error
    if status == 400:
        return ValidationError(f"bad request: {message}", status=status, code=code)
    if status == 401:
        return AuthError(f"authentication failed: {message}", status=status, code=code)
    if status == 403:
        shown = code if code in PERMISSION_CODES else "forbidden"
        return PermissionDenied(
            f"permission denied [{shown}]: {message}", status=status, code=shown
        )
    if status == 404:
        return NotFoundError(f"not found: {message}", status=status, code=code)
    if status == 409:
        return ConflictError(f"conflict: {message}", status=status, code=code)
    return ApiError(f"api error (status {status}): {message}", status=status, code=code)


class BackendError(InferenceKeyError):
    """A custom backend failed on this machine: while loading, serving or being packaged."""


class BackendSetupError(BackendError):
    """A custom backend's ``setup()`` (or its constructor) raised: the backend never became ready.

    ``python -m inferencekey.backend.serve`` exits 1 with it.
    """


class BackendEntrypointError(BackendError):
    """The ``module:Class`` entrypoint (or the config) of a custom backend cannot be used.

    Raised for a malformed entrypoint, a module that fails to import, a missing attribute or one
    that is not a ``CustomBackend``. ``python -m inferencekey.backend.serve`` exits 2 with it.
    """


class PackagingError(BackendError):
    """A custom-backend package cannot be built or read: a bad source, manifest or archive.

    ``python -m inferencekey.backend.package`` exits 2 with it; the message names the fault.
    """
