"""The custom-backend registry: publishing packages, refusing bad ones, workloads on them, and
the agents' downloads (contract sections 1b, 9 and 11)."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from inferencekey import publish_custom_backend
from inferencekey.backend import BackendPackage, package_backend
from inferencekey.errors import ValidationError

from ik_command import main
from tests.support import (
    RunningManager,
    TestProject,
    bearer,
    create_live_key,
    create_sdk_token,
    own_manager,
)
from tests.test_read_sessions import Statements

ENTRYPOINT = "echo_backend:Echo"
SOURCE = """
from inferencekey.backend import CustomBackend, Job, Result


class Echo(CustomBackend):
    name = "echo"
    version = "1.0.0"

    def setup(self, ctx):
        self.prefix = ctx.config.get("prefix", "")

    def process(self, job: Job) -> Result:
        return Result({"text": self.prefix + job.text()})
"""
DIGEST_HEADER = "x-inferencekey-sha256"


def unique_name() -> str:
    return f"echo-{secrets.token_hex(4)}"


def build(
    tmp_path: Path,
    name: str,
    *,
    version: str = "1.0.0",
    task_type: str = "text2text",
    cpu_only: bool = False,
    salt: str = "",
) -> BackendPackage:
    """A real package of the Echo backend, from source written here (``salt`` changes bytes)."""
    src = tmp_path / f"src-{name}-{version}-{secrets.token_hex(2)}"
    src.mkdir()
    (src / "echo_backend.py").write_text(SOURCE + (f"# {salt}\n" if salt else ""))
    return package_backend(
        src,
        entrypoint=ENTRYPOINT,
        name=name,
        version=version,
        out=tmp_path / "dist",
        task_type=task_type,
        cpu_only=cpu_only,
        description="echoes its input",
    )


def manifest_of(name: str, **change: Any) -> bytes:
    manifest = {
        "name": name,
        "slug": name,
        "version": "1.0.0",
        "task_type": "text2text",
        "requires_python": "",
        "entrypoint": ENTRYPOINT,
        "sdk_protocol": "1",
        **change,
    }
    return json.dumps(manifest).encode()


def form_of(backend: str, **change: str) -> dict[str, str]:
    form = {
        "name": backend,
        "slug": backend,
        "version": "1.0.0",
        "task_type": "text2text",
        "entrypoint": ENTRYPOINT,
    }
    form.update(change)
    return form


def tar_gz(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A .tar.gz of files (name, bytes) and hand-made members (links and the like)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return raw.getvalue()


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def zipped(members: list[tuple[str, bytes]], *, symlink: str | None = None) -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as bundle:
        for name, data in members:
            bundle.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, "/etc/passwd")
    return raw.getvalue()


def good_files(name: str) -> list[tuple[str, bytes]]:
    return [
        ("manifest.json", manifest_of(name)),
        ("requirements.txt", b""),
        ("echo_backend.py", SOURCE.encode()),
    ]


def publish_raw(
    url: str,
    token: str | None,
    content: bytes,
    form: dict[str, str],
    *,
    tenant: str = "default",
    content_type: str = "application/gzip",
    filename: str = "package.tar.gz",
) -> httpx.Response:
    headers = bearer(token) if token else {}
    return httpx.post(
        f"{url}/api/tenants/{tenant}/custom-backends",
        data=form,
        files={"file": (filename, content, content_type)},
        headers=headers,
        timeout=30,
    )


@pytest.fixture
def registry(manager: RunningManager, admin: httpx.Client) -> Iterator[httpx.Client]:
    """The operator's client on the default tenant's registry."""
    with httpx.Client(
        base_url=f"{manager.url}/api/tenants/default/",
        headers=bearer(str(manager.admin_token)),
    ) as client:
        yield client


def published(manager: RunningManager, package: BackendPackage) -> dict[str, Any]:
    return publish_custom_backend(
        "default", package.path, token=manager.admin_token, base_url=manager.url
    )


# --- publishing ---------------------------------------------------------------------------


def test_publish_with_the_sdk_helper_answers_the_record_and_lists_it(
    manager: RunningManager, registry: httpx.Client, tmp_path: Path
) -> None:
    name = unique_name()
    package = build(tmp_path, name, task_type="forecast", cpu_only=True)

    record = published(manager, package)

    assert set(record) == {
        "id", "slug", "name", "version", "task_type", "entrypoint", "requires_python",
        "cpu_only", "sha256", "size_bytes", "created_at",
    }  # fmt: skip
    assert record["id"].startswith("cbv_") and record["slug"] == name
    assert record["sha256"] == package.sha256 and record["size_bytes"] == package.size_bytes
    assert (record["task_type"], record["entrypoint"], record["cpu_only"]) == (
        "forecast",
        ENTRYPOINT,
        True,
    )
    listed = {b["slug"]: b for b in registry.get("custom-backends").json()["custom_backends"]}
    assert listed[name]["id"] == record["id"] and listed[name]["versions"] == 1
    assert listed[name]["description"] == "echoes its input"
    shown = registry.get(f"custom-backends/{name}").json()
    assert [v["id"] for v in shown["versions"]] == [record["id"]]


def test_publish_with_raw_multipart_an_sdk_write_token_and_the_tenant_id(
    manager: RunningManager, project: TestProject, tmp_path: Path
) -> None:
    tenants = httpx.get(f"{manager.url}/api/tenants", headers=bearer(project.sdk_token)).json()
    tenant_id = tenants["tenants"][0]["id"]
    name = unique_name()
    package = build(tmp_path, name)

    answer = publish_raw(
        manager.url,
        project.sdk_token,
        package.path.read_bytes(),
        form_of(name),
        tenant=tenant_id,
    )

    assert answer.status_code == 201, answer.text
    assert answer.json()["sha256"] == package.sha256


def test_the_slug_defaults_to_the_name(manager: RunningManager, tmp_path: Path) -> None:
    name = unique_name()
    package = build(tmp_path, name)
    form = form_of(name)
    del form["slug"]

    answer = publish_raw(manager.url, manager.admin_token, package.path.read_bytes(), form)

    assert answer.status_code == 201, answer.text
    assert answer.json()["slug"] == name


def test_publishing_the_same_version_again_is_200_and_other_bytes_are_409(
    manager: RunningManager, registry: httpx.Client, tmp_path: Path
) -> None:
    name = unique_name()
    first = build(tmp_path, name)
    record = published(manager, first)

    again = publish_raw(manager.url, manager.admin_token, first.path.read_bytes(), form_of(name))
    assert again.status_code == 200, again.text
    assert again.json() == record

    other = build(tmp_path, name, salt="other bytes")
    refused = publish_raw(manager.url, manager.admin_token, other.path.read_bytes(), form_of(name))
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "version_exists"
    assert registry.get(f"custom-backends/{name}").json()["versions"][0]["sha256"] == first.sha256


def test_a_zip_package_is_accepted_and_downloads_as_zip(
    manager: RunningManager, registry: httpx.Client
) -> None:
    name = unique_name()
    content = zipped(good_files(name))

    answer = publish_raw(
        manager.url,
        manager.admin_token,
        content,
        form_of(name),
        content_type="application/zip",
        filename="package.zip",
    )

    assert answer.status_code == 201, answer.text
    assert answer.json()["sha256"] == hashlib.sha256(content).hexdigest()


HOSTILE: dict[str, tuple[Callable[[str], bytes], str]] = {
    "path traversal": (
        lambda n: tar_gz([*good_files(n), ("../escape.py", b"x")]),
        "climbs out of the archive",
    ),
    "absolute path": (
        lambda n: tar_gz([*good_files(n), ("/etc/cron.d/evil", b"x")]),
        "absolute path",
    ),
    "symlink": (
        lambda n: tar_gz([*good_files(n), link("data", "/etc/passwd", tarfile.SYMTYPE)]),
        "is a link",
    ),
    "hardlink": (
        lambda n: tar_gz([*good_files(n), link("data", "/etc/passwd", tarfile.LNKTYPE)]),
        "is a link",
    ),
    "missing manifest": (
        lambda n: tar_gz([("echo_backend.py", SOURCE.encode())]),
        "no manifest.json",
    ),
    "manifest not JSON": (
        lambda n: tar_gz([("manifest.json", b"{nope"), ("echo_backend.py", b"")]),
        "not valid JSON",
    ),
    "entrypoint module missing": (
        lambda n: tar_gz([("manifest.json", manifest_of(n))]),
        "is not in the archive",
    ),
    "another sdk protocol": (
        lambda n: tar_gz(
            [("manifest.json", manifest_of(n, sdk_protocol="2")), ("echo_backend.py", b"")]
        ),
        "sdk_protocol",
    ),
    "zip traversal": (lambda n: zipped([*good_files(n), ("../escape.py", b"x")]), "climbs out"),
    "zip symlink": (lambda n: zipped(good_files(n), symlink="data"), "is a link"),
    "not an archive": (lambda n: b"just some text, no archive at all", "not a .tar.gz or .zip"),
    "truncated gzip": (lambda n: tar_gz(good_files(n))[:60], "not a valid .tar.gz"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_bad_package_is_400_invalid_package_naming_the_fault_and_stores_nothing(
    manager: RunningManager, registry: httpx.Client, case: str
) -> None:
    make, fault = HOSTILE[case]
    name = unique_name()

    answer = publish_raw(manager.url, manager.admin_token, make(name), form_of(name))

    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "invalid_package"
    assert fault in answer.json()["message"]
    assert registry.get(f"custom-backends/{name}").status_code == 404
    assert name not in registry.get("custom-backends").text


@pytest.mark.parametrize(
    ("field", "form_value"),
    [
        ("name", "someone-else"),
        ("slug", "another-slug"),
        ("version", "9.9.9"),
        ("task_type", "embedding"),
        ("entrypoint", "other:Backend"),
    ],
)
def test_a_form_part_that_disagrees_with_the_manifest_is_400_naming_both_values(
    manager: RunningManager, registry: httpx.Client, tmp_path: Path, field: str, form_value: str
) -> None:
    name = unique_name()
    package = build(tmp_path, name)

    answer = publish_raw(
        manager.url,
        manager.admin_token,
        package.path.read_bytes(),
        form_of(name, **{field: form_value}),
    )

    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["code"] == "package_mismatch" and body["field"] == field
    declared = getattr(package.manifest, field)
    assert form_value in body["message"] and declared in body["message"]
    assert (body["form_value"], body["manifest_value"]) == (form_value, declared)
    assert registry.get(f"custom-backends/{name}").status_code == 404


def test_a_built_in_backend_name_is_refused_as_slug(manager: RunningManager) -> None:
    content = tar_gz([("manifest.json", manifest_of("vllm")), ("echo_backend.py", SOURCE.encode())])

    answer = publish_raw(manager.url, manager.admin_token, content, form_of("vllm"))

    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "slug" and "built-in" in answer.json()["message"]


def test_a_form_without_the_file_or_with_unknown_parts_is_400(manager: RunningManager) -> None:
    url = f"{manager.url}/api/tenants/default/custom-backends"
    headers = bearer(str(manager.admin_token))
    no_file = httpx.post(url, data=form_of("x"), files={"other": ("a", b"")}, headers=headers)
    assert no_file.status_code == 400 and no_file.json()["field"] == "other"
    extra = httpx.post(
        url, data={**form_of("x"), "color": "red"}, files={"file": ("p", b"")}, headers=headers
    )
    assert extra.status_code == 400 and extra.json()["field"] == "color"
    json_body = httpx.post(url, json=form_of("x"), headers=headers)
    assert json_body.status_code == 400 and "multipart/form-data" in json_body.json()["message"]
    # A part's header is a name and a filename, never megabytes held in memory.
    long_name = httpx.post(url, files={"file": ("p" * 9000, b"")}, headers=headers)
    assert long_name.status_code == 400, long_name.text
    assert "header" in long_name.json()["message"]


def test_form_parts_are_required_and_never_hold_a_credential(manager: RunningManager) -> None:
    name = unique_name()
    content = tar_gz(good_files(name))
    form = form_of(name)
    del form["entrypoint"]
    missing = publish_raw(manager.url, manager.admin_token, content, form)
    assert missing.status_code == 400 and missing.json()["field"] == "entrypoint"
    secret = "ik_live_0123abcd_" + "ab" * 32
    leaked = publish_raw(manager.url, manager.admin_token, content, form_of(name, slug=secret))
    assert leaked.status_code == 400 and leaked.json()["field"] == "slug"
    assert secret not in leaked.text


def test_a_package_over_the_limit_is_400_body_too_large_naming_it(tmp_path: Path) -> None:
    with own_manager(tmp_path / "data", custom_backend_max_bytes=4096) as small:
        name = unique_name()
        content = tar_gz(
            [*good_files(name), ("weights.bin", secrets.token_bytes(64 * 1024))]
        )  # random bytes do not compress: well over 4096
        request = httpx.Request(
            "POST",
            f"{small.url}/api/tenants/default/custom-backends",
            data=form_of(name),
            files={"file": ("p.tar.gz", content, "application/gzip")},
            headers=bearer(str(small.admin_token)),
        )
        body = request.read()
        with httpx.Client() as client:
            # With a Content-Length the Manager refuses at once; without one, while reading.
            for sent in (body, iter([body[:1000], body[1000:]])):
                answer = client.post(
                    str(request.url),
                    content=sent,
                    headers={
                        **bearer(str(small.admin_token)),
                        "content-type": request.headers["content-type"],
                    },
                )
                assert answer.status_code == 400, answer.text
                assert answer.json()["code"] == "body_too_large"
                assert "4096" in answer.json()["message"]
        fitting = tar_gz(good_files(name))
        assert len(fitting) < 4096
        answer = publish_raw(small.url, small.admin_token, fitting, form_of(name))
        assert answer.status_code == 201, answer.text
        with pytest.raises(ValidationError, match="4096"):
            big = tmp_path / "big.tar.gz"
            big.write_bytes(content)
            publish_custom_backend("default", big, token=small.admin_token, base_url=small.url)


# --- credentials and tenants --------------------------------------------------------------


@dataclass
class Credentials:
    tokens: dict[str, str | None]


@pytest.fixture
def credentials(admin: httpx.Client, project: TestProject) -> Credentials:
    worker = admin.post("/api/admin/workers", json={"project": project.slug}).json()
    return Credentials(
        {
            "admin": str(admin.headers["authorization"]).split()[1],
            "sdk": project.sdk_token,
            "read_only": create_sdk_token(admin, project.slug, read_only=True),
            "live": create_live_key(admin, project.slug),
            "agent": worker["token"],
            "none": None,
        }
    )


PUBLISH_STATUS = {
    "admin": 201,
    "sdk": 201,
    "read_only": 403,
    "live": 403,
    "agent": 403,
    "none": 401,
}


@pytest.mark.parametrize("credential", sorted(PUBLISH_STATUS))
def test_who_may_publish(
    manager: RunningManager, credentials: Credentials, tmp_path: Path, credential: str
) -> None:
    name = unique_name()
    package = build(tmp_path, name)

    answer = publish_raw(
        manager.url, credentials.tokens[credential], package.path.read_bytes(), form_of(name)
    )

    assert answer.status_code == PUBLISH_STATUS[credential], answer.text
    expected_code = {
        "read_only": "scope_insufficient",
        "live": "wrong_credential_type",
        "agent": "wrong_credential_type",
        "none": "invalid_credentials",
    }.get(credential)
    if expected_code:
        assert answer.json()["code"] == expected_code


def test_get_tenants_tells_the_id_to_admin_and_sdk_tokens_only(
    manager: RunningManager, credentials: Credentials
) -> None:
    def tenants(credential: str) -> httpx.Response:
        token = credentials.tokens[credential]
        return httpx.get(f"{manager.url}/api/tenants", headers=bearer(token) if token else {})

    for credential in ("admin", "sdk", "read_only"):
        answer = tenants(credential)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"tenants": [{"id": "ten_default", "name": "default"}]}
    assert tenants("live").json()["code"] == "wrong_credential_type"
    assert tenants("agent").json()["code"] == "wrong_credential_type"
    assert tenants("none").status_code == 401


def test_another_tenant_is_404_tenant_not_found(
    manager: RunningManager, credentials: Credentials, tmp_path: Path
) -> None:
    name = unique_name()
    package = build(tmp_path, name)
    for credential in ("admin", "sdk"):
        token = credentials.tokens[credential]
        answer = publish_raw(
            manager.url, token, package.path.read_bytes(), form_of(name), tenant="ten_other"
        )
        assert answer.status_code == 404, answer.text
        assert answer.json()["code"] == "tenant_not_found"
        listing = httpx.get(
            f"{manager.url}/api/tenants/ten_other/custom-backends", headers=bearer(str(token))
        )
        assert listing.json()["code"] == "tenant_not_found"


def test_reading_takes_a_read_only_token_and_deleting_a_write_token(
    manager: RunningManager, credentials: Credentials, tmp_path: Path
) -> None:
    name = unique_name()
    published(manager, build(tmp_path, name))
    base = f"{manager.url}/api/tenants/default/custom-backends"
    read_only = bearer(str(credentials.tokens["read_only"]))

    assert httpx.get(base, headers=read_only).status_code == 200
    assert httpx.get(f"{base}/{name}", headers=read_only).status_code == 200
    refused = httpx.delete(f"{base}/{name}", headers=read_only)
    assert refused.json()["code"] == "scope_insufficient"
    live = httpx.get(base, headers=bearer(str(credentials.tokens["live"])))
    assert live.json()["code"] == "wrong_credential_type"
    deleted = httpx.delete(f"{base}/{name}", headers=bearer(str(credentials.tokens["sdk"])))
    assert deleted.status_code == 204


# --- workloads on custom backends ---------------------------------------------------------


def workload_spec(backend: str, **change: Any) -> dict[str, Any]:
    return {
        "name": f"wl-{secrets.token_hex(3)}",
        "backend": backend,
        "model_name": "my-model",
        "task_type": "text2text",
        **change,
    }


def create(api: httpx.Client, project: TestProject, spec: dict[str, Any]) -> httpx.Response:
    return api.post(f"/api/projects/{project.slug}/workloads", json=spec)


def test_a_workload_may_name_a_custom_backend_of_its_task_type(
    manager: RunningManager, api: httpx.Client, project: TestProject, tmp_path: Path
) -> None:
    name = unique_name()
    published(manager, build(tmp_path, name, task_type="forecast"))
    config = {"prefix": ">> ", "quantiles": [0.1, 0.9]}

    created = create(api, project, workload_spec(name, task_type="forecast", config=config))

    assert created.status_code == 201, created.text
    assert created.json()["backend"] == name and created.json()["config"] == config
    mismatch = create(api, project, workload_spec(name, task_type="text2text"))
    assert mismatch.status_code == 400 and mismatch.json()["code"] == "backend_not_allowed"
    assert "'forecast'" in mismatch.json()["message"]


def test_a_create_on_a_custom_backend_keeps_its_transaction(
    manager: RunningManager, api: httpx.Client, project: TestProject, tmp_path: Path
) -> None:
    """Its backend's row stays locked until the workload is written (a built-in backend's
    create is one statement in autocommit: tests/test_read_sessions.py)."""
    name = unique_name()
    published(manager, build(tmp_path, name))
    statements = Statements(manager)
    try:
        created = create(api, project, workload_spec(name))
        assert created.status_code == 201, created.text
        assert statements.committed().transactions == ["BEGIN", "COMMIT"]
        assert any("FOR KEY SHARE" in query for query in statements.sent), statements.sent
    finally:
        statements.close()


def test_a_custom_backend_without_a_task_type_serves_any(
    manager: RunningManager, api: httpx.Client, project: TestProject, tmp_path: Path
) -> None:
    name = unique_name()
    published(manager, build(tmp_path, name, task_type=""))

    for task_type in ("classification", "reward", "embedding"):
        created = create(api, project, workload_spec(name, task_type=task_type))
        assert created.status_code == 201, created.text


def test_an_unknown_backend_lists_the_built_ins_and_the_tenant_custom_backends(
    manager: RunningManager, api: httpx.Client, project: TestProject, tmp_path: Path
) -> None:
    name = unique_name()
    published(manager, build(tmp_path, name))

    answer = create(api, project, workload_spec("no-such-backend"))

    assert answer.status_code == 400 and answer.json()["code"] == "unknown_backend"
    assert "vllm" in answer.json()["message"] and name in answer.json()["message"]


def test_a_command_does_not_apply_to_a_custom_backend(
    manager: RunningManager, api: httpx.Client, project: TestProject, tmp_path: Path
) -> None:
    name = unique_name()
    published(manager, build(tmp_path, name))

    answer = create(api, project, workload_spec(name, config={"command": "python serve.py"}))

    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "config.command"
    assert "IK_BACKEND_CONFIG" in answer.json()["message"]


def test_delete_is_refused_while_a_live_workload_uses_the_backend(
    manager: RunningManager,
    api: httpx.Client,
    project: TestProject,
    registry: httpx.Client,
    tmp_path: Path,
) -> None:
    name = unique_name()
    published(manager, build(tmp_path, name))
    workload = create(api, project, workload_spec(name)).json()

    refused = registry.delete(f"custom-backends/{name}")

    assert refused.status_code == 409 and refused.json()["code"] == "backend_in_use"
    assert f"{project.slug}/{workload['slug']}" in refused.json()["message"]
    assert api.delete(f"/api/workloads/{workload['id']}").status_code == 204
    assert registry.delete(f"custom-backends/{name}").status_code == 204
    assert registry.get(f"custom-backends/{name}").json()["code"] == "custom_backend_not_found"
    assert registry.delete(f"custom-backends/{name}").status_code == 404
    again = create(api, project, workload_spec(name))
    assert again.json()["code"] == "unknown_backend"


def test_a_new_version_rolls_the_workloads_using_the_backend(
    manager: RunningManager, api: httpx.Client, project: TestProject, tmp_path: Path
) -> None:
    name = unique_name()
    published(manager, build(tmp_path, name))
    workload = create(api, project, workload_spec(name)).json()
    assert workload["generation"] == 1

    second = published(manager, build(tmp_path, name, version="2.0.0"))

    rolled = api.get(f"/api/workloads/{workload['id']}").json()
    assert rolled["generation"] == 2
    messages = [
        e["message"] for e in api.get(f"/api/workloads/{workload['id']}/events").json()["events"]
    ]
    assert any(f"{name} version 2.0.0 published" in m for m in messages)
    assert second["version"] == "2.0.0"


def test_a_new_version_may_not_change_the_task_type_of_its_workloads(
    manager: RunningManager, api: httpx.Client, project: TestProject, tmp_path: Path
) -> None:
    name = unique_name()
    published(manager, build(tmp_path, name))
    workload = create(api, project, workload_spec(name)).json()

    answer = publish_raw(
        manager.url,
        manager.admin_token,
        build(tmp_path, name, version="2.0.0", task_type="forecast").path.read_bytes(),
        form_of(name, version="2.0.0", task_type="forecast"),
    )

    assert answer.status_code == 409 and answer.json()["code"] == "backend_in_use"
    assert answer.json()["workloads"] == [f"{project.slug}/{workload['slug']}"]


# --- placement, assignments and the agent's download --------------------------------------


def heartbeat(manager: RunningManager, token: str, gpus: int) -> dict[str, Any]:
    inventory = {
        "source": "simulated",
        "hostname": "custom-host",
        "gpus": [
            {"index": i, "uuid": f"GPU-{token[9:17]}-{i}", "name": "Sim", "memory_total_mb": 16384}
            for i in range(gpus)
        ],
    }
    answer = httpx.post(
        f"{manager.url}/api/agent/heartbeat", json={"inventory": inventory}, headers=bearer(token)
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def assigned(
    manager: RunningManager, token: str, gpus: int, want: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Heartbeat (so the worker stays ready) until an assigned replica passes ``want``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for replica in heartbeat(manager, token, gpus)["replicas"]:
            if want(replica):
                return replica
        time.sleep(0.3)
    raise AssertionError("no such replica was assigned")


@pytest.fixture
def worker_token(admin: httpx.Client, project: TestProject) -> str:
    created = admin.post("/api/admin/workers", json={"project": project.slug, "name": "cb-host"})
    assert created.status_code == 201, created.text
    return str(created.json()["token"])


def test_a_replica_carries_its_package_and_the_agent_downloads_the_exact_bytes(
    manager: RunningManager,
    api: httpx.Client,
    project: TestProject,
    worker_token: str,
    tmp_path: Path,
) -> None:
    name = unique_name()
    package = build(tmp_path, name)
    record = published(manager, package)
    config = {"prefix": "> "}
    heartbeat(manager, worker_token, gpus=1)
    workload = create(
        api,
        project,
        workload_spec(
            name,
            config=config,
            execution_policy="fixed",
            execution_policy_config={"replicas": 1},
        ),
    ).json()

    replica = assigned(manager, worker_token, 1, lambda r: r["workload_id"] == workload["id"])

    assert replica["backend"] == name and replica["command"] is None
    assert replica["custom_backend"] == {
        "id": record["id"],
        "slug": name,
        "version": "1.0.0",
        "sha256": package.sha256,
        "size_bytes": package.size_bytes,
        "entrypoint": ENTRYPOINT,
        "requires_python": "",
        "task_type": "text2text",
        "cpu_only": False,
        "config": config,
    }
    assert len(replica["gpu_uuids"]) == 1  # placed like llama.cpp: memory on one GPU
    download = httpx.get(
        f"{manager.url}/api/agent/custom-backends/{record['id']}/package",
        headers=bearer(worker_token),
    )
    assert download.status_code == 200, download.text
    assert download.content == package.path.read_bytes()
    assert download.headers[DIGEST_HEADER] == package.sha256
    assert download.headers["content-type"] == "application/gzip"
    assert int(download.headers["content-length"]) == package.size_bytes


def test_a_cpu_only_backend_claims_no_gpu_and_a_new_version_rolls_its_replicas(
    manager: RunningManager,
    api: httpx.Client,
    project: TestProject,
    worker_token: str,
    tmp_path: Path,
) -> None:
    name = unique_name()
    published(manager, build(tmp_path, name, cpu_only=True))
    heartbeat(manager, worker_token, gpus=1)
    workload = create(api, project, workload_spec(name, execution_policy="fixed")).json()
    first = assigned(manager, worker_token, 1, lambda r: r["workload_id"] == workload["id"])
    assert first["gpu_uuids"] == [] and first["claim_memory_mb"] == 0

    second = published(manager, build(tmp_path, name, version="1.1.0", cpu_only=True))

    rolled = assigned(
        manager,
        worker_token,
        1,
        lambda r: (r.get("custom_backend") or {}).get("id") == second["id"],
    )
    assert rolled["id"] != first["id"] and rolled["generation"] == 2


def test_the_package_download_is_the_agents_alone(
    manager: RunningManager, credentials: Credentials, tmp_path: Path
) -> None:
    record = published(manager, build(tmp_path, unique_name()))
    url = f"{manager.url}/api/agent/custom-backends/{record['id']}/package"

    def download(credential: str, at: str = url) -> httpx.Response:
        token = credentials.tokens[credential]
        return httpx.get(at, headers=bearer(token) if token else {})

    for credential in ("admin", "sdk", "live"):
        assert download(credential).json()["code"] == "wrong_credential_type"
    assert download("none").status_code == 401
    # An agent gets only the packages of the replicas its worker must run (the test above
    # downloads one); this worker runs none of this backend.
    foreign = download("agent")
    assert foreign.status_code == 404 and foreign.json()["code"] == "package_not_found"
    unknown = download("agent", url.replace(record["id"], "cbv_nosuchversion"))
    assert unknown.status_code == 404 and unknown.json()["code"] == "package_not_found"


# --- the command line ---------------------------------------------------------------------


def test_the_cli_lists_shows_and_deletes_backends_and_prints_the_tenant(
    manager: RunningManager, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*argv: str) -> tuple[int, str]:
        connection = ["--base-url", manager.url, "--admin-token", str(manager.admin_token)]
        code = main([*argv, *connection])
        return code, capsys.readouterr().out

    name = unique_name()
    record = published(manager, build(tmp_path, name))

    assert run("tenant") == (0, "ten_default\n")
    code, out = run("backends", "list")
    assert code == 0 and name in out and "1.0.0" in out
    code, out = run("backends", "show", name, "--json")
    assert code == 0 and json.loads(out)["versions"][0]["id"] == record["id"]
    code, out = run("backends", "show", name)
    assert code == 0 and record["id"] in out
    assert run("backends", "delete", name)[0] == 0
    assert run("backends", "show", name)[0] == 1
