"""The async engine and session factory of one Manager process."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from manager.settings import asyncpg_url


def make_engine(database_url: str) -> AsyncEngine:
    return create_async_engine(
        asyncpg_url(database_url), pool_size=10, max_overflow=20, pool_pre_ping=True
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
