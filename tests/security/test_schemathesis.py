"""Schemathesis over the Manager's OpenAPI document, with each credential kind: no 5xx, and
every error in the platform's error shape. A Manager and database of its own, so what the
fuzzing creates (projects, tokens, workers) never meets another test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case

from manager.settings import Settings
from tests.support import (
    RunningManager,
    bearer,
    create_database,
    create_live_key,
    create_project,
    create_sdk_token,
    drop_database,
    free_port,
    new_admin_token,
    start_manager,
)

ERROR_KEYS = {"error", "code", "message"}


@pytest.fixture(scope="module")
def fuzzed_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningManager]:
    url = create_database()
    running = start_manager(
        Settings(
            port=free_port(),
            database_url=url,
            data_dir=tmp_path_factory.mktemp("fuzzed"),
            admin_token=new_admin_token(),
            auth_failures_per_window=1_000_000,
        )
    )
    yield running
    running.stop()
    drop_database(url)


@pytest.fixture(scope="module")
def credentials(fuzzed_manager: RunningManager) -> dict[str, str | None]:
    with httpx.Client(
        base_url=fuzzed_manager.url, headers=bearer(fuzzed_manager.admin_token or "")
    ) as admin:
        project = create_project(admin)["slug"]
        worker = admin.post("/api/admin/workers", json={"project": project}).json()
        return {
            "none": None,
            "sdk": create_sdk_token(admin, project),
            "live": create_live_key(admin, project),
            "admin": fuzzed_manager.admin_token,
            "agent": worker["token"],
        }


@pytest.fixture(scope="module")
def manager_schema(fuzzed_manager: RunningManager) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzzed_manager.url}/api/openapi.json")


schema = schemathesis.pytest.from_fixture("manager_schema")


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_credential_or_input_gets_a_5xx_or_an_unshaped_error(
    case: Case, credentials: dict[str, str | None]
) -> None:
    for kind, token in credentials.items():
        headers = dict(case.headers or {})
        headers.pop("Authorization", None)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = case.call(headers=headers, timeout=30)
        assert response.status_code < 500, (kind, response.status_code, response.text)
        if response.status_code >= 400:
            body = response.json()
            assert set(body) >= ERROR_KEYS, (kind, body)
