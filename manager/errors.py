"""Errors are values with a code: one class per typed code, mapped to HTTP in one place."""

from __future__ import annotations

from typing import Any, ClassVar

from ik_contracts.errors import problem


class ApiProblem(Exception):
    """A failure the client should see; its body is ``ik_contracts.errors.problem``'s."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        field = {} if self.field is None else {"field": self.field}
        return problem(self.code, self.message, **field, **self.extra)


class InvalidRequest(ApiProblem):
    code = "invalid_request"


class ValidationFailed(ApiProblem):
    code = "validation_error"


class InvalidHeader(ApiProblem):
    code = "invalid_header"


class MalformedJson(ApiProblem):
    code = "malformed_json"


class UnknownBackend(ApiProblem):
    code = "unknown_backend"


class BackendNotAllowed(ApiProblem):
    code = "backend_not_allowed"


class PlacementFieldNotAllowed(ApiProblem):
    code = "placement_field_not_allowed"


class SecretInSpec(ApiProblem):
    code = "secret_in_spec"


class InvalidPolicyConfig(ApiProblem):
    code = "invalid_execution_policy_config"


class RouteNotServed(ApiProblem):
    code = "route_not_served"


class FieldNotPatchable(ApiProblem):
    code = "field_not_patchable"


class Unauthenticated(ApiProblem):
    status = 401
    code = "invalid_credentials"

    def __init__(self, message: str = "invalid or expired credentials", **extra: Any):
        super().__init__(message, **extra)
        self.headers = {"WWW-Authenticate": "Bearer"}


class WrongCredentialType(ApiProblem):
    status = 403
    code = "wrong_credential_type"


class ProjectScopeMismatch(ApiProblem):
    status = 403
    code = "project_scope_mismatch"


class ScopeInsufficient(ApiProblem):
    status = 403
    code = "scope_insufficient"


class EndpointDisabled(ApiProblem):
    """The workload's endpoint toggle for this route (or for jobs) is switched off."""

    status = 403
    code = "endpoint_disabled"


class UnsafeWebhookUrl(ApiProblem):
    """A webhook URL the SSRF rules refuse: not https, credentials in it, a non-public host."""

    code = "unsafe_webhook_url"


class WebhookLimitReached(ApiProblem):
    status = 409
    code = "webhook_limit_reached"


class DeliveryNotTerminal(ApiProblem):
    status = 409
    code = "delivery_not_terminal"


class NotFound(ApiProblem):
    status = 404
    code = "not_found"


class ProjectNotFound(NotFound):
    code = "project_not_found"


class WorkloadNotFound(NotFound):
    code = "workload_not_found"


class TokenNotFound(NotFound):
    code = "token_not_found"


class ReplicaNotFound(NotFound):
    code = "replica_not_found"


class RouteNotFound(NotFound):
    code = "route_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class WebhookNotFound(NotFound):
    code = "webhook_not_found"


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"


class MethodNotAllowed(ApiProblem):
    status = 405
    code = "method_not_allowed"


class SlugConflict(ApiProblem):
    status = 409
    code = "slug_conflict"


class BodyTooLarge(ApiProblem):
    status = 413
    code = "body_too_large"


class PackageTooLarge(BodyTooLarge):
    """A custom-backend upload over ``custom_backend_max_bytes``: a 400, which clients read as
    invalid input (the SDK's ValidationError), naming the limit."""

    status = 400


class InvalidPackage(ApiProblem):
    """An uploaded custom-backend package that is not a safe, valid one; the message names the
    fault (a member climbing out, a link, no manifest, ...)."""

    code = "invalid_package"


class PackageMismatch(ApiProblem):
    """A form part that disagrees with the package's manifest; names the field and both values."""

    code = "package_mismatch"


class TenantNotFound(NotFound):
    code = "tenant_not_found"


class CustomBackendNotFound(NotFound):
    code = "custom_backend_not_found"


class PackageNotFound(NotFound):
    code = "package_not_found"


class VersionExists(ApiProblem):
    """The version is published already, with other bytes: versions are immutable."""

    status = 409
    code = "version_exists"


class BackendInUse(ApiProblem):
    """Live workloads use the custom backend; the message names them."""

    status = 409
    code = "backend_in_use"


class TooManyFailedAuthentications(ApiProblem):
    status = 429
    code = "too_many_failed_authentications"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after_s)


class WorkerUnreachable(ApiProblem):
    status = 503
    code = "worker_unreachable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = "5"


class InternalError(ApiProblem):
    status = 500
    code = "internal_error"

    def __init__(self) -> None:
        super().__init__("internal error; the Manager log has the details")


class DatabaseUnavailable(ApiProblem):
    """The database has no connection to spare (pool or server exhausted, or unreachable)."""

    status = 503
    code = "database_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after_s)


class Overloaded(DatabaseUnavailable):
    """This Manager process has no room for the request now (its agent requests' share of the
    database is taken): shed at once rather than queued on the connection pool."""

    code = "overloaded"
