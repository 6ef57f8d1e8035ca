"""HTTP plumbing shared by the sync and async clients.

Client operations are written once, as generators that yield a ``Call`` and receive the
decoded JSON answer (or have the typed error thrown into them). ``run_steps`` drives one
with an ``httpx.Client``, ``run_steps_async`` with an ``httpx.AsyncClient``. An operation that
polls also yields ``Pause``. Streaming operations use the same drivers with their own step
types (see ``_sse``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from .errors import ApiError, ConfigurationError, InferenceKeyError, error_from_response

T = TypeVar("T")
S = TypeVar("S")

# The typed code of an ApiError raised because the Manager could not be reached.
NETWORK_ERROR_CODE = "network_error"


@dataclass(frozen=True)
class Call:
    """One request an operation wants made: method, path under the base URL, JSON body."""

    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Pause:
    """Sleep for ``seconds`` (between polls, or before reopening a stream)."""

    seconds: float


Steps = Generator[Call, Any, T]


def normalize_base_url(base_url: str) -> str:
    """``base_url`` without trailing slashes; it must be an http(s) URL."""
    trimmed = (base_url or "").strip().rstrip("/")
    if not trimmed.startswith(("http://", "https://")):
        raise ConfigurationError(f"base_url must start with http:// or https://, got {base_url!r}")
    return trimmed


def join_url(base_url: str, path: str) -> str:
    """Join a base URL and a path with exactly one slash between them.

    >>> join_url("http://manager:8080/", "/api/projects/acme/workloads")
    'http://manager:8080/api/projects/acme/workloads'
    """
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


def auth_headers(token: str) -> dict[str, str]:
    """The headers every call carries: the bearer credential and the JSON accept type."""
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


def response_error(response: httpx.Response) -> InferenceKeyError:
    """The typed error for a non-2xx answer whose body has been read."""
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    return error_from_response(response.status_code, body, response.text)


def decode_response(response: httpx.Response) -> Any:
    """The decoded JSON of a 2xx answer (an empty body is None); the typed error otherwise."""
    if not response.is_success:
        raise response_error(response)
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise ApiError(f"json error: {exc}", status=response.status_code) from exc


def network_error(exc: httpx.TransportError, url: str) -> ApiError:
    """The ``ApiError`` for a request to ``url`` that failed below HTTP."""
    detail = str(exc) or type(exc).__name__
    return ApiError(f"network error: {url}: {detail}", code=NETWORK_ERROR_CODE)


def send(
    client: httpx.Client, base_url: str, call: Call, headers: dict[str, str] | None = None
) -> Any:
    """Make ``call`` with a sync client; return the decoded answer or raise the typed error.

    ``headers`` are added to the client's own (the data plane's per-endpoint key).
    """
    url = join_url(base_url, call.path)
    try:
        response = client.request(call.method, url, json=call.body, headers=headers)
    except httpx.TransportError as exc:
        raise network_error(exc, url) from exc
    return decode_response(response)


async def send_async(
    client: httpx.AsyncClient, base_url: str, call: Call, headers: dict[str, str] | None = None
) -> Any:
    """Make ``call`` with an async client; return the decoded answer or raise the typed error."""
    url = join_url(base_url, call.path)
    try:
        response = await client.request(call.method, url, json=call.body, headers=headers)
    except httpx.TransportError as exc:
        raise network_error(exc, url) from exc
    return decode_response(response)


def run_steps(steps: Generator[S, Any, T], make_call: Callable[[S], Any]) -> T:
    """Drive an operation to its result, making each call it yields synchronously."""
    try:
        call = next(steps)
        while True:
            try:
                answer = make_call(call)
            except InferenceKeyError as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(answer)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        # Runs the operation's own cleanup now, also when the caller's side raised.
        steps.close()


async def run_steps_async(
    steps: Generator[S, Any, T], make_call: Callable[[S], Awaitable[Any]]
) -> T:
    """Drive an operation to its result, awaiting each call it yields."""
    try:
        call = next(steps)
        while True:
            try:
                answer = await make_call(call)
            except InferenceKeyError as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(answer)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        # Runs the operation's own cleanup now, also when the caller's side raised.
        steps.close()
