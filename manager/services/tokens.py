"""Minting, listing and revoking credentials; bootstrapping the operator's admin credential."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import asyncpg
from inferencekey.validation import slugify
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from manager import notify, wire
from manager.auth import (
    ALL_WORKLOADS,
    DEFAULT_SDK_SCOPES,
    READ_ONLY_SDK_SCOPES,
    MintedToken,
    TokenKind,
    display_token,
    mint_token,
    parse_token,
    token_digest,
)
from manager.db import direct
from manager.db.models import Project, Token
from manager.errors import InvalidRequest, TokenNotFound, ValidationFailed

from .timefmt import rfc3339, utcnow

log = logging.getLogger("inferencekey.manager")
ADMIN_TOKEN_FILE = "admin-token"
# Serialises admin bootstrap across Manager processes sharing one database.
_BOOTSTRAP_LOCK_KEY = 0x1C_0000_0002


async def _store(
    session: AsyncSession,
    minted: MintedToken,
    *,
    project: Project | None,
    name: str | None,
    scopes: tuple[str, ...] = (),
    workload_grants: tuple[str, ...] = (),
) -> Token:
    row = Token(
        id=minted.id,
        kind=minted.kind.value,
        digest=minted.digest,
        name=name,
        project_id=project.id if project else None,
        scopes=list(scopes),
        workload_grants=list(workload_grants),
    )
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return row


async def create_sdk_token(
    session: AsyncSession, project: Project, *, read_only: bool, name: str | None
) -> tuple[Token, str]:
    scopes = READ_ONLY_SDK_SCOPES if read_only else DEFAULT_SDK_SCOPES
    minted = mint_token(TokenKind.SDK)
    row = await _store(session, minted, project=project, name=name, scopes=scopes)
    log.info("minted %s for project %s", display_token(row.kind, row.id), project.slug)
    return row, minted.token


async def create_live_key(
    session: AsyncSession,
    project: Project,
    *,
    workloads: list[str] | None,
    all_workloads: bool,
    name: str | None,
) -> tuple[Token, str]:
    if all_workloads == bool(workloads):
        raise InvalidRequest(
            "give exactly one of 'workloads' (a list of workload slugs) or 'all': true",
            field="workloads",
        )
    grants: tuple[str, ...] = (ALL_WORKLOADS,)
    if workloads:
        canonical = tuple(dict.fromkeys(slugify(slug) for slug in workloads))
        if not all(canonical):
            raise ValidationFailed(
                "workload slugs must contain a letter or digit", field="workloads"
            )
        grants = canonical
    minted = mint_token(TokenKind.LIVE)
    row = await _store(session, minted, project=project, name=name, workload_grants=grants)
    log.info("minted %s for %s", display_token(row.kind, row.id), ", ".join(grants))
    return row, minted.token


async def list_tokens(
    session: AsyncSession, *, project_id: str | None, kind: str | None
) -> list[Token]:
    query = select(Token).order_by(Token.created_at)
    if project_id is not None:
        query = query.where(Token.project_id == project_id)
    if kind is not None:
        query = query.where(Token.kind == kind)
    return list((await session.execute(query)).scalars())


def token_id_from_ref(ref: str) -> str:
    """The 8-hex id from an id, a display form (``ik_sdk_<id>…``) or a whole token."""
    parsed = parse_token(ref)
    if parsed:
        return parsed[1]
    parts = ref.rstrip("…").split("_")
    candidate = parts[2] if len(parts) >= 3 and parts[0] == "ik" else ref
    return candidate.lower()


async def revoke_token(session: AsyncSession, ref: str) -> Token:
    token_id = token_id_from_ref(ref)
    row = await session.get(Token, token_id, with_for_update=True)
    if row is None:
        raise TokenNotFound(f'no credential with id "{token_id}"')
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await notify.notify(session, notify.TOKENS, row.id)
        await session.flush()
        log.info("revoked %s", display_token(row.kind, row.id))
    return row


UNREVOKED = direct.Statement(
    text("SELECT revoked_at IS NULL AS stands FROM tokens WHERE id = :token_id")
)


async def unrevoked(pool: direct.DirectPool, token_id: str) -> bool:
    """Whether the credential still stands: where a credential is cached, the routes that must
    refuse a revoked one on its very next request ask this (its NOTIFY may be a moment away)."""
    row = await pool.fetchrow(UNREVOKED, {"token_id": token_id})
    return row is not None and bool(row["stands"])


def token_view(row: Token, project_slug: str | None, secret: str | None = None) -> wire.Token:
    """A credential as the admin API shows it; ``secret`` only in the answer that minted it.
    The keys of another kind (and the secret) are left unset, so the answer leaves them out."""
    view: dict[str, Any] = {
        "id": row.id,
        "kind": row.kind,
        "display": display_token(row.kind, row.id),
        "name": row.name,
        "project_id": row.project_id,
        "project_slug": project_slug,
        "created_at": rfc3339(row.created_at),
        "revoked_at": rfc3339(row.revoked_at),
    }
    if row.kind == TokenKind.SDK.value:
        view["scopes"] = list(row.scopes)
    if row.kind == TokenKind.LIVE.value:
        view["grants"] = [f"{project_slug}/{grant}" for grant in row.workload_grants]
    if secret is not None:
        view["token"] = secret
    return wire.Token.model_validate(view)


def configured_admin_token_id(configured: str) -> str:
    """The id of a configured admin token; ValueError saying how to make one if malformed."""
    parsed = parse_token(configured)
    if parsed is None or parsed[0] is not TokenKind.ADMIN:
        raise ValueError(
            f"INFERENCEKEY_ADMIN_TOKEN must look like ik_admin_<8 hex>_<64 hex>; {NEW_ADMIN_TOKEN}"
        )
    return parsed[1]


NEW_ADMIN_TOKEN = (
    'generate one with: python -c "import secrets; '
    "print(f'ik_admin_{secrets.token_hex(4)}_{secrets.token_hex(32)}')\""
)


ADMIN_TOKEN_TAKEN = "INFERENCEKEY_ADMIN_TOKEN's id is taken by another credential"


async def admin_token_taken(database_url: str, configured: str) -> bool:
    """Whether another credential of this database holds the configured admin token's id, so
    that the Manager cannot start with it (`bootstrap_admin` refuses it): told before the
    server starts, in a line, not in a server's startup traceback."""
    token_id = configured_admin_token_id(configured)
    connection = await asyncpg.connect(notify.plain_postgres_url(database_url), timeout=30)
    try:
        if not await connection.fetchval("SELECT to_regclass('tokens') IS NOT NULL"):
            return False  # a new database: the Manager makes the table, and the token in it
        row = await connection.fetchrow("SELECT kind, digest FROM tokens WHERE id = $1", token_id)
    finally:
        await connection.close()
    return row is not None and (
        bytes(row["digest"]) != token_digest(configured) or row["kind"] != TokenKind.ADMIN.value
    )


async def bootstrap_admin(
    session: AsyncSession, configured: str | None, data_dir: Path
) -> str | None:
    """Make sure the operator can log in; return a newly generated admin token, if any.

    A configured ``INFERENCEKEY_ADMIN_TOKEN`` is registered (it must be well-formed). Otherwise,
    when no admin credential exists, one is minted and written to ``<data_dir>/admin-token``.
    """
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _BOOTSTRAP_LOCK_KEY})
    if configured:
        token_id = configured_admin_token_id(configured)
        existing = await session.get(Token, token_id)
        if existing is None:
            session.add(
                Token(id=token_id, kind=TokenKind.ADMIN.value, digest=token_digest(configured))
            )
        elif existing.digest != token_digest(configured) or existing.kind != TokenKind.ADMIN.value:
            raise ValueError(ADMIN_TOKEN_TAKEN)
        return None
    active = await session.execute(
        select(Token.id).where(Token.kind == TokenKind.ADMIN.value, Token.revoked_at.is_(None))
    )
    if active.first() is not None:
        return None
    minted = mint_token(TokenKind.ADMIN)
    await _store(session, minted, project=None, name="bootstrap")
    _write_secret_file(data_dir / ADMIN_TOKEN_FILE, minted.token)
    return minted.token


def _write_secret_file(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)
