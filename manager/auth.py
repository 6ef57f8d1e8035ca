"""Credentials: minting, hashing, authenticating, and the plane and scope rules.

A token is ``ik_<kind>_<8 hex id>_<64 hex secret>`` (256 random bits). Only the SHA-256 digest
of the whole token is stored; lookups go by the public id and compare digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from inferencekey.validation import redact_token
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from manager.db.direct import DirectPool, Statement
from manager.db.models import Project, Token
from manager.errors import (
    ProjectScopeMismatch,
    ScopeInsufficient,
    Unauthenticated,
    WrongCredentialType,
)


class TokenKind(StrEnum):
    SDK = "sdk"
    LIVE = "live"
    ADMIN = "admin"
    AGENT = "agent"


class Scope(StrEnum):
    WORKLOAD_READ = "workload:read"
    WORKLOAD_WRITE = "workload:write"
    ASSIGNMENT_WRITE = "assignment:write"


DEFAULT_SDK_SCOPES: tuple[str, ...] = tuple(scope.value for scope in Scope)
READ_ONLY_SDK_SCOPES: tuple[str, ...] = (Scope.WORKLOAD_READ.value,)
ALL_WORKLOADS = "*"

TOKEN_PATTERN = re.compile(r"^ik_(sdk|live|admin|agent)_([0-9a-f]{8})_([0-9a-f]{64})$")
_PLANE_NAMES = {
    TokenKind.SDK: "an ik_sdk_ control-plane token",
    TokenKind.LIVE: "an ik_live_ data-plane key",
    TokenKind.ADMIN: "an ik_admin_ operator credential",
    TokenKind.AGENT: "an ik_agent_ worker credential",
}


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class MintedToken:
    id: str
    kind: TokenKind
    token: str

    @property
    def digest(self) -> bytes:
        return token_digest(self.token)


def mint_token(kind: TokenKind) -> MintedToken:
    token_id = secrets.token_hex(4)
    token = f"ik_{kind.value}_{token_id}_{secrets.token_hex(32)}"
    return MintedToken(id=token_id, kind=kind, token=token)


def parse_token(token: str) -> tuple[TokenKind, str] | None:
    """(kind, id) of a well-formed token, else None."""
    match = TOKEN_PATTERN.match(token)
    if not match:
        return None
    return TokenKind(match.group(1)), match.group(2)


def display_token(kind: str, token_id: str) -> str:
    """The only form of a credential that logs, errors and listings show."""
    return f"ik_{kind}_{token_id}…"


class CredentialColumns(Protocol):
    """What a principal is made of: a Token row, or the columns authentication reads."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def project_id(self) -> str | None: ...
    @property
    def scopes(self) -> list[str]: ...
    @property
    def workload_grants(self) -> list[str]: ...


@dataclass(frozen=True)
class Principal:
    """Who is calling: an authenticated, unrevoked credential."""

    token_id: str
    kind: TokenKind
    project_id: str | None
    scopes: frozenset[str]
    workload_grants: frozenset[str]
    # An SDK credential's project as the lookup read it with the credential, in the same
    # statement: a control-API request needs no read of its own for it. None for a
    # credential of no project or of another kind, and for the gateway's keys
    # (manager/gateway/keys.py).
    project: Project | None = field(default=None, compare=False, repr=False)

    @property
    def display(self) -> str:
        return display_token(self.kind.value, self.token_id)

    @classmethod
    def from_row(cls, row: CredentialColumns, project: Project | None = None) -> Principal:
        return cls(
            token_id=row.id,
            kind=TokenKind(row.kind),
            project_id=row.project_id,
            scopes=frozenset(row.scopes or ()),
            workload_grants=frozenset(row.workload_grants or ()),
            project=project,
        )


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


# What authentication reads of a credential, and of its project: plain columns, no entity in
# a session. Projects are never renamed or deleted, so what a request reads here holds for it.
_CREDENTIAL = (
    select(
        Token.id,
        Token.kind,
        Token.digest,
        Token.project_id,
        Token.scopes,
        Token.workload_grants,
        Project.tenant_id.label("project_tenant_id"),
        Project.slug.label("project_slug"),
        Project.name.label("project_name"),
        Project.created_at.label("project_created_at"),
    )
    .outerjoin(Project, Project.id == Token.project_id)
    .where(Token.id == bindparam("token_id"), Token.revoked_at.is_(None))
)
_CREDENTIAL_DIRECT = Statement(_CREDENTIAL)


async def authenticate(
    connection: AsyncConnection | AsyncSession | DirectPool, authorization: str | None
) -> Principal:
    """The caller behind an ``Authorization`` header; 401 when it cannot be authenticated
    (unknown, malformed, of a digest that does not match, or revoked). One statement: on a
    connection in autocommit, or on a direct pool (manager/db/direct.py, the serving path),
    it is the lookup's only round trip."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthenticated("missing credentials: send Authorization: Bearer <token>")
    parsed = parse_token(token)
    if parsed is None:
        raise Unauthenticated(f"malformed credential {redact_token(token)}")
    kind, token_id = parsed
    values = {"token_id": token_id}
    row: _StoredCredential | None
    if isinstance(connection, DirectPool):
        record = await connection.fetchrow(_CREDENTIAL_DIRECT, values)
        row = None if record is None else _Credential(**record)
    else:
        row = (await connection.execute(_CREDENTIAL, values)).one_or_none()
    # Compare even when the id is unknown or revoked, so timing does not tell ids apart.
    stored = row.digest if row is not None and row.kind == kind.value else b"\0" * 32
    if not hmac.compare_digest(stored, token_digest(token)) or row is None:
        raise Unauthenticated()
    return Principal.from_row(row, _project_of(row, kind))


def _project_of(row: _StoredCredential, kind: TokenKind) -> Project | None:
    """An SDK credential's project (the control API's routes read it), made from the columns
    read with it: an entity of no session, nothing the routes could write back. None for the
    other kinds (an agent's credential is kept in a cache, and needs none)."""
    if kind is not TokenKind.SDK or row.project_id is None:
        return None
    return Project(
        id=row.project_id,
        tenant_id=row.project_tenant_id,
        slug=row.project_slug,
        name=row.project_name,
        created_at=row.project_created_at,
    )


class _StoredCredential(CredentialColumns, Protocol):
    @property
    def digest(self) -> bytes: ...
    @property
    def project_tenant_id(self) -> str | None: ...
    @property
    def project_slug(self) -> str | None: ...
    @property
    def project_name(self) -> str | None: ...
    @property
    def project_created_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class _Credential:
    """The columns of ``_CREDENTIAL`` as the direct pool returns them."""

    id: str
    kind: str
    digest: bytes
    project_id: str | None
    scopes: list[str]
    workload_grants: list[str]
    project_tenant_id: str | None
    project_slug: str | None
    project_name: str | None
    project_created_at: datetime | None


def require_kind(principal: Principal, kind: TokenKind, where: str) -> None:
    if principal.kind is not kind:
        raise WrongCredentialType(
            f"{where} requires {_PLANE_NAMES[kind]}; got {_PLANE_NAMES[principal.kind]} "
            f"({principal.display})"
        )


def require_scope(principal: Principal, scope: Scope) -> None:
    if scope.value not in principal.scopes:
        raise ScopeInsufficient(
            f"this credential cannot perform the requested operation (needs {scope.value}; "
            f"{principal.display} has {', '.join(sorted(principal.scopes)) or 'no scopes'})"
        )


def require_project(principal: Principal, project_id: str | None, shown_as: str) -> None:
    if project_id is None or principal.project_id != project_id:
        raise ProjectScopeMismatch(f'token is not scoped to project "{shown_as}"')
