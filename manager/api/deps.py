"""Dependencies shared by routes: a database session per request, and who is calling.

Credential, scope and project checks are dependencies; BorderRoute (border.py) authenticates
before the body is even read, so a bad credential gets its 401 whatever it sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from manager.api.border import authenticated
from manager.auth import (
    Principal,
    Scope,
    TokenKind,
    require_kind,
    require_project,
    require_scope,
)
from manager.db.models import Project
from manager.validation import WorkloadLimits


async def db_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


Session = Annotated[AsyncSession, Depends(db_session)]


async def read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """For a request that only reads, a few statements: each commits by itself, with no BEGIN
    before them and no ROLLBACK after (two round trips fewer: a GET of a workload is two in all,
    the credential and the workload, and at each the request waits for a turn of a busy event
    loop). Not for a cursor
    (``queries.in_pieces``): Postgres keeps one only within a transaction."""
    async with request.app.state.read_sessions() as session:
        yield session


ReadSession = Annotated[AsyncSession, Depends(read_session)]


def caller_of_kind(kind: TokenKind, where: str) -> Callable[..., Awaitable[Principal]]:
    async def dependency(request: Request) -> Principal:
        principal = await authenticated(request)
        require_kind(principal, kind, where)
        return principal

    return dependency


ControlCaller = Annotated[
    Principal, Depends(caller_of_kind(TokenKind.SDK, "the control plane (/api)"))
]
AdminCaller = Annotated[
    Principal, Depends(caller_of_kind(TokenKind.ADMIN, "the admin API (/api/admin)"))
]


async def _reader(caller: ControlCaller) -> Principal:
    require_scope(caller, Scope.WORKLOAD_READ)
    return caller


async def _writer(caller: ControlCaller) -> Principal:
    require_scope(caller, Scope.WORKLOAD_WRITE)
    return caller


ControlReader = Annotated[Principal, Depends(_reader)]
ControlWriter = Annotated[Principal, Depends(_writer)]


async def _path_project(project: str, caller: ControlCaller) -> Project:
    """The caller's own project, named in the path by slug or id; 403 for any other. Read with
    the credential (``Principal.project``): no statement of its own."""
    own = caller.project
    named = own if own is not None and project in (own.slug, own.id) else None
    require_project(caller, named.id if named else None, project)
    assert named is not None
    return named


async def _own_project(caller: ControlCaller) -> Project:
    """The caller's own project, read with the credential; 403 for a credential of none."""
    own = caller.project
    require_project(caller, own.id if own else None, caller.project_id or "?")
    assert own is not None
    return own


PathProject = Annotated[Project, Depends(_path_project)]
OwnProject = Annotated[Project, Depends(_own_project)]


async def _workload_limits(request: Request) -> WorkloadLimits:
    settings = request.app.state.settings
    return WorkloadLimits(max_replicas=settings.max_replicas_per_workload)


Limits = Annotated[WorkloadLimits, Depends(_workload_limits)]
