"""Fixtures: one freshly migrated database and one live Manager per test run."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from manager.settings import Settings
from tests.support import (
    RunningManager,
    TestProject,
    bearer,
    create_database,
    create_project,
    create_sdk_token,
    drop_database,
    free_port,
    new_admin_token,
    start_manager,
)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def manager(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningManager]:
    settings = Settings(
        port=free_port(),
        database_url=database_url,
        data_dir=tmp_path_factory.mktemp("manager-data"),
        admin_token=new_admin_token(),
    )
    running = start_manager(settings)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def admin(manager: RunningManager) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token)) as client:
        yield client


@pytest.fixture
def project(admin: httpx.Client) -> TestProject:
    created = create_project(admin)
    return TestProject(
        id=created["id"], slug=created["slug"], sdk_token=create_sdk_token(admin, created["slug"])
    )


@pytest.fixture
def api(manager: RunningManager, project: TestProject) -> Iterator[httpx.Client]:
    """A raw HTTP client holding the project's full-scope SDK token."""
    with httpx.Client(base_url=manager.url, headers=bearer(project.sdk_token)) as client:
        yield client
