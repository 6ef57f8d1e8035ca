"""Query pieces used in more than one place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import String, any_, literal
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement


def one_of(column: Any, values: Iterable[str]) -> ColumnElement[bool]:
    """``column = ANY($1)`` with the values as one array parameter. ``IN (...)`` sends one
    parameter per value, and Postgres refuses a query of more than 32,767 parameters."""
    return column == any_(literal(list(values), ARRAY(String)))
