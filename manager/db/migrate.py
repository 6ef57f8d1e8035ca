"""Apply the Alembic migrations shipped with the package."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str) -> None:
    """Bring the schema to the newest revision (blocking; runs its own event loop)."""
    command.upgrade(alembic_config(database_url), "head")


async def upgrade_to_head_async(database_url: str) -> None:
    # Alembic's env runs asyncio.run(); give it a thread with no loop of its own.
    await asyncio.to_thread(upgrade_to_head, database_url)
