"""ik_live_ key checks without waiting on Postgres: a cache of credentials by id.

An entry is loaded once from the database and kept; a revocation reaches every Manager process
through Postgres NOTIFY and evicts it at once. Unknown ids are remembered briefly, so a burst of
bad tokens does not turn into a burst of queries.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from manager.auth import Principal, bearer_token, parse_token, token_digest
from manager.db.models import Token
from manager.errors import Unauthenticated
from manager.notify import ANY

UNKNOWN_TTL_S = 5.0
KNOWN_TTL_S = 300.0
# Lookups in flight at once: a flood of unknown keys queues here instead of taking the pool.
MAX_CONCURRENT_LOOKUPS = 4


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    principal: Principal | None  # None: revoked


class KeyCache:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._entries: dict[str, tuple[_Entry | None, float]] = {}
        self._lookups = asyncio.Semaphore(MAX_CONCURRENT_LOOKUPS)
        self._loading: dict[str, asyncio.Future[_Entry | None]] = {}

    def evict(self, token_id: str) -> None:
        """Called on a revocation notice; ``ANY`` (after a reconnect) forgets everything."""
        if token_id == ANY:
            self._entries.clear()
        else:
            self._entries.pop(token_id, None)

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if token is None:
            raise Unauthenticated("missing credentials: send Authorization: Bearer <ik_live_ key>")
        parsed = parse_token(token)
        if parsed is None:
            raise Unauthenticated("malformed credential")
        kind, token_id = parsed
        now = time.monotonic()
        cached = self._entries.get(token_id)
        if cached is None or cached[1] < now:
            loaded = await self._load_once(token_id)
            cached = (loaded, time.monotonic() + (KNOWN_TTL_S if loaded else UNKNOWN_TTL_S))
            self._entries[token_id] = cached
        entry = cached[0]
        if entry is None or not hmac.compare_digest(entry.digest, token_digest(token)):
            raise Unauthenticated()
        if entry.principal is None or entry.principal.kind is not kind:
            raise Unauthenticated()
        return entry.principal

    async def _load_once(self, token_id: str) -> _Entry | None:
        """One query per id however many requests wait for it, a few queries at a time."""
        loading = self._loading.get(token_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[_Entry | None] = asyncio.get_running_loop().create_future()
        self._loading[token_id] = future
        try:
            async with self._lookups:
                entry = await self._load(token_id)
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(error)
                future.exception()  # marked retrieved: there may be no one waiting
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            del self._loading[token_id]

    async def _load(self, token_id: str) -> _Entry | None:
        async with self._sessions() as session:
            row = await session.get(Token, token_id)
        if row is None:
            return None
        principal = None if row.revoked_at is not None else Principal.from_row(row)
        return _Entry(digest=row.digest, principal=principal)
