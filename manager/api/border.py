"""The control plane's border, before any route runs: who is calling, then what they sent.

FastAPI parses a JSON body before it resolves dependencies, so without this a malformed body
without a credential got a 400 instead of a 401. And Python's JSON parser takes what Postgres and
our rules do not: NaN, Infinity, 1e309 (read as infinity), integers of any size, NUL and lone
surrogates in strings. Every such value is a typed 400 here, naming the field, never echoing it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute
from inferencekey.validation import control_character_field, secret_field

from manager.admission import Admission
from manager.auth import Principal, authenticate
from manager.auth_limiter import FailedAuthLimiter
from manager.errors import MalformedJson, SecretInSpec, ValidationFailed

# Postgres' bigint: no number at the border is larger.
MAX_INTEGER = 2**63 - 1
# No spec or name nests this deep; the walks over a body recurse once per level.
MAX_DEPTH = 32
# Free text that may span lines; every other string is one line without control characters.
MULTILINE_FIELDS = ("description", "config.command")


P = ParamSpec("P")
R = TypeVar("R")


class _NotFinite(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def parse_json_strictly(body: bytes) -> Any:
    """The body as JSON, refusing what JSON itself does not allow (NaN, Infinity) and numbers
    that no column holds; raises an ApiProblem."""
    try:
        parsed = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except _NotFinite:
        raise ValidationFailed(
            "numbers must be finite: NaN, Infinity and values beyond 1.8e308 are not accepted"
        ) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedJson(f"request body is not valid JSON: {error}") from None
    except RecursionError:
        raise MalformedJson(f"request body is nested more than {MAX_DEPTH} levels") from None
    path = _oversized_integer(parsed, "", 0)
    if path is not None:
        raise ValidationFailed(
            f"{path or 'body'} is out of range (integers are at most {MAX_INTEGER})", field=path
        )
    return parsed


def check_values(parsed: Any) -> None:
    """No control characters or lone surrogates in any string or key; no credential anywhere."""
    if not isinstance(parsed, dict):
        return
    path = control_character_field(parsed, MULTILINE_FIELDS)
    if path is not None:
        raise ValidationFailed(
            f"{path} holds a control character (such as NUL) or an invalid Unicode character",
            field=path,
        )
    path = secret_field(parsed)
    if path is not None:
        raise SecretInSpec(
            f"{path} holds what looks like a credential; secrets must never go in specs or names",
            field=path,
        )


def _oversized_integer(value: Any, path: str, depth: int) -> str | None:
    """The path of an integer past MAX_INTEGER; refuses nesting past MAX_DEPTH on the way
    (every later walk over the body recurses as deep)."""
    if depth > MAX_DEPTH:
        raise MalformedJson(f"request body is nested more than {MAX_DEPTH} levels")
    if isinstance(value, int) and not isinstance(value, bool):
        return path if abs(value) > MAX_INTEGER else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _oversized_integer(item, f"{path}.{key}" if path else str(key), depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _oversized_integer(item, f"{path}[{index}]", depth + 1)
            if found is not None:
                return found
    return None


QUEUED_ATTRIBUTE = "__inferencekey_queued__"


def outside_the_queue(endpoint: Callable[P, R]) -> Callable[P, R]:
    """Marks a control-API route that waits on the outside world (a webhook's answer): it
    takes no turn of ``app.state.api_admission``, which is for work on this process."""
    setattr(endpoint, QUEUED_ATTRIBUTE, False)
    return endpoint


class BorderRoute(APIRoute):
    """Checks the credential, then the body, before FastAPI parses anything; then the request
    waits its turn among the control API's (``manager.admission``) and runs.

    The credential check here is only "is it a live credential at all" (401 otherwise); which
    kind and scope a route needs stays with the route's dependencies (``authenticated``).
    A streamed answer (SSE, logs) gives its turn back once the route returned it, before it
    streams.
    """

    # Off for the agent protocol: engine log tails may hold anything, and its wire models
    # check their own fields.
    check_values = True
    # Off for the agent protocol: it has its own admission, and a long-poll waits in its route.
    queued = True

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        queued = self.queued and getattr(self.endpoint, QUEUED_ATTRIBUTE, True)

        async def checked(request: Request, body: bytes) -> Response:
            if body:
                parsed = parse_json_strictly(body)
                if self.check_values:
                    check_values(parsed)
            return await handler(request)

        async def guarded(request: Request) -> Response:
            await authenticated(request)
            body = await request.body()  # a slow client holds no turn while it sends
            if not queued:
                return await checked(request, body)
            admission: Admission = request.app.state.api_admission
            async with admission.slot():
                return await checked(request, body)

        return guarded


class AgentBorderRoute(BorderRoute):
    check_values = False
    queued = False


class StreamedBodyRoute(APIRoute):
    """For a route that reads its own body as a stream (a custom-backend package upload): the
    credential is checked before any of the body is read, and the route checks what it reads."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            await authenticated(request)
            return await handler(request)

        return guarded


async def authenticated(request: Request) -> Principal:
    """The caller BorderRoute authenticated (routes outside it authenticate here)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal
    limiter: FailedAuthLimiter = request.app.state.auth_limiter

    async def lookup() -> Principal:
        pool = request.app.state.credential_lookups  # manager/db/direct.py
        return await authenticate(pool, request.headers.get("authorization"))

    address = request.client.host if request.client else None
    principal = await limiter.authenticate(address, lookup())
    request.state.principal = principal
    return principal
