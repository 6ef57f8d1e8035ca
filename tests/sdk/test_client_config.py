"""Client configuration: env precedence and the checks that refuse to send a request.

Clients here point at ``http://127.0.0.1:9`` (discard port, nothing listens): a request
there fails as a network ``ApiError``, so any other error type proves nothing was sent.
"""

from __future__ import annotations

import pytest
from inferencekey import (
    ApiError,
    AsyncManagementClient,
    Backend,
    ConfigurationError,
    ManagementClient,
    OnDrift,
    PermissionDenied,
    ValidationError,
    WorkloadSpec,
)

UNREACHABLE = "http://127.0.0.1:9"
SDK_TOKEN = "ik_sdk_0123abcd_" + "a" * 64
LIVE_KEY = "ik_live_89abcdef_" + "b" * 64
ENV_VARS = (
    "INFERENCEKEY_BASE_URL",
    "INFERENCEKEY_PROJECT",
    "INFERENCEKEY_SDK_TOKEN",
    "INFERENCEKEY_API_KEY",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def spec(**overrides: object) -> WorkloadSpec:
    fields: dict[str, object] = {
        "name": "Support bot",
        "slug": "support-bot",
        "model": "qwen2.5:0.5b",
        "backend": Backend.OLLAMA,
    }
    fields.update(overrides)
    return WorkloadSpec(**fields)  # type: ignore[arg-type]


def unreachable_client(project: str | None = "acme") -> ManagementClient:
    return ManagementClient(base_url=UNREACHABLE, sdk_token=SDK_TOKEN, project=project)


def test_from_env_reads_base_url_project_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCEKEY_BASE_URL", "http://manager.internal:8080/")
    monkeypatch.setenv("INFERENCEKEY_PROJECT", "acme")
    monkeypatch.setenv("INFERENCEKEY_SDK_TOKEN", SDK_TOKEN)
    with ManagementClient.from_env() as mgmt:
        assert mgmt.base_url == "http://manager.internal:8080"
        assert mgmt.project == "acme"


def test_explicit_arguments_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCEKEY_BASE_URL", "http://from-env:1")
    monkeypatch.setenv("INFERENCEKEY_PROJECT", "env-project")
    monkeypatch.setenv("INFERENCEKEY_SDK_TOKEN", LIVE_KEY)
    with ManagementClient.from_env(
        base_url="http://explicit:2", project="explicit-project", sdk_token=SDK_TOKEN
    ) as mgmt:
        assert mgmt.base_url == "http://explicit:2"
        assert mgmt.project == "explicit-project"


def test_blank_env_values_count_as_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCEKEY_BASE_URL", "   ")
    monkeypatch.setenv("INFERENCEKEY_PROJECT", "")
    with ManagementClient.from_env(sdk_token=SDK_TOKEN) as mgmt:
        assert mgmt.base_url == "https://api.inferencekey.com"
        assert mgmt.project is None


def test_env_values_are_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCEKEY_PROJECT", "  acme \n")
    monkeypatch.setenv("INFERENCEKEY_SDK_TOKEN", f" {SDK_TOKEN}\n")
    with ManagementClient.from_env() as mgmt:
        assert mgmt.project == "acme"


def test_a_falsy_explicit_value_falls_through_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCEKEY_BASE_URL", "http://from-env:1")
    monkeypatch.setenv("INFERENCEKEY_PROJECT", "env-project")
    monkeypatch.setenv("INFERENCEKEY_SDK_TOKEN", SDK_TOKEN)
    with ManagementClient.from_env(base_url="", project="", sdk_token="") as mgmt:
        assert mgmt.base_url == "http://from-env:1"
        assert mgmt.project == "env-project"


def test_management_client_never_reads_the_data_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCEKEY_API_KEY", SDK_TOKEN)
    with pytest.raises(ConfigurationError) as caught:
        ManagementClient.from_env(project="acme")
    assert str(caught.value) == "ManagementClient requires an ik_sdk_ token."


async def test_async_client_reads_the_same_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCEKEY_BASE_URL", "http://manager.internal:8080")
    monkeypatch.setenv("INFERENCEKEY_PROJECT", "acme")
    monkeypatch.setenv("INFERENCEKEY_SDK_TOKEN", SDK_TOKEN)
    async with AsyncManagementClient.from_env() as mgmt:
        assert (mgmt.base_url, mgmt.project) == ("http://manager.internal:8080", "acme")


@pytest.mark.parametrize("client_class", [ManagementClient, AsyncManagementClient])
def test_empty_token_is_a_configuration_error(client_class: type) -> None:
    with pytest.raises(ConfigurationError) as caught:
        client_class(base_url=UNREACHABLE, sdk_token="")
    assert str(caught.value) == "ManagementClient requires an ik_sdk_ token."


@pytest.mark.parametrize("client_class", [ManagementClient, AsyncManagementClient])
def test_live_key_given_to_management_client_is_wrong_credential_type(client_class: type) -> None:
    with pytest.raises(PermissionDenied) as caught:
        client_class(base_url=UNREACHABLE, sdk_token=LIVE_KEY)
    assert caught.value.code == "wrong_credential_type"
    assert str(caught.value) == (
        "permission denied [wrong_credential_type]: ik_live_89abcdef… is a data key; "
        "the management plane requires an ik_sdk_ token"
    )
    assert "b" * 64 not in str(caught.value)


@pytest.mark.parametrize(
    ("token", "shown"),
    [
        ("ik_admin_0123abcd_" + "c" * 64, "ik_admin_0123abcd…"),
        ("sk-proj-" + "d" * 40, "ik…"),
        ("ik_agent_deadbeef_" + "e" * 64, "ik_agent_deadbeef…"),
    ],
)
def test_a_non_sdk_token_is_a_configuration_error_showing_only_its_prefix(
    token: str, shown: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ManagementClient(base_url=UNREACHABLE, sdk_token=token)
    assert str(caught.value) == f"{shown} is not an ik_sdk_ management token"
    assert token not in str(caught.value)


def test_the_token_never_appears_in_the_client_repr() -> None:
    with unreachable_client() as mgmt:
        assert "a" * 64 not in repr(mgmt)
        assert "ik_sdk_0123abcd…" in repr(mgmt)


def test_base_url_must_be_http() -> None:
    with pytest.raises(ConfigurationError):
        ManagementClient(base_url="manager.internal:8080", sdk_token=SDK_TOKEN)


def test_an_unreachable_manager_is_a_network_api_error() -> None:
    with unreachable_client() as mgmt, pytest.raises(ApiError) as caught:
        mgmt.list()
    assert str(caught.value).startswith("network error: ")
    assert "a" * 64 not in str(caught.value)


def test_ensure_without_any_project_is_a_configuration_error_before_any_request() -> None:
    with unreachable_client(project=None) as mgmt, pytest.raises(ConfigurationError) as caught:
        mgmt.ensure(spec())
    assert str(caught.value) == (
        "No project configured. Set INFERENCEKEY_PROJECT, pass project=, or set spec.project."
    )


@pytest.mark.parametrize("call", ["delete", "get"])
def test_delete_and_get_without_a_project_are_configuration_errors(call: str) -> None:
    with unreachable_client(project=None) as mgmt, pytest.raises(ConfigurationError) as caught:
        getattr(mgmt, call)("support-bot")
    assert str(caught.value) == "No project configured. Set INFERENCEKEY_PROJECT or pass project=."


def test_list_without_a_project_is_a_configuration_error() -> None:
    with unreachable_client(project=None) as mgmt, pytest.raises(ConfigurationError):
        mgmt.list()


def test_ensure_checks_the_spec_before_any_request() -> None:
    with unreachable_client() as mgmt, pytest.raises(ValidationError) as caught:
        mgmt.ensure(spec(model=" "))
    assert str(caught.value) == "validation error: model must not be empty"


def test_ensure_refuses_a_secret_in_the_spec_before_any_request() -> None:
    with unreachable_client() as mgmt, pytest.raises(ConfigurationError):
        mgmt.ensure(spec(command=f"vllm serve m --api-key {LIVE_KEY}"))


def test_an_unknown_on_drift_is_a_validation_error_before_any_request() -> None:
    with unreachable_client() as mgmt, pytest.raises(ValidationError) as caught:
        mgmt.ensure(spec(), on_drift="explode")
    assert str(caught.value) == "unknown on_drift: explode"


@pytest.mark.parametrize("on_drift", ["", "reconcile", "dry_run", OnDrift.FAIL])
def test_on_drift_accepts_the_enum_its_value_or_empty(on_drift: OnDrift | str) -> None:
    # Accepted values get as far as the network, which is unreachable here.
    with unreachable_client() as mgmt, pytest.raises(ApiError, match=r"^network error: "):
        mgmt.ensure(spec(), on_drift=on_drift)


async def test_async_ensure_runs_the_same_local_checks() -> None:
    async with AsyncManagementClient(base_url=UNREACHABLE, sdk_token=SDK_TOKEN) as mgmt:
        with pytest.raises(ValidationError, match="name must not be empty"):
            await mgmt.ensure(spec(name=""), project="acme")


async def test_async_client_without_a_project_refuses_to_delete() -> None:
    async with AsyncManagementClient(base_url=UNREACHABLE, sdk_token=SDK_TOKEN) as mgmt:
        with pytest.raises(ConfigurationError):
            await mgmt.delete("support-bot")


async def test_an_unreachable_manager_is_a_network_api_error_for_the_async_client() -> None:
    async with AsyncManagementClient(base_url=UNREACHABLE, sdk_token=SDK_TOKEN) as mgmt:
        with pytest.raises(ApiError, match=r"^network error: "):
            await mgmt.list(project="acme")
