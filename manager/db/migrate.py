"""Apply the Alembic migrations shipped with the package, and refuse a schema from the future."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations
from manager.notify import plain_postgres_url

PACKAGE = "inferencekey-platform"
T = TypeVar("T")


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer Manager; the message says which release to run."""


class DatabaseUnreachable(RuntimeError):
    """The database could not be connected to (refused, unknown host or database, refused
    credentials); its cause says how."""


def manager_version() -> str:
    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["database_url"] = database_url
    return config


def start_up_check(check: Coroutine[Any, Any, T]) -> T:
    """Run one of the Manager's start-up reads of the database (blocking); a database that
    cannot be reached is DatabaseUnreachable, the one-line error of every such check."""
    try:
        return asyncio.run(check)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise DatabaseUnreachable(str(error) or type(error).__name__) from error


def refuse_newer_schema(database_url: str) -> None:
    """Raise SchemaTooNew when a newer Manager migrated this database (blocking)."""
    script = ScriptDirectory.from_config(alembic_config(database_url))
    current, writer = start_up_check(_read_schema_state(database_url))
    if current is None or current in {rev.revision for rev in script.walk_revisions()}:
        return
    release = f"InferenceKey {writer}" if writer else "a newer InferenceKey release"
    wanted = f"'{PACKAGE}>={writer}'" if writer else PACKAGE
    raise SchemaTooNew(
        f"The database's schema is at revision {current}, written by {release}; this Manager "
        f"({manager_version()}) knows revisions up to {script.get_current_head()}. Run "
        f"{release} or newer against this database (pip install --upgrade {wanted}), or point "
        "this Manager at another database. Nothing was changed."
    )


def too_few_connections(database_url: str, needed: int) -> str | None:
    """A warning when the database lets this Manager's role open fewer connections than
    ``needed`` (what its settings may open, Settings.database_connections), else None; None too
    where the limits cannot be read (a pooler, a Postgres-like server). Blocking."""
    limits = start_up_check(_connection_limits(database_url))
    if limits is None:
        return None
    allowed, why = limits
    if needed <= allowed:
        return None
    return (
        f"this Manager may open up to {needed} connections to the database, which allows it "
        f"{allowed} ({why}): under load, requests would wait for a connection and be answered "
        "503. Raise that limit, or lower INFERENCEKEY_PROCESSES, INFERENCEKEY_DB_POOL_SIZE, "
        "INFERENCEKEY_DB_MAX_OVERFLOW, INFERENCEKEY_AGENT_MAX_CONCURRENT_DB or "
        "INFERENCEKEY_DB_CREDENTIAL_POOL_SIZE (other Managers on this database need theirs too)."
    )


_LIMITS = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true)::int, 0),
       r.rolsuper, r.rolconnlimit, d.datconnlimit
FROM pg_roles r, pg_database d
WHERE r.rolname = current_user AND d.datname = current_database()
"""


async def _connection_limits(database_url: str) -> tuple[int, str] | None:
    """(connections this role may open, which limit says so), the smallest of the server's
    (less its reserved slots, for a role that is not a superuser), the role's and the
    database's own."""
    connection = await asyncpg.connect(plain_postgres_url(database_url))
    try:
        try:
            row = await connection.fetchrow(_LIMITS)
        except asyncpg.PostgresError:
            return None
    finally:
        await connection.close()
    if row is None:
        return None
    most, superuser_reserved, reserved, superuser, role_limit, database_limit = row
    if superuser:  # the reserved slots are its own, and no role or database limit holds it
        return most, f"max_connections {most}"
    held_back = superuser_reserved + reserved
    limits = [(most - held_back, f"max_connections {most}, less {held_back} reserved")]
    if role_limit >= 0:
        limits.append((role_limit, f"the role's CONNECTION LIMIT {role_limit}"))
    if database_limit >= 0:
        limits.append((database_limit, f"the database's CONNECTION LIMIT {database_limit}"))
    return min(limits)


def upgrade_to_head(database_url: str) -> None:
    """Bring the schema to the newest revision (blocking; runs its own event loop), after
    checking it is not newer than this Manager knows; then record who migrated it."""
    refuse_newer_schema(database_url)
    config = alembic_config(database_url)
    command.upgrade(config, "head")
    head = ScriptDirectory.from_config(config).get_current_head()
    asyncio.run(_record_writer(database_url, str(head)))


async def upgrade_to_head_async(database_url: str) -> None:
    # Alembic's env runs asyncio.run(); give it a thread with no loop of its own.
    await asyncio.to_thread(upgrade_to_head, database_url)


async def _read_schema_state(database_url: str) -> tuple[str | None, str | None]:
    """The database's Alembic revision and the release that last migrated it (None: unknown)."""
    connection = await asyncpg.connect(plain_postgres_url(database_url))
    try:
        current = None
        if await connection.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
            current = await connection.fetchval("SELECT version_num FROM alembic_version")
        writer = None
        if await connection.fetchval("SELECT to_regclass('schema_writer') IS NOT NULL"):
            writer = await connection.fetchval("SELECT manager_version FROM schema_writer")
        return current, writer
    finally:
        await connection.close()


async def _record_writer(database_url: str, revision: str) -> None:
    connection = await asyncpg.connect(plain_postgres_url(database_url))
    try:
        await connection.execute(
            "INSERT INTO schema_writer (id, manager_version, revision) VALUES (1, $1, $2) "
            "ON CONFLICT (id) DO UPDATE SET manager_version = $1, revision = $2, "
            "written_at = now()",
            manager_version(),
            revision,
        )
    finally:
        await connection.close()
