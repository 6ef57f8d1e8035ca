"""Every error leaves the Manager as ``{"error", "code", "message"}``; mapped here, once."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from inferencekey.wire import PLACEMENT_FIELDS
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SqlAlchemyTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ik_contracts.logs import ids
from manager.db import direct
from manager.errors import (
    ApiProblem,
    BodyTooLarge,
    DatabaseUnavailable,
    InternalError,
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


def database_unavailable(error: BaseException) -> DatabaseUnavailable | None:
    """A 503 for pool exhaustion, database overload or absence, and a transaction the database
    aborted in a conflict with a concurrent one; else None."""
    if isinstance(error, SqlAlchemyTimeout):
        return DatabaseUnavailable("all database connections are busy; retry shortly")
    if isinstance(error, DBAPIError):
        cause = error.orig.__cause__ or error.orig if error.orig is not None else None
        if error.connection_invalidated:
            return DatabaseUnavailable("the database is unavailable or out of connections; retry")
        return direct.unavailable(cause) if cause is not None else None
    return None


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
            problem.headers.update(error.headers or {})  # Allow: the methods that are
        elif error.status_code == 413:
            problem = BodyTooLarge(str(error.detail))
        else:
            problem = InvalidRequest(str(error.detail))
            problem.status = error.status_code  # type: ignore[misc]
        return problem_response(problem)

    app.add_middleware(CrashBarrier)


def log_unavailable(scope: Scope, problem: DatabaseUnavailable) -> None:
    log.warning(
        "database unavailable on %s %s: %s",
        scope["method"],
        scope["path"],
        problem.message,
        extra=ids(method=scope["method"], path=scope["path"]),
    )


class CrashBarrier:
    """Turns an unhandled error into the JSON 500 (or a 503 for an exhausted database) and
    stops it there. Starlette's own handler re-raises after answering, and uvicorn then resets
    the connection, so a keep-alive client lost its connection with every 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as error:
            unavailable = database_unavailable(error)
            if unavailable is not None:
                log_unavailable(scope, unavailable)
            else:
                log.exception(
                    "unhandled error on %s %s",
                    scope["method"],
                    scope["path"],
                    extra=ids(method=scope["method"], path=scope["path"]),
                )
            if started:
                return  # the answer is under way; the client sees it end short
            problem = unavailable or InternalError()
            response = problem_response(problem)
            await response(scope, receive, send)
