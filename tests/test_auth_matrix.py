"""The credential matrix of contract section 2, route by route."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support import (
    TestProject,
    bearer,
    create_live_key,
    create_project,
    create_sdk_token,
    revoke,
)

SPEC = {"name": "Bot", "slug": "bot", "backend": "vllm", "model_name": "m"}


@dataclass
class Route:
    method: str
    path: str
    writes: bool
    body: dict[str, Any] | None = None

    def call(self, client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
        return client.request(self.method, self.path, headers=headers, json=self.body)


@dataclass
class World:
    project: TestProject
    routes: list[Route]
    admin_routes: list[Route]
    tokens: dict[str, str]
    # The custom-backend registry and the tenant listing: an SDK token or the admin credential.
    registry_routes: list[Route]


@pytest.fixture(scope="module")
def world(admin: httpx.Client) -> World:
    created = create_project(admin)
    slug = created["slug"]
    project = TestProject(created["id"], slug, create_sdk_token(admin, slug))
    workload = admin.post(
        f"/api/projects/{slug}/workloads", json=SPEC, headers=bearer(project.sdk_token)
    ).json()
    wl = workload["id"]
    other = create_project(admin)["slug"]
    revoked = create_sdk_token(admin, slug)
    revoke(admin, revoked)
    routes = [
        Route("GET", f"/api/projects/{slug}/workloads", writes=False),
        Route("GET", f"/api/projects/{created['id']}/workloads", writes=False),
        Route("POST", f"/api/projects/{slug}/workloads", writes=True, body={**SPEC, "slug": "b2"}),
        Route("GET", f"/api/workloads/{wl}", writes=False),
        Route("GET", "/api/workloads/bot", writes=False),
        Route("GET", f"/api/workloads/{wl}/events", writes=False),
        Route("PATCH", f"/api/workloads/{wl}", writes=True, body={"name": "Bot"}),
        Route("DELETE", "/api/workloads/no-such-workload", writes=True),
        Route("GET", f"/api/workloads/{wl}/webhooks", writes=False),
        Route("POST", f"/api/workloads/{wl}/webhooks", writes=True, body={"url": "http://h/"}),
        Route("PATCH", f"/api/workloads/{wl}/webhooks/whd_x", writes=True, body={}),
        Route("POST", f"/api/workloads/{wl}/webhooks/whd_x/test", writes=True),
        Route("GET", f"/api/workloads/{wl}/jobs", writes=False),
        Route("GET", f"/api/workloads/{wl}/deliveries", writes=False),
        Route("POST", f"/api/workloads/{wl}/deliveries/whdl_x/redeliver", writes=True),
    ]
    admin_routes = [
        Route("GET", "/api/admin/projects", writes=False),
        Route("POST", "/api/admin/projects", writes=True, body={"slug": "x"}),
        Route("GET", "/api/admin/tokens", writes=False),
        Route("POST", "/api/admin/tokens", writes=True, body={"project": slug}),
        Route("POST", "/api/admin/keys", writes=True, body={"project": slug, "all": True}),
        Route("DELETE", "/api/admin/tokens/00000000", writes=True),
        Route("GET", "/api/admin/workloads", writes=False),
        Route("PUT", "/api/admin/gpu-prices", writes=True, body={"name": "x", "usd_per_hour": 1}),
        Route("GET", "/metrics", writes=False),
        Route("GET", f"/api/admin/workloads/{slug}/bot/webhooks", writes=False),
        Route("GET", f"/api/admin/workloads/{slug}/bot/deliveries", writes=False),
    ]
    tokens = {
        "live": create_live_key(admin, slug),
        "read_only": create_sdk_token(admin, slug, read_only=True),
        "other_project": create_sdk_token(admin, other),
        "revoked": revoked,
        "unknown": f"ik_sdk_{secrets.token_hex(4)}_{secrets.token_hex(32)}",
        "malformed": "ik_sdk_nothex_short",
        "admin": str(admin.headers["authorization"]).split()[1],
        "agent": admin.post("/api/admin/workers", json={"project": slug}).json()["token"],
    }
    registry = "/api/tenants/default/custom-backends"
    registry_routes = [
        Route("GET", "/api/tenants", writes=False),
        Route("GET", registry, writes=False),
        Route("GET", f"{registry}/no-such-backend", writes=False),
        Route("POST", registry, writes=True, body={}),
        Route("DELETE", f"{registry}/no-such-backend", writes=True),
    ]
    return World(project, routes, admin_routes, tokens, registry_routes)


def _ids(routes: list[Route]) -> list[str]:
    return [f"{r.method} {r.path.split('/', 3)[-1]}" for r in routes]


ROUTE_INDEXES = range(15)
ADMIN_INDEXES = range(11)
REGISTRY_INDEXES = range(5)


def _assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert set(body) >= {"error", "code", "message"}
    if status == 403:
        assert body["error"] == code


@pytest.mark.parametrize("index", ROUTE_INDEXES)
@pytest.mark.parametrize("credential", ["missing", "unknown", "malformed", "revoked"])
def test_control_route_without_a_valid_credential_is_401(
    world: World, admin: httpx.Client, index: int, credential: str
) -> None:
    headers = {} if credential == "missing" else bearer(world.tokens[credential])
    with httpx.Client(base_url=admin.base_url) as client:
        response = world.routes[index].call(client, headers)
    _assert_problem(response, 401, "invalid_credentials")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("index", ROUTE_INDEXES)
@pytest.mark.parametrize("credential", ["live", "admin"])
def test_live_key_or_admin_credential_on_control_route_is_403_wrong_credential_type(
    world: World, admin: httpx.Client, index: int, credential: str
) -> None:
    with httpx.Client(base_url=admin.base_url) as client:
        response = world.routes[index].call(client, bearer(world.tokens[credential]))
    _assert_problem(response, 403, "wrong_credential_type")


@pytest.mark.parametrize("index", ROUTE_INDEXES)
def test_sdk_token_of_another_project_is_403_project_scope_mismatch(
    world: World, admin: httpx.Client, index: int
) -> None:
    with httpx.Client(base_url=admin.base_url) as client:
        response = world.routes[index].call(client, bearer(world.tokens["other_project"]))
    if (
        "/api/projects/" in world.routes[index].path
        or "/api/workloads/wl_" in world.routes[index].path
    ):
        _assert_problem(response, 403, "project_scope_mismatch")
    else:
        # A slug is looked up inside the token's own project, where it does not exist.
        _assert_problem(response, 404, "workload_not_found")


@pytest.mark.parametrize("index", ROUTE_INDEXES)
def test_read_only_token_can_read_but_writing_is_403_scope_insufficient(
    world: World, admin: httpx.Client, index: int
) -> None:
    route = world.routes[index]
    with httpx.Client(base_url=admin.base_url) as client:
        response = route.call(client, bearer(world.tokens["read_only"]))
    if route.writes:
        _assert_problem(response, 403, "scope_insufficient")
    else:
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("index", ADMIN_INDEXES)
@pytest.mark.parametrize("credential", ["sdk", "live"])
def test_project_credentials_on_admin_routes_are_403_wrong_credential_type(
    world: World, admin: httpx.Client, index: int, credential: str
) -> None:
    token = world.project.sdk_token if credential == "sdk" else world.tokens["live"]
    with httpx.Client(base_url=admin.base_url) as client:
        response = world.admin_routes[index].call(client, bearer(token))
    _assert_problem(response, 403, "wrong_credential_type")


@pytest.mark.parametrize("index", ADMIN_INDEXES)
def test_admin_route_without_credential_is_401(
    world: World, admin: httpx.Client, index: int
) -> None:
    with httpx.Client(base_url=admin.base_url) as client:
        response = world.admin_routes[index].call(client, {})
    _assert_problem(response, 401, "invalid_credentials")


@pytest.mark.parametrize("index", REGISTRY_INDEXES)
@pytest.mark.parametrize("credential", ["missing", "unknown", "malformed", "revoked"])
def test_registry_route_without_a_valid_credential_is_401(
    world: World, admin: httpx.Client, index: int, credential: str
) -> None:
    headers = {} if credential == "missing" else bearer(world.tokens[credential])
    with httpx.Client(base_url=admin.base_url) as client:
        response = world.registry_routes[index].call(client, headers)
    _assert_problem(response, 401, "invalid_credentials")


@pytest.mark.parametrize("index", REGISTRY_INDEXES)
@pytest.mark.parametrize("credential", ["live", "agent"])
def test_live_key_or_agent_credential_on_registry_route_is_403_wrong_credential_type(
    world: World, admin: httpx.Client, index: int, credential: str
) -> None:
    with httpx.Client(base_url=admin.base_url) as client:
        response = world.registry_routes[index].call(client, bearer(world.tokens[credential]))
    _assert_problem(response, 403, "wrong_credential_type")


@pytest.mark.parametrize("index", REGISTRY_INDEXES)
@pytest.mark.parametrize("credential", ["sdk", "admin", "read_only"])
def test_registry_routes_take_sdk_tokens_and_the_admin_credential_and_writing_needs_write_scope(
    world: World, admin: httpx.Client, index: int, credential: str
) -> None:
    route = world.registry_routes[index]
    token = world.project.sdk_token if credential == "sdk" else world.tokens[credential]
    with httpx.Client(base_url=admin.base_url) as client:
        response = route.call(client, bearer(token))
    if credential == "read_only" and route.writes:
        _assert_problem(response, 403, "scope_insufficient")
    else:
        # Past the credential: an answer about the request itself (a 404 for no such backend,
        # a 400 for a body that is no package).
        assert response.status_code in (200, 400, 404), response.text


@pytest.mark.parametrize("credential", ["sdk", "admin", "live"])
def test_non_agent_credential_on_the_package_download_is_403_wrong_credential_type(
    world: World, admin: httpx.Client, credential: str
) -> None:
    token = world.project.sdk_token if credential == "sdk" else world.tokens[credential]
    path = "/api/agent/custom-backends/cbv_none/package"
    with httpx.Client(base_url=admin.base_url) as client:
        _assert_problem(client.get(path, headers=bearer(token)), 403, "wrong_credential_type")
        _assert_problem(client.get(path), 401, "invalid_credentials")
        not_there = client.get(path, headers=bearer(world.tokens["agent"]))
    _assert_problem(not_there, 404, "package_not_found")


def test_revocation_takes_effect_on_the_next_request(
    admin: httpx.Client, project: TestProject
) -> None:
    token = create_sdk_token(admin, project.slug)
    path = f"/api/projects/{project.slug}/workloads"
    with httpx.Client(base_url=admin.base_url, headers=bearer(token)) as client:
        assert client.get(path).status_code == 200
        revoke(admin, token)
        _assert_problem(client.get(path), 401, "invalid_credentials")


def test_a_token_with_a_known_id_but_another_secret_is_401(
    admin: httpx.Client, project: TestProject
) -> None:
    forged = project.sdk_token[:-64] + secrets.token_hex(32)
    with httpx.Client(base_url=admin.base_url, headers=bearer(forged)) as client:
        _assert_problem(
            client.get(f"/api/projects/{project.slug}/workloads"), 401, "invalid_credentials"
        )


def test_errors_never_echo_the_secret(admin: httpx.Client, project: TestProject) -> None:
    live = create_live_key(admin, project.slug)
    with httpx.Client(base_url=admin.base_url, headers=bearer(live)) as client:
        response = client.get(f"/api/projects/{project.slug}/workloads")
    assert live.split("_")[3] not in response.text
    assert f"ik_live_{live.split('_')[2]}…" in response.json()["message"]
