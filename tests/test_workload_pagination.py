"""Paging through a project's workloads (``?limit=N&after=CURSOR``) on a real Manager, and the
plain list that stays as the contract has it; then the SDKs' iterators over the same pages."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from inferencekey import (
    AsyncManagementClient,
    ManagementClient,
    ValidationError,
    WorkloadPage,
)

from manager.services import workloads as workloads_service
from tests.support import RunningManager, TestProject, create_sdk_token, run_sql

CURSOR = re.compile(r"[A-Za-z0-9_-]+")


def spec(slug: str, **change: Any) -> dict[str, Any]:
    return {
        "name": f"Bot {slug}",
        "slug": slug,
        "backend": "llamacpp",
        "model_name": "gemma-3-270m",
        "config": {"command": "llama-server -m /models/gemma.gguf -c 512"},
        "execution_policy": "fixed",
        "execution_policy_config": {"replicas": 0},
        **change,
    }


def create(api: httpx.Client, project: TestProject, slug: str, **change: Any) -> dict[str, Any]:
    response = api.post(f"/api/projects/{project.slug}/workloads", json=spec(slug, **change))
    assert response.status_code == 201, response.text
    return response.json()


def create_many(api: httpx.Client, project: TestProject, count: int) -> list[str]:
    """``count`` new workloads; their ids in creation order."""
    return [create(api, project, f"w{index:02d}")["id"] for index in range(count)]


def listing(api: httpx.Client, project: TestProject, **params: Any) -> httpx.Response:
    return api.get(f"/api/projects/{project.slug}/workloads", params=params)


def page(api: httpx.Client, project: TestProject, **params: Any) -> dict[str, Any]:
    response = listing(api, project, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"workloads", "next_cursor"}
    return body


def all_pages(api: httpx.Client, project: TestProject, limit: int) -> list[dict[str, Any]]:
    pages = [page(api, project, limit=limit)]
    while pages[-1]["next_cursor"] is not None:
        pages.append(page(api, project, limit=limit, after=pages[-1]["next_cursor"]))
    return pages


def ids(workloads: list[dict[str, Any]]) -> list[str]:
    return [workload["id"] for workload in workloads]


def plain_ids(api: httpx.Client, project: TestProject) -> list[str]:
    response = listing(api, project)
    assert response.status_code == 200, response.text
    return ids(response.json()["workloads"])


def store(manager: RunningManager, sql: str, *args: Any) -> None:
    """Write straight to the Manager's database: what no API request could write."""

    run_sql(manager.database_url, sql, *args)


def expect_400(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["code"], body["field"]) == ("validation_error", field), body
    assert set(body) >= {"error", "code", "message"}


def test_pages_hold_every_workload_once_in_creation_order(
    api: httpx.Client, project: TestProject
) -> None:
    created = create_many(api, project, 7)

    pages = all_pages(api, project, limit=3)

    assert [len(p["workloads"]) for p in pages] == [3, 3, 1]
    assert [ids(p["workloads"]) for p in pages] == [created[0:3], created[3:6], created[6:7]]
    assert all(CURSOR.fullmatch(p["next_cursor"]) for p in pages[:-1])
    assert plain_ids(api, project) == created


def test_a_page_exactly_as_long_as_what_is_left_is_the_last(
    api: httpx.Client, project: TestProject
) -> None:
    created = create_many(api, project, 4)

    pages = all_pages(api, project, limit=2)

    assert [ids(p["workloads"]) for p in pages] == [created[:2], created[2:]]
    assert pages[-1]["next_cursor"] is None
    whole = page(api, project, limit=1000)
    assert (ids(whole["workloads"]), whole["next_cursor"]) == (created, None)


def test_an_empty_project_is_one_empty_page(api: httpx.Client, project: TestProject) -> None:
    assert page(api, project, limit=5) == {"workloads": [], "next_cursor": None}
    assert listing(api, project).json() == {"workloads": []}


def test_workloads_created_at_one_instant_are_ordered_by_id_across_pages(
    api: httpx.Client, project: TestProject, manager: RunningManager
) -> None:
    created = create_many(api, project, 6)
    # One creation instant for all, so that only their ids order them.
    instant = datetime(2025, 6, 1, 10, 0, 0, 123456, tzinfo=UTC)
    store(manager, "UPDATE workloads SET created_at = $2 WHERE id = ANY($1)", created, instant)

    pages = all_pages(api, project, limit=2)

    assert [w for p in pages for w in ids(p["workloads"])] == sorted(created)
    assert plain_ids(api, project) == sorted(created)


def test_a_create_and_deletes_between_pages_skip_or_repeat_no_survivor(
    api: httpx.Client, project: TestProject
) -> None:
    created = create_many(api, project, 6)
    first = page(api, project, limit=3)
    assert ids(first["workloads"]) == created[:3]

    # The cursor's own workload goes, and one not read yet; a new one comes.
    for gone in (created[2], created[4]):
        assert api.delete(f"/api/workloads/{gone}").status_code == 204
    newcomer = create(api, project, "late")["id"]
    rest = all_pages_after(api, project, first["next_cursor"], limit=3)

    assert [w for p in rest for w in ids(p["workloads"])] == [created[3], created[5], newcomer]


def all_pages_after(
    api: httpx.Client, project: TestProject, cursor: str, limit: int
) -> list[dict[str, Any]]:
    pages = [page(api, project, limit=limit, after=cursor)]
    while pages[-1]["next_cursor"] is not None:
        pages.append(page(api, project, limit=limit, after=pages[-1]["next_cursor"]))
    return pages


@pytest.mark.parametrize("pieces", ["one piece", "a piece per workload"])
def test_the_plain_list_is_the_contract_list_of_each_workloads_own_answer(
    api: httpx.Client,
    project: TestProject,
    manager: RunningManager,
    monkeypatch: pytest.MonkeyPatch,
    pieces: str,
) -> None:
    if pieces == "a piece per workload":  # the list is written in pieces; they join as one
        monkeypatch.setattr(workloads_service, "_WRITTEN_AT_ONCE", 1)
    create(api, project, "plain")
    rich = create(api, project, "rich", name="Café ✓ bot", description="two\nlines")["id"]
    # Stored JSON of every kind (as the ORM writes it): unicode, floats of every magnitude,
    # big integers, nesting, nulls. The list must echo it as each workload's own answer does.
    config = {
        "command": "llama-server -m /models/gemma.gguf -c 512",
        "env": {"HF_HOME": "/models/é", "ratio": 0.1, "tiny": 1e-05, "huge": 1e20, "n": 2**53},
        "flags": [True, False, None, "✓"],
    }
    store(manager, "UPDATE workloads SET config = $2 WHERE id = $1", rich, json.dumps(config))

    def consistent() -> tuple[bytes, list[bytes]] | None:
        before = listing(api, project)
        each = [api.get(f"/api/workloads/{i}").content for i in ids(before.json()["workloads"])]
        after = listing(api, project)
        return (after.content, each) if before.content == after.content else None

    # The reconciler may move a phase meanwhile: compare a list read twice alike.
    for _ in range(20):
        read = consistent()
        if read is not None:
            break
    assert read is not None, "the list never read the same twice"
    body, each = read
    assert len(each) == 2
    assert body == b'{"workloads":[' + b",".join(each) + b"]}"


def test_limit_outside_1_to_1000_is_a_typed_400(api: httpx.Client, project: TestProject) -> None:
    for limit in (0, -1, 1001, 10**30):
        expect_400(listing(api, project, limit=limit), "limit")
    expect_400(listing(api, project, limit="ten"), "limit")


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def test_a_cursor_the_manager_did_not_make_is_a_typed_400(
    api: httpx.Client, project: TestProject
) -> None:
    create_many(api, project, 2)
    good = page(api, project, limit=1)["next_cursor"]
    assert page(api, project, limit=1, after=good)["workloads"]

    for bad in (
        "not a cursor!",
        good + "$",
        "Zm9v",  # "foo"
        cursor_of("1717236000000000:proj_x"),
        cursor_of("-5:wl_x"),
        cursor_of("99999999999999999999999:wl_x"),
        cursor_of("12:wl_\u00e9"),
        "A" * 400,
    ):
        expect_400(listing(api, project, limit=1, after=bad), "after")
    # A cursor is a position in a page sequence: it needs the page size.
    expect_400(listing(api, project, after=good), "after")


def test_a_read_only_token_pages_too(
    manager: RunningManager, admin: httpx.Client, api: httpx.Client, project: TestProject
) -> None:
    created = create_many(api, project, 3)
    token = create_sdk_token(admin, project.slug, read_only=True)
    with httpx.Client(base_url=manager.url, headers={"Authorization": f"Bearer {token}"}) as ro:
        assert [w for p in all_pages(ro, project, limit=2) for w in ids(p["workloads"])] == created


# --- the Python SDK against the same pages ---------------------------------------------------


def test_sdk_iterates_every_workload_across_pages(
    api: httpx.Client, project: TestProject, mgmt: ManagementClient
) -> None:
    created = create_many(api, project, 5)

    assert [w.id for w in mgmt.iter_workloads(page_size=2)] == created
    assert [w.id for w in mgmt.iter_workloads()] == created
    assert [w.id for w in mgmt.list()] == created


def test_sdk_reads_one_page_and_its_cursor(
    api: httpx.Client, project: TestProject, mgmt: ManagementClient
) -> None:
    created = create_many(api, project, 3)

    first = mgmt.list_workloads(limit=2)
    assert isinstance(first, WorkloadPage)
    assert [w.slug for w in first.workloads] == ["w00", "w01"]
    assert first.next_cursor is not None
    last = mgmt.list_workloads(limit=2, after=first.next_cursor)
    assert ([w.id for w in last.workloads], last.next_cursor) == ([created[2]], None)


def test_sdk_page_errors_are_validation_errors(mgmt: ManagementClient) -> None:
    with pytest.raises(ValidationError, match="limit must be from 1 to 1000"):
        mgmt.list_workloads(limit=0)
    with pytest.raises(ValidationError, match="page_size must be from 1 to 1000"):
        mgmt.iter_workloads(page_size=1001)
    with pytest.raises(ValidationError) as refused:
        mgmt.list_workloads(limit=1, after="not a cursor!")
    assert refused.value.code == "validation_error"


def test_async_sdk_iterates_every_workload_across_pages(
    api: httpx.Client, project: TestProject, manager: RunningManager
) -> None:
    created = create_many(api, project, 5)

    async def read() -> tuple[list[str], WorkloadPage]:
        async with AsyncManagementClient(
            base_url=manager.url, sdk_token=project.sdk_token, project=project.slug
        ) as client:
            every = [w.id async for w in client.iter_workloads(page_size=2)]
            return every, await client.list_workloads(limit=4)

    every, first = asyncio.run(read())
    assert every == created
    assert [w.id for w in first.workloads] == created[:4] and first.next_cursor
