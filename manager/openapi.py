"""The OpenAPI document says what the Manager really answers: each route's response model, the
bearer scheme it takes, and its error responses in the platform's error shape (FastAPI's 422
never leaves the Manager: body errors are 400s)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from inferencekey.wire import ErrorBody, ReadinessEvent

SCHEMES = {
    "sdkToken": "an ik_sdk_ token (control plane)",
    "adminToken": "the operator's ik_admin_ credential",
    "agentToken": "a worker's ik_agent_ credential",
}
_ERRORS = {
    400: "invalid input (validation_error, malformed_json, secret_in_spec, ...)",
    401: "missing, unknown or revoked credential (invalid_credentials)",
    403: "wrong_credential_type, project_scope_mismatch or scope_insufficient",
    404: "unknown project, workload, token or route",
    405: "method not allowed (the Allow header lists the allowed ones)",
    413: "request body too large (body_too_large)",
    429: "too many failed authentications from this address (Retry-After)",
    500: "internal error",
    503: "database unavailable or out of connections (Retry-After)",
}
# Every /api router answers its errors in ErrorBody: ``APIRouter(responses=ERROR_RESPONSES)``.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _ERRORS.items()
}
# The two answers that are not one JSON document: the readiness stream and an engine's log.
READINESS_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "server-sent events: a snapshot of the phase now, then each change; "
        "ends after ready or error",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "string",
                    "description": "`data:` lines, each one ReadinessEvent as JSON; "
                    "`:` keep-alive comments between them",
                },
                "x-sse-data": {"$ref": "#/components/schemas/ReadinessEvent"},
            }
        },
    }
}
ENGINE_LOG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the engine's log as plain text: the last `tail` lines, then, with "
        "`follow=1`, what it writes next until the client goes",
        "headers": {
            "X-InferenceKey-Replica": {
                "description": "the replica whose log this is",
                "schema": {"type": "string"},
            }
        },
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


CUSTOM_BACKEND_PACKAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the package's bytes, as published",
        "headers": {
            "X-InferenceKey-Sha256": {
                "description": "the package's SHA-256 (hex), to check the download against",
                "schema": {"type": "string"},
            }
        },
        "content": {
            media_type: {"schema": {"type": "string", "format": "binary"}}
            for media_type in ("application/gzip", "application/zip")
        },
    }
}


def _schemes_for(path: str) -> list[dict[str, list[str]]]:
    if path.startswith("/api/admin"):
        return [{"adminToken": []}]
    if path.startswith("/api/agent"):
        return [{"agentToken": []}]
    if path in ("/api/workers", "/api/gpu-resources") or path.startswith("/api/tenants"):
        return [{"sdkToken": []}, {"adminToken": []}]
    return [{"sdkToken": []}]


def _document(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(title="InferenceKey Manager", version=app.version, routes=app.routes)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["ReadinessEvent"] = ReadinessEvent.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    components["securitySchemes"] = {
        name: {"type": "http", "scheme": "bearer", "description": text}
        for name, text in SCHEMES.items()
    }
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    # FastAPI files them under the route's own media type (text/plain for a
                    # log); every error is JSON.
                    response["content"] = error_body
            if "409" not in responses and operation.get("requestBody"):
                responses["409"] = {
                    "description": "conflict (slug_conflict)",
                    "content": error_body,
                }
            operation["security"] = _schemes_for(path)
    return document


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
