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
    """A warning when the database allows fewer connections than ``needed`` (what the
    Manager's settings may open, Settings.database_connections), else None (blocking)."""
    most, reserved = start_up_check(_connection_limits(database_url))
    allowed = most - reserved
    if needed <= allowed:
        return None
    return (
        f"this Manager may open up to {needed} connections to the database, which allows "
        f"{allowed} (max_connections {most}, less {reserved} reserved for superusers): under "
        "load, requests would wait for a connection and be answered 503. Raise the server's "
        "max_connections, or lower INFERENCEKEY_PROCESSES, INFERENCEKEY_DB_POOL_SIZE or "
        "INFERENCEKEY_DB_MAX_OVERFLOW (other Managers on this database need theirs too)."
    )


async def _connection_limits(database_url: str) -> tuple[int, int]:
    connection = await asyncpg.connect(plain_postgres_url(database_url))
    try:
        most = int(await connection.fetchval("SHOW max_connections"))
        reserved = int(await connection.fetchval("SHOW superuser_reserved_connections"))
        return most, reserved
    finally:
        await connection.close()


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
