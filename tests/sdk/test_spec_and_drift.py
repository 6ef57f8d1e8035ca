"""WorkloadSpec's local checks, its create body and the drift rules ensure() is built on."""

from __future__ import annotations

import pytest
from inferencekey import (
    Backend,
    ConfigurationError,
    DriftItem,
    ExecutionPolicy,
    TaskType,
    ValidationError,
    WorkloadSpec,
)
from inferencekey.spec import compute_drift
from inferencekey.validation import slugify

LIVE_KEY = "ik_live_0123abcd_" + "a" * 64


def make_spec(**overrides: object) -> WorkloadSpec:
    fields: dict[str, object] = {
        "name": "Support bot",
        "slug": "support-bot",
        "model": "qwen2.5:0.5b",
        "backend": Backend.OLLAMA,
    }
    fields.update(overrides)
    return WorkloadSpec(**fields)  # type: ignore[arg-type]


def live_workload(**overrides: object) -> dict[str, object]:
    """A workload as the Manager echoes it for ``make_spec()``."""
    workload: dict[str, object] = {
        "id": "wl_1",
        "project_id": "proj_1",
        "name": "Support bot",
        "slug": "support-bot",
        "task_type": "text2text",
        "backend": "ollama",
        "model_name": "qwen2.5:0.5b",
        "description": None,
        "config": None,
        "worker_id": None,
        "gpu_resource_id": None,
        "execution_policy": None,
        "execution_policy_config": None,
        "created_at": "2025-01-01T00:00:00Z",
        "updated_at": "2025-01-01T00:00:00Z",
    }
    workload.update(overrides)
    return workload


@pytest.mark.parametrize(
    ("declared", "canonical"),
    [
        ("Gemma 4 26B (llama.cpp / GGUF) on R9700", "gemma-4-26b-llama-cpp-gguf-on-r9700"),
        ("  Mixed_Case--Slug  ", "mixed-case-slug"),
        ("a__b..c", "a-b-c"),
        ("---", ""),
        ("support-bot", "support-bot"),
        ("café-bot", "caf-bot"),
    ],
)
def test_slug_is_canonicalised_like_the_manager(declared: str, canonical: str) -> None:
    assert slugify(declared) == canonical


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": ""}, "validation error: name must not be empty"),
        ({"name": "   "}, "validation error: name must not be empty"),
        ({"slug": " "}, "validation error: slug must not be empty"),
        ({"model": ""}, "validation error: model must not be empty"),
        ({"name": "", "model": ""}, "validation error: name must not be empty"),
        ({"slug": "---"}, "validation error: slug '---' has no letters or digits"),
    ],
)
def test_blank_required_fields_fail_the_local_check(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        make_spec(**overrides).check()
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": LIVE_KEY},
        {"model": "ik_sdk_0123abcd_" + "b" * 64},
        {"project": "ik_live_x"},
        {"description": "ik_sdk_whatever"},
        {"command": f"vllm serve m --api-key {LIVE_KEY}"},
        {"vllm_version": "ik_live_"},
        {"worker_id": "ik_sdk_"},
        {"gpu_resource_id": LIVE_KEY},
    ],
)
def test_a_secret_in_a_spec_field_is_a_configuration_error(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_spec(**overrides).check()
    assert str(caught.value) == "configuration error: secrets must never go in specs"


def test_mentioning_a_token_prefix_in_prose_is_not_a_secret() -> None:
    make_spec(description="rotate your ik_live_ keys monthly").check()


def test_a_blank_field_is_reported_before_a_secret() -> None:
    with pytest.raises(ValidationError):
        make_spec(name="", description=LIVE_KEY).check()


def test_create_body_carries_the_canonical_slug_and_wire_strings() -> None:
    spec = make_spec(
        slug="Support Bot!",
        backend=Backend.VLLM,
        command="vllm serve qwen",
        vllm_version="0.6.3",
        task_type=TaskType.EMBEDDING,
        execution_policy=ExecutionPolicy.FIXED,
        execution_policy_config={"replicas": 2},
        description="helps",
    )
    assert spec.to_create_body() == {
        "name": "Support bot",
        "slug": "support-bot",
        "task_type": "embedding",
        "backend": "vllm",
        "model_name": "qwen2.5:0.5b",
        "description": "helps",
        "config": {"command": "vllm serve qwen", "vllm_version": "0.6.3"},
        "execution_policy": "fixed",
        "execution_policy_config": {"replicas": 2},
    }


def test_create_body_defaults_task_type_and_omits_unset_fields() -> None:
    body = make_spec(project="acme", config={"sglang_version": "0.5.14"}).to_create_body()
    assert body == {
        "name": "Support bot",
        "slug": "support-bot",
        "task_type": "text2text",
        "backend": "ollama",
        "model_name": "qwen2.5:0.5b",
    }


def test_vllm_version_without_a_command_sends_no_config() -> None:
    assert "config" not in make_spec(vllm_version="0.6.3").to_create_body()


def test_a_custom_backend_slug_is_sent_verbatim() -> None:
    assert make_spec(backend="my-forecaster").to_create_body()["backend"] == "my-forecaster"


def test_a_custom_backends_config_is_sent_and_compared_a_built_ins_is_not() -> None:
    # A built-in's config is not the official client's wire config (the README's example passes
    # one that is dropped); a custom backend's is what its setup() reads.
    custom = make_spec(backend="my-forecaster", config={"season": 7})
    assert custom.to_create_body()["config"] == {"season": 7}
    assert custom.desired_fields()["config"] == {"season": 7}
    assert "config" not in make_spec(backend="my-forecaster").to_create_body()
    assert "config" not in make_spec(backend="vllm", config={"season": 7}).to_create_body()


def test_an_identical_live_workload_has_no_drift() -> None:
    assert compute_drift(make_spec(), live_workload()) == []


def test_drift_lists_fields_in_the_contract_order_with_both_values() -> None:
    spec = make_spec(
        name="Support bot v2",
        backend=Backend.VLLM,
        model="qwen2.5:7b",
        description="new",
        command="vllm serve qwen",
        worker_id="wrk_2",
        gpu_resource_id="gpu_2",
        execution_policy=ExecutionPolicy.FIXED,
        execution_policy_config={"replicas": 2},
    )
    drift = compute_drift(spec, live_workload())
    assert [item.field for item in drift] == [
        "name",
        "backend",
        "model_name",
        "description",
        "config",
        "worker_id",
        "gpu_resource_id",
        "execution_policy",
        "execution_policy_config",
    ]
    assert drift[0] == DriftItem(field="name", live="Support bot", desired="Support bot v2")
    assert drift[4] == DriftItem(field="config", live=None, desired={"command": "vllm serve qwen"})


def test_fields_the_spec_leaves_unset_never_drift() -> None:
    live = live_workload(
        description="set in the dashboard",
        config={"command": "ollama serve"},
        worker_id="wrk_1",
        gpu_resource_id="gpu_1",
        execution_policy="scheduled",
        execution_policy_config={"cron": "0 2 * * *"},
    )
    assert compute_drift(make_spec(), live) == []


def test_task_type_is_never_compared() -> None:
    assert compute_drift(make_spec(task_type=TaskType.EMBEDDING), live_workload()) == []


def test_config_is_compared_as_an_exact_json_value() -> None:
    spec = make_spec(command="vllm serve qwen", vllm_version="0.6.3")
    same = live_workload(config={"vllm_version": "0.6.3", "command": "vllm serve qwen"})
    extra_key = live_workload(
        config={"command": "vllm serve qwen", "vllm_version": "0.6.3", "port": 8000}
    )
    assert compute_drift(spec, same) == []
    assert [item.field for item in compute_drift(spec, extra_key)] == ["config"]


def test_policy_config_is_resent_when_the_policy_kind_changes() -> None:
    spec = make_spec(
        execution_policy=ExecutionPolicy.SCHEDULED,
        execution_policy_config={"cron": "0 2 * * *"},
    )
    live = live_workload(execution_policy="fixed", execution_policy_config={"cron": "0 2 * * *"})
    drift = compute_drift(spec, live)
    assert drift == [
        DriftItem(field="execution_policy", live="fixed", desired="scheduled"),
        DriftItem(
            field="execution_policy_config",
            live={"cron": "0 2 * * *"},
            desired={"cron": "0 2 * * *"},
        ),
    ]


def test_a_policy_kind_change_without_a_declared_config_sends_only_the_kind() -> None:
    spec = make_spec(execution_policy="fixed")
    live = live_workload(execution_policy="scheduled", execution_policy_config={"replicas": 1})
    assert [item.field for item in compute_drift(spec, live)] == ["execution_policy"]


def test_a_changed_policy_config_alone_drifts_alone() -> None:
    spec = make_spec(execution_policy="fixed", execution_policy_config={"replicas": 3})
    live = live_workload(execution_policy="fixed", execution_policy_config={"replicas": 1})
    assert [item.field for item in compute_drift(spec, live)] == ["execution_policy_config"]
