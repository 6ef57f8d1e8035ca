"""The operator's admin API: projects, SDK tokens, live keys, revocation, bootstrap."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from manager.settings import Settings
from tests.support import (
    bearer,
    create_database,
    create_project,
    drop_database,
    free_port,
    start_manager,
)


def test_project_slug_is_canonical_and_unique(admin: httpx.Client) -> None:
    created = admin.post("/api/admin/projects", json={"slug": "Acme Corp"})
    assert created.status_code == 201
    assert created.json()["slug"] == "acme-corp" and created.json()["id"].startswith("proj_")
    again = admin.post("/api/admin/projects", json={"slug": "acme corp"})
    assert (again.status_code, again.json()["code"]) == (409, "slug_conflict")
    listed = admin.get("/api/admin/projects").json()["projects"]
    assert [p["slug"] for p in listed].count("acme-corp") == 1


def test_sdk_token_is_shown_once_and_stored_as_a_digest(
    admin: httpx.Client, database_url: str
) -> None:
    slug = create_project(admin)["slug"]
    created = admin.post("/api/admin/tokens", json={"project": slug}).json()
    token = created["token"]
    assert token.startswith(f"ik_sdk_{created['id']}_") and len(token.split("_")[3]) == 64
    assert created["scopes"] == ["workload:read", "workload:write", "assignment:write"]
    listed = admin.get("/api/admin/tokens", params={"project": slug}).json()["tokens"]
    assert [t["id"] for t in listed] == [created["id"]]
    assert "token" not in listed[0] and token not in admin.get("/api/admin/tokens").text
    assert listed[0]["display"] == f"ik_sdk_{created['id']}…"


def test_read_only_token_has_only_the_read_scope(admin: httpx.Client) -> None:
    slug = create_project(admin)["slug"]
    created = admin.post("/api/admin/tokens", json={"project": slug, "read_only": True}).json()
    assert created["scopes"] == ["workload:read"]


def test_live_key_grants_named_workloads_or_the_whole_project(admin: httpx.Client) -> None:
    slug = create_project(admin)["slug"]
    named = admin.post("/api/admin/keys", json={"project": slug, "workloads": ["Support Bot", "b"]})
    assert named.status_code == 201
    assert named.json()["grants"] == [f"{slug}/support-bot", f"{slug}/b"]
    assert named.json()["token"].startswith("ik_live_")
    everything = admin.post("/api/admin/keys", json={"project": slug, "all": True}).json()
    assert everything["grants"] == [f"{slug}/*"]


@pytest.mark.parametrize(
    "body",
    [{"all": True, "workloads": ["a"]}, {}, {"workloads": []}],
    ids=["both", "neither", "empty list"],
)
def test_live_key_needs_exactly_one_grant_form(admin: httpx.Client, body: dict) -> None:
    slug = create_project(admin)["slug"]
    response = admin.post("/api/admin/keys", json={"project": slug, **body})
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")


def test_token_for_unknown_project_is_404(admin: httpx.Client) -> None:
    response = admin.post("/api/admin/tokens", json={"project": "nope"})
    assert (response.status_code, response.json()["code"]) == (404, "project_not_found")


def test_revoke_is_idempotent_and_unknown_id_is_404(admin: httpx.Client) -> None:
    slug = create_project(admin)["slug"]
    created = admin.post("/api/admin/tokens", json={"project": slug}).json()
    first = admin.delete(f"/api/admin/tokens/{created['id']}")
    assert first.status_code == 200 and first.json()["revoked_at"]
    again = admin.delete(f"/api/admin/tokens/ik_sdk_{created['id']}…")
    assert again.json()["revoked_at"] == first.json()["revoked_at"]
    missing = admin.delete("/api/admin/tokens/00000000")
    assert (missing.status_code, missing.json()["code"]) == (404, "token_not_found")


def test_first_start_without_admin_token_generates_one_in_a_0600_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = create_database()
    try:
        settings = Settings(port=free_port(), database_url=url, data_dir=tmp_path)
        running = start_manager(settings)
        try:
            token_file = tmp_path / "admin-token"
            token = token_file.read_text().strip()
            assert token.startswith("ik_admin_")
            assert token_file.stat().st_mode & 0o777 == 0o600
            assert capsys.readouterr().out.count(token) == 1
            with httpx.Client(base_url=running.url, headers=bearer(token)) as client:
                assert client.get("/api/admin/projects").status_code == 200
        finally:
            running.stop()
        # A restart finds the admin credential in the database and prints nothing.
        start_manager(settings).stop()
        assert token not in capsys.readouterr().out
    finally:
        drop_database(url)


def test_malformed_configured_admin_token_stops_the_start(tmp_path: Path) -> None:
    url = create_database()
    try:
        settings = Settings(
            port=free_port(), database_url=url, data_dir=tmp_path, admin_token="letmein"
        )
        with pytest.raises(ValueError, match="INFERENCEKEY_ADMIN_TOKEN must look like"):
            start_manager(settings)
    finally:
        drop_database(url)
