"""A transaction Postgres aborted in a conflict with a concurrent one (a deadlock, a
serialization failure) is answered 503 with Retry-After, which clients and agents retry; never a
500."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError

from manager.http_errors import database_unavailable


def wrapped(cause: Exception) -> DBAPIError:
    """As SQLAlchemy's asyncpg dialect raises it: its own error, caused by asyncpg's."""
    adapted = Exception(str(cause))
    adapted.__cause__ = cause
    return DBAPIError("UPDATE workers ...", {}, adapted)


@pytest.mark.parametrize(
    "cause", [asyncpg.DeadlockDetectedError("deadlock detected"), asyncpg.SerializationError("x")]
)
def test_a_conflict_with_a_concurrent_transaction_is_a_503_to_retry(cause: Exception) -> None:
    problem = database_unavailable(wrapped(cause))
    assert problem is not None
    assert (problem.status, problem.code) == (503, "database_unavailable")
    assert problem.headers["Retry-After"] == "1"
    assert "concurrent" in str(problem)


def test_a_statement_the_database_refused_is_not_retryable() -> None:
    assert database_unavailable(wrapped(asyncpg.UniqueViolationError("duplicate key"))) is None
