"""Query pieces used in more than one place."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, TypeVarTuple

from sqlalchemy import Row, Select, String, any_, literal
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

_Columns = TypeVarTuple("_Columns")


def one_of(column: Any, values: Iterable[str]) -> ColumnElement[bool]:
    """``column = ANY($1)`` with the values as one array parameter. ``IN (...)`` sends one
    parameter per value, and Postgres refuses a query of more than 32,767 parameters."""
    return column == any_(literal(list(values), ARRAY(String)))


async def in_pieces(
    session: AsyncSession, query: Select[*_Columns], rows_at_once: int
) -> AsyncIterator[Sequence[Row[*_Columns]]]:
    """The rows of ``query`` through a cursor in ``session``'s transaction, ``rows_at_once`` at
    a time: each piece can be used and dropped before the next is fetched, and the event loop
    turns between them, so a read of the whole fleet never holds all its rows (and what is made
    of them) at once for the collector to walk."""
    connection = await session.connection()
    result = await connection.stream(query.execution_options(yield_per=rows_at_once))
    async for rows in result.partitions():
        yield rows
