"""The SDK management plane against a real Manager: ensure(), OnDrift, list/get/delete."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from inferencekey import (
    AsyncManagementClient,
    AuthError,
    Backend,
    DriftError,
    EndpointRef,
    ExecutionPolicy,
    ManagementClient,
    NotFoundError,
    OnDrift,
    PermissionDenied,
    Plan,
    ValidationError,
    Workload,
    WorkloadSpec,
)

from tests.support import (
    RunningManager,
    TestProject,
    create_project,
    create_sdk_token,
    revoke,
    wait_until,
)


def support_bot(**overrides: Any) -> WorkloadSpec:
    fields: dict[str, Any] = {
        "name": "Support bot",
        "slug": "support-bot",
        "model": "qwen2.5:0.5b",
        "backend": Backend.OLLAMA,
    }
    fields.update(overrides)
    return WorkloadSpec(**fields)


def stored(workload: Workload) -> dict[str, Any]:
    """What a client wrote, with its version; ``status`` is left out as the platform moves it."""
    return workload.model_dump(exclude={"status"})


@pytest.fixture
def mgmt(manager: RunningManager, project: TestProject) -> Iterator[ManagementClient]:
    with ManagementClient(
        base_url=manager.url, sdk_token=project.sdk_token, project=project.slug
    ) as client:
        yield client


def test_ensure_creates_an_absent_workload(mgmt: ManagementClient, project: TestProject) -> None:
    ref = mgmt.ensure(support_bot(slug="Support Bot!"))

    assert ref == EndpointRef(project_slug=project.slug, workload_slug="support-bot")
    created = mgmt.get("support-bot")
    assert (created.name, created.model_name, created.backend) == (
        "Support bot",
        "qwen2.5:0.5b",
        "ollama",
    )
    assert created.task_type == "text2text"


def test_ensuring_the_same_spec_twice_sends_no_patch(mgmt: ManagementClient) -> None:
    spec = support_bot(
        backend=Backend.VLLM,
        model="Qwen/Qwen2.5-0.5B-Instruct",
        command="vllm serve Qwen/Qwen2.5-0.5B-Instruct --max-model-len 4096",
        vllm_version="0.6.3",
        description="answers tickets",
        execution_policy=ExecutionPolicy.FIXED,
        execution_policy_config={"replicas": 1},
    )
    mgmt.ensure(spec)
    before = mgmt.get("support-bot")

    again = mgmt.ensure(spec)

    after = mgmt.get("support-bot")
    assert again.workload_slug == "support-bot"
    assert again.plan is None
    assert stored(after) == stored(before)


def test_ensure_with_a_changed_model_patches_it(mgmt: ManagementClient) -> None:
    mgmt.ensure(support_bot())
    before = mgmt.get("support-bot")

    ref = mgmt.ensure(support_bot(model="qwen2.5:1.5b"))

    after = mgmt.get("support-bot")
    assert ref.workload_slug == "support-bot"
    assert after.model_name == "qwen2.5:1.5b"
    assert after.id == before.id
    assert before.generation is not None
    assert after.generation == before.generation + 1


def test_reconcile_switching_policy_kind_sends_the_new_config_with_it(
    mgmt: ManagementClient,
) -> None:
    mgmt.ensure(support_bot(execution_policy="fixed", execution_policy_config={"replicas": 1}))

    mgmt.ensure(
        support_bot(
            execution_policy=ExecutionPolicy.SCHEDULED,
            execution_policy_config={"cron": "0 2 * * *"},
        )
    )

    after = mgmt.get("support-bot")
    assert after.execution_policy == "scheduled"
    assert after.execution_policy_config == {"cron": "0 2 * * *"}


def test_on_drift_fail_raises_drift_error_and_changes_nothing(mgmt: ManagementClient) -> None:
    mgmt.ensure(support_bot())
    before = mgmt.get("support-bot")

    with pytest.raises(DriftError) as caught:
        mgmt.ensure(support_bot(name="Support bot v2", model="qwen2.5:1.5b"), on_drift="fail")

    assert str(caught.value) == "workload drifted from spec: name, model_name"
    assert caught.value.fields == ["name", "model_name"]
    assert isinstance(caught.value, ValidationError)
    assert stored(mgmt.get("support-bot")) == stored(before)


def test_dry_run_on_an_absent_workload_creates_nothing(mgmt: ManagementClient) -> None:
    ref = mgmt.ensure(support_bot(slug="Support Bot"), on_drift=OnDrift.DRY_RUN)

    assert ref.workload_slug == "support-bot"
    assert ref.plan is not None
    assert ref.plan.action == "create"
    assert "model_name" in ref.plan.fields
    assert mgmt.list() == []


def test_dry_run_on_drift_returns_the_plan_and_changes_nothing(mgmt: ManagementClient) -> None:
    mgmt.ensure(support_bot())
    before = mgmt.get("support-bot")

    ref = mgmt.ensure(support_bot(model="qwen2.5:1.5b"), on_drift=OnDrift.DRY_RUN)

    assert ref.plan is not None
    assert ref.plan.action == "update"
    assert ref.plan.fields == ["model_name"]
    assert (ref.plan.changes[0].live, ref.plan.changes[0].desired) == (
        "qwen2.5:0.5b",
        "qwen2.5:1.5b",
    )
    assert stored(mgmt.get("support-bot")) == stored(before)


def test_dry_run_on_a_workload_in_sync_plans_nothing(mgmt: ManagementClient) -> None:
    mgmt.ensure(support_bot())

    ref = mgmt.ensure(support_bot(), on_drift="dry_run")

    assert ref.plan == Plan("none")


def test_on_drift_warn_logs_the_fields_and_changes_nothing(
    mgmt: ManagementClient, caplog: pytest.LogCaptureFixture
) -> None:
    mgmt.ensure(support_bot())
    before = mgmt.get("support-bot")

    with caplog.at_level(logging.WARNING, logger="inferencekey"):
        ref = mgmt.ensure(support_bot(model="qwen2.5:1.5b"), on_drift=OnDrift.WARN)

    assert ref.workload_slug == "support-bot"
    assert any("model_name" in record.getMessage() for record in caplog.records)
    assert stored(mgmt.get("support-bot")) == stored(before)


def test_on_drift_ignore_changes_nothing_silently(
    mgmt: ManagementClient, project: TestProject, caplog: pytest.LogCaptureFixture
) -> None:
    mgmt.ensure(support_bot())
    before = mgmt.get("support-bot")

    with caplog.at_level(logging.WARNING, logger="inferencekey"):
        ref = mgmt.ensure(support_bot(model="qwen2.5:1.5b"), on_drift=OnDrift.IGNORE)

    assert ref == EndpointRef(project_slug=project.slug, workload_slug="support-bot")
    assert caplog.records == []
    assert stored(mgmt.get("support-bot")) == stored(before)


def test_delete_is_true_then_false(mgmt: ManagementClient) -> None:
    mgmt.ensure(support_bot())

    assert mgmt.delete("support-bot") is True
    assert mgmt.delete("support-bot") is False
    with pytest.raises(NotFoundError):
        mgmt.get("support-bot")


def test_list_and_get_return_workloads(mgmt: ManagementClient) -> None:
    mgmt.ensure(support_bot())
    mgmt.ensure(support_bot(name="Embedder", slug="embedder", task_type="embedding"))

    listed = mgmt.list()

    assert sorted(w.slug for w in listed) == ["embedder", "support-bot"]
    assert all(isinstance(w, Workload) for w in listed)
    assert mgmt.get("embedder").task_type == "embedding"


def test_get_reads_the_managers_replica_counts(mgmt: ManagementClient, api: httpx.Client) -> None:
    # Two replicas wanted and no worker of this project to run them: desired 2, ready 0.
    mgmt.ensure(support_bot(execution_policy_config={"replicas": 2}))

    status = wait_until(
        lambda: (s := mgmt.get("support-bot").status) is not None and s.desired_replicas and s,
        15,
        "the reconciler never counted the desired replicas",
    )

    assert (status.desired_replicas, status.ready_replicas) == (2, 0)
    raw = api.get("/api/workloads/support-bot").json()["status"]
    assert (raw["desired_replicas"], raw["ready_replicas"]) == (2, 0)


def test_get_of_an_absent_workload_is_not_found(
    mgmt: ManagementClient, project: TestProject
) -> None:
    with pytest.raises(NotFoundError) as caught:
        mgmt.get("nope")
    assert str(caught.value) == f'not found: workload "nope" not found in project "{project.slug}"'


def test_ensure_uses_project_argument_and_reports_spec_project(
    manager: RunningManager, project: TestProject
) -> None:
    with ManagementClient(base_url=manager.url, sdk_token=project.sdk_token) as mgmt:
        ref = mgmt.ensure(support_bot(), project=project.slug)
        assert ref.project_slug == project.slug
        ref = mgmt.ensure(support_bot(project=project.slug))
        assert ref == EndpointRef(project_slug=project.slug, workload_slug="support-bot")


async def test_async_client_ensures_and_deletes(
    manager: RunningManager, project: TestProject
) -> None:
    async with AsyncManagementClient(
        base_url=manager.url, sdk_token=project.sdk_token, project=project.slug
    ) as mgmt:
        ref = await mgmt.ensure(support_bot())
        assert ref == EndpointRef(project_slug=project.slug, workload_slug="support-bot")
        assert (await mgmt.get("support-bot")).model_name == "qwen2.5:0.5b"
        assert [w.slug for w in await mgmt.list()] == ["support-bot"]
        await mgmt.ensure(support_bot(model="qwen2.5:1.5b"))
        assert (await mgmt.get("support-bot")).model_name == "qwen2.5:1.5b"
        assert await mgmt.delete("support-bot") is True
        assert await mgmt.delete("support-bot") is False


def test_read_only_token_can_list_but_ensure_is_scope_insufficient(
    manager: RunningManager, admin: httpx.Client, project: TestProject
) -> None:
    read_only = create_sdk_token(admin, project.slug, read_only=True)
    with ManagementClient(base_url=manager.url, sdk_token=read_only, project=project.slug) as mgmt:
        assert mgmt.list() == []
        with pytest.raises(PermissionDenied) as caught:
            mgmt.ensure(support_bot())
    assert caught.value.code == "scope_insufficient"
    assert caught.value.status == 403
    assert str(caught.value).startswith("permission denied [scope_insufficient]: ")


def test_another_projects_path_is_project_scope_mismatch(
    mgmt: ManagementClient, admin: httpx.Client
) -> None:
    other = create_project(admin)["slug"]

    with pytest.raises(PermissionDenied) as caught:
        mgmt.ensure(support_bot(), project=other)

    assert caught.value.code == "project_scope_mismatch"
    assert caught.value.status == 403


def test_a_revoked_token_is_an_auth_error(
    manager: RunningManager, admin: httpx.Client, project: TestProject
) -> None:
    token = create_sdk_token(admin, project.slug)
    revoke(admin, token)

    with (
        ManagementClient(base_url=manager.url, sdk_token=token, project=project.slug) as mgmt,
        pytest.raises(AuthError) as caught,
    ):
        mgmt.ensure(support_bot())

    assert caught.value.status == 401
    assert str(caught.value).startswith("authentication failed: ")
    assert token not in str(caught.value)


def test_a_garbage_sdk_token_is_an_auth_error(
    manager: RunningManager, project: TestProject
) -> None:
    with (
        ManagementClient(
            base_url=manager.url, sdk_token="ik_sdk_garbage", project=project.slug
        ) as mgmt,
        pytest.raises(AuthError),
    ):
        mgmt.list()


def test_a_manager_400_is_a_validation_error_naming_the_field(mgmt: ManagementClient) -> None:
    spec = support_bot(execution_policy="fixed", execution_policy_config={"replicas": -1})

    with pytest.raises(ValidationError) as caught:
        mgmt.ensure(spec)

    assert caught.value.status == 400
    assert str(caught.value).startswith("bad request: ")
    assert "replicas" in str(caught.value)
    assert mgmt.list() == []


def test_concurrent_ensures_of_one_new_spec_converge_on_one_workload(
    manager: RunningManager, project: TestProject, api: httpx.Client
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def ensure_once(_: int) -> str:
        with ManagementClient(
            base_url=manager.url, sdk_token=project.sdk_token, project=project.slug
        ) as client:
            return client.ensure(support_bot(slug="raced")).workload_slug

    with ThreadPoolExecutor(max_workers=30) as pool:
        slugs = list(pool.map(ensure_once, range(150)))

    assert slugs == ["raced"] * 150
    listed = api.get(f"/api/projects/{project.slug}/workloads").json()["workloads"]
    assert [w["slug"] for w in listed] == ["raced"]
    assert listed[0]["generation"] == 1


def test_an_identical_create_is_idempotent_and_a_different_one_conflicts(
    api: httpx.Client, project: TestProject
) -> None:
    body = {"name": "Twin", "slug": "twin", "backend": "ollama", "model_name": "m"}
    path = f"/api/projects/{project.slug}/workloads"
    first = api.post(path, json=body)
    again = api.post(path, json=body)
    different = api.post(path, json={**body, "model_name": "other"})

    assert first.status_code == 201
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert (different.status_code, different.json()["code"]) == (409, "slug_conflict")
