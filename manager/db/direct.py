"""Statements sent on asyncpg directly, for the one-statement steps of the agent requests.

A fleet's commonest request, the delta heartbeat, is one statement (the lease renewed). Through
SQLAlchemy's async engine that statement cost about 0.6 ms of CPU under uvloop, on a 2-core
machine: the pool checks a connection out in a greenlet, makes it autocommit, builds an
execution context and a result around the statement, and checks it back in. The statement
itself, sent on an asyncpg pool of its own, cost about 0.12 ms. So the statements that run on
every agent request, and every request's credential lookup, go through a ``DirectPool`` (two
per serving process, manager/app.py):
- the lease renewal;
- a cached agent credential's standing;
- a credential's lookup (manager/auth.py ``authenticate``).

Everything else keeps the engine and its sessions.

Every statement on the pool commits by itself (autocommit). No transaction, LISTEN, SET or
advisory lock is taken on its connections, so a connection goes back to the pool without
asyncpg's reset query, which would be one more round trip per request. asyncpg still rolls
back a transaction left open, whatever the reset.

The connections use the same URL and connection arguments as the engine's. A connection the
database closed is replaced when it is next taken from the pool (asyncpg sees the close), and
one lost during its statement is discarded; a connection that cannot be had, or a statement
that fails because the database is out of reach, is answered 503 ``database_unavailable`` with
Retry-After, as with the engine.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from manager.errors import DatabaseUnavailable
from manager.settings import asyncpg_url

_DIALECT = asyncpg_dialect.dialect()
log = logging.getLogger("inferencekey.manager")

# asyncpg's answers that mean "no connection to be had now", not "this statement is wrong".
UNAVAILABLE = (
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    # A connection the server closed while it was idle (its FATAL error read as the next
    # statement began): "cannot switch to state ...; another operation is in progress".
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
)
# SQLSTATE classes of the same: connection exception, insufficient resources, operator
# intervention (a shutdown, a terminated backend).
UNAVAILABLE_CLASSES = ("08", "53", "57")
# A database closed to connections (ALLOW_CONNECTIONS false) says so when one is opened.
NOT_ACCEPTING = "55000"
# An outage fails every request: its warning is logged once in this many seconds.
WARN_EVERY_S = 10.0
# Postgres aborted the transaction because of a concurrent one (deadlock_detected,
# serialization_failure): the request may simply be sent again.
CONFLICTS = ("40P01", "40001")


def unavailable(cause: BaseException) -> DatabaseUnavailable | None:
    """A 503 for an error of asyncpg's that says the database is out of reach or out of
    connections, or that it aborted a statement in a conflict with a concurrent one; else
    None (the error is a fault, answered 500)."""
    sqlstate = getattr(cause, "sqlstate", None) or ""
    if isinstance(cause, UNAVAILABLE) or sqlstate[:2] in UNAVAILABLE_CLASSES:
        return DatabaseUnavailable("the database is unavailable or out of connections; retry")
    if sqlstate in CONFLICTS:
        return DatabaseUnavailable(
            "the database aborted this request's transaction in a conflict with a concurrent "
            "one; retry",
            retry_after_s=1,
        )
    return None


class Statement:
    """A statement with named parameters (``text()`` or Core), compiled once into asyncpg's
    numbered ones (the same SQL the engine would send)."""

    def __init__(self, clause: ClauseElement) -> None:
        compiled = clause.compile(dialect=_DIALECT)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup or ())

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] for name in self.names]


async def _left_as_it_was(connection: asyncpg.Connection) -> None:
    """The pool's reset: nothing (see the module's docstring)."""


class DirectPool:
    """At most ``size`` connections, opened as they are needed and closed after
    ``idle_s`` unused; a statement that finds none free within ``acquire_timeout_s`` is
    answered 503, as one that finds the engine's pool exhausted.

    ``on_connect`` runs on each new connection (the query-plan test hears the statements
    sent with it)."""

    def __init__(
        self,
        database_url: str,
        *,
        size: int,
        acquire_timeout_s: float,
        idle_s: float = 300.0,
        on_connect: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    ) -> None:
        _, options = _DIALECT.create_connect_args(make_url(asyncpg_url(database_url)))
        # The dialect's own options, as its connect() reads them: the statement cache's size
        # (0 behind a pooler that cannot hold prepared statements) is asyncpg's here.
        cache_size = options.pop("prepared_statement_cache_size", None)
        if cache_size is not None:
            options["statement_cache_size"] = int(cache_size)
        options.pop("prepared_statement_name_func", None)
        self._options = options
        self._size = size
        self._idle_s = idle_s
        self._on_connect = on_connect
        self.acquire_timeout_s = acquire_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._warned_at = -WARN_EVERY_S

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            min_size=0,
            max_size=self._size,
            max_inactive_connection_lifetime=self._idle_s,
            reset=_left_as_it_was,
            init=self._on_connect,
            **self._options,
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def fetchrow(
        self, statement: Statement, values: Mapping[str, Any]
    ) -> asyncpg.Record | None:
        """The statement's first row (None if it returned none), committed."""
        pool = self._pool
        if pool is None:  # not started, or closed: the process is stopping
            raise DatabaseUnavailable("this Manager process is stopping; retry")
        try:
            connection = await pool.acquire(timeout=self.acquire_timeout_s)
        except (asyncpg.PostgresError, *UNAVAILABLE) as error:
            # None free in time, or a new one refused: the server down, full or shutting
            # down, or the database closed to connections. Refused for another reason (a
            # wrong password, no such database) it is a fault, answered 500 and logged.
            problem = unavailable(error)
            if problem is None and getattr(error, "sqlstate", None) == NOT_ACCEPTING:
                problem = DatabaseUnavailable(
                    "the database is not accepting connections now; retry"
                )
            if problem is None:
                raise
            self._warn(error)
            raise problem from error
        try:
            return await connection.fetchrow(statement.sql, *statement.arguments(values))
        except BaseException as error:
            problem = unavailable(error) if isinstance(error, Exception) else None
            if _broken(error, connection):
                # Lost, broken or left half way (the server's unasked-for error on an idle
                # connection, a cancellation): never to be used again. (One lost is already
                # back in the pool, to be replaced.)
                with contextlib.suppress(asyncpg.InterfaceError):
                    connection.terminate()
            if problem is None:
                raise
            self._warn(error)
            raise problem from error
        finally:
            await pool.release(connection)

    def _warn(self, error: BaseException) -> None:
        """Say why a request was answered 503, once in ``WARN_EVERY_S`` (an outage fails every
        request)."""
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "database unavailable to a direct pool (answered 503): %s: %s",
                type(error).__name__,
                error,
            )


def _broken(error: BaseException, connection: asyncpg.Connection) -> bool:
    """Whether the connection may not serve again after this error of its statement. A clean
    error of the server's (a deadlock, a serialization failure, a constraint) leaves it fine."""
    if not isinstance(error, asyncpg.PostgresError):
        return True
    sqlstate = error.sqlstate or ""
    if sqlstate[:2] == "08" or sqlstate.startswith("57P"):
        return True
    with contextlib.suppress(asyncpg.InterfaceError):
        return connection.is_closed()
    return True
