"""The async engine and session factory of one Manager process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from manager.settings import asyncpg_url


def make_engine(
    database_url: str, *, pool_size: int = 10, max_overflow: int = 10, pool_timeout_s: float = 5.0
) -> AsyncEngine:
    return create_async_engine(
        asyncpg_url(database_url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout_s,
        # No ping before each checkout: with asyncpg it is three round trips (BEGIN, ";",
        # ROLLBACK) on every request, a fifth of a steady heartbeat's cost. A connection the
        # database dropped fails its first statement instead, is discarded by the pool, and the
        # request is answered 503 with Retry-After (manager/http_errors.py); the retry gets a
        # fresh connection.
        pool_pre_ping=False,
        # Errors and logs never carry statement parameters: they hold tokens' digests, specs
        # and whatever a client sent.
        hide_parameters=True,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@contextlib.asynccontextmanager
async def autocommit(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection in autocommit: each statement commits by itself, with no BEGIN
    and ROLLBACK round trips around it (for the one-statement paths of hot requests)."""
    async with engine.connect() as connection:
        yield await connection.execution_options(isolation_level="AUTOCOMMIT")
