"""Every error leaves the Manager as ``{"error", "code", "message"}``; mapped here, once."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from inferencekey.wire import PLACEMENT_FIELDS
from starlette.exceptions import HTTPException as StarletteHTTPException

from manager.errors import (
    ApiProblem,
    BodyTooLarge,
    InvalidRequest,
    MalformedJson,
    MethodNotAllowed,
    PlacementFieldNotAllowed,
    RouteNotFound,
    ValidationFailed,
)

log = logging.getLogger("inferencekey.manager")

_TYPE_WORDS = {
    "string_type": "a string",
    "bool_type": "a boolean (true or false)",
    "int_type": "an integer",
    "dict_type": "an object",
    "list_type": "a list",
    "model_attributes_type": "an object",
}


def problem_response(problem: ApiProblem) -> JSONResponse:
    return JSONResponse(problem.body(), status_code=problem.status, headers=problem.headers)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path")]
    return ".".join(parts)


def problem_from_validation(errors: list[dict[str, Any]]) -> ApiProblem:
    """The first pydantic/FastAPI error as one clear 400 naming the field."""
    error = errors[0]
    kind = error.get("type", "")
    field = _field_path(tuple(error.get("loc", ())))
    if kind == "json_invalid":
        return MalformedJson(
            f"request body is not valid JSON: {error.get('ctx', {}).get('error', '')}".rstrip(": ")
        )
    if kind == "extra_forbidden":
        if field in PLACEMENT_FIELDS:
            return PlacementFieldNotAllowed(
                f"{field} is not a WorkloadSpec field: placement is the platform's job, "
                "so the Manager chooses workers and GPUs; pin with worker_id/gpu_resource_id",
                field=field,
            )
        return ValidationFailed(f"unknown field {field!r}", field=field)
    if kind == "missing":
        if not field:
            return InvalidRequest("request body is required (a JSON object)")
        return ValidationFailed(f"{field} is required", field=field)
    if not field:
        return InvalidRequest("request body must be a JSON object")
    expected = _TYPE_WORDS.get(kind)
    if expected:
        return ValidationFailed(f"{field} must be {expected}", field=field)
    return ValidationFailed(f"{field}: {error.get('msg', 'invalid value')}", field=field)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    async def on_problem(request: Request, problem: ApiProblem) -> JSONResponse:
        return problem_response(problem)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return problem_response(problem_from_validation(list(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            problem: ApiProblem = RouteNotFound(f"no route {request.method} {request.url.path}")
        elif error.status_code == 405:
            problem = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        elif error.status_code == 413:
            problem = BodyTooLarge(str(error.detail))
        else:
            problem = InvalidRequest(str(error.detail))
            problem.status = error.status_code  # type: ignore[misc]
        return problem_response(problem)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {
            "error": "internal error; the Manager log has the details",
            "code": "internal_error",
            "message": "internal error; the Manager log has the details",
        }
        return JSONResponse(body, status_code=500)
