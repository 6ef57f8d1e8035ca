"""The OpenAPI document says what the Manager really answers: the bearer scheme each route
takes, and its error responses in the platform's error shape (FastAPI's 422 never leaves the
Manager: body errors are 400s)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "code", "message"],
    "properties": {
        "error": {"type": "string", "description": "the code for 403s, the sentence otherwise"},
        "code": {"type": "string", "description": "the typed error code"},
        "message": {"type": "string"},
        "field": {"type": "string", "description": "the offending field, where there is one"},
    },
}
SCHEMES = {
    "sdkToken": "an ik_sdk_ token (control plane)",
    "adminToken": "the operator's ik_admin_ credential",
    "agentToken": "a worker's ik_agent_ credential",
}
_ERRORS = {
    "400": "invalid input (validation_error, malformed_json, secret_in_spec, ...)",
    "401": "missing, unknown or revoked credential (invalid_credentials)",
    "403": "wrong_credential_type, project_scope_mismatch or scope_insufficient",
    "404": "unknown project, workload, token or route",
    "405": "method not allowed (the Allow header lists the allowed ones)",
    "413": "request body too large (body_too_large)",
    "429": "too many failed authentications from this address (Retry-After)",
    "500": "internal error",
    "503": "database unavailable or out of connections (Retry-After)",
}


def _schemes_for(path: str) -> list[dict[str, list[str]]]:
    if path.startswith("/api/admin"):
        return [{"adminToken": []}]
    if path.startswith("/api/agent"):
        return [{"agentToken": []}]
    if path in ("/api/workers", "/api/gpu-resources"):
        return [{"sdkToken": []}, {"adminToken": []}]
    return [{"sdkToken": []}]


def _document(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(title="InferenceKey Manager", version=app.version, routes=app.routes)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {
        name: {"type": "http", "scheme": "bearer", "description": text}
        for name, text in SCHEMES.items()
    }
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, text in _ERRORS.items():
                responses.setdefault(status, {"description": text, "content": error_body})
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
