"""Every route and every dependency of a route is a coroutine. FastAPI runs a plain function in
a thread of its pool: one such dependency on the create route cost each create about 1 ms of
the Manager's CPU (a thread woken, the GIL passed there and back), a fifth of all it did."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from tests.support import RunningManager, fastapi_app


def _calls(dependant: Dependant) -> Iterator[object]:
    if dependant.call is not None:
        yield dependant.call
    for inner in dependant.dependencies:
        yield from _calls(inner)


def _routes(routes: list[BaseRoute]) -> Iterator[APIRoute]:
    """The API routes, also those of included routers (FastAPI keeps those inside)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)


def test_no_route_or_dependency_runs_in_a_thread(manager: RunningManager) -> None:
    routes = list(_routes(fastapi_app(manager).routes))
    assert len(routes) > 50
    in_threads = sorted(
        {
            f"{route.path}: {getattr(call, '__qualname__', call)}"
            for route in routes
            for call in _calls(route.dependant)
            if not (inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call))
        }
    )
    assert in_threads == []
