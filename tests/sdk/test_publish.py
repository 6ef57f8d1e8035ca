"""``publish_custom_backend`` against a real loopback HTTP server that parses the multipart
upload (with the standard library's email parser) and answers as a test scripts it."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from inferencekey import (
    ApiError,
    AuthError,
    ConfigurationError,
    PermissionDenied,
    ValidationError,
    publish_custom_backend,
)
from inferencekey.backend import package_backend
from inferencekey.errors import PackagingError

TOKEN = "ik_admin_0123abcd_" + "c" * 64
TOKEN_ENV_VARS = ("INFERENCEKEY_ADMIN_TOKEN", "INFERENCEKEY_SDK_TOKEN", "INFERENCEKEY_BASE_URL")


@dataclass
class Part:
    filename: str | None
    content_type: str
    data: bytes


@dataclass
class Upload:
    method: str
    path: str
    authorization: str | None
    parts: dict[str, Part]


@dataclass
class Registry:
    """Records each upload and answers ``status`` with ``body`` (the default: a 201 echo)."""

    url: str = ""
    status: int = 201
    body: bytes | None = None
    uploads: list[Upload] = field(default_factory=list)


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    assert message.is_multipart(), content_type
    parts = {}
    for part in message.iter_parts():
        disposition = part.get("Content-Disposition", "")
        assert disposition.startswith("form-data")
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str) and isinstance(payload, bytes)
        parts[name] = Part(part.get_filename(), part.get_content_type(), payload)
    return parts


@pytest.fixture
def registry() -> Iterator[Registry]:
    state = Registry()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            parts = parse_multipart(self.headers["Content-Type"], body)
            state.uploads.append(
                Upload("POST", self.path, self.headers.get("Authorization"), parts)
            )
            answer = state.body
            if answer is None:
                answer = json.dumps(
                    {
                        "id": "cb_1",
                        "slug": parts["slug"].data.decode(),
                        "sha256": hashlib.sha256(parts["file"].data).hexdigest(),
                    }
                ).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="registry", daemon=True
    )
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TOKEN_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "forecaster.py").write_text("class Naive: ...\n" + "# padding\r\n" * 50)
    built = package_backend(
        src,
        entrypoint="forecaster:Naive",
        name="Naive_Forecaster",
        version="0.3.1",
        out=tmp_path / "dist",
        task_type="forecast",
        requirements=["numpy"],
    )
    return built.path


def test_publish_uploads_the_manifest_fields_and_the_file(
    registry: Registry, package: Path
) -> None:
    answer = publish_custom_backend("default", package, token=TOKEN, base_url=registry.url + "/")
    sha256 = hashlib.sha256(package.read_bytes()).hexdigest()
    assert answer == {"id": "cb_1", "slug": "naive-forecaster", "sha256": sha256}
    [upload] = registry.uploads
    assert upload.path == "/api/tenants/default/custom-backends"
    assert upload.authorization == f"Bearer {TOKEN}"
    assert set(upload.parts) == {"name", "slug", "version", "task_type", "entrypoint", "file"}
    fields = {name: part.data.decode() for name, part in upload.parts.items() if name != "file"}
    assert fields == {
        "name": "Naive_Forecaster",
        "slug": "naive-forecaster",
        "version": "0.3.1",
        "task_type": "forecast",
        "entrypoint": "forecaster:Naive",
    }
    file_part = upload.parts["file"]
    assert (file_part.filename, file_part.content_type) == (
        "Naive_Forecaster-0.3.1.tar.gz",
        "application/gzip",
    )
    assert file_part.data == package.read_bytes()


def test_a_zip_package_is_sent_as_application_zip_with_slug_from_the_name(
    registry: Registry, tmp_path: Path
) -> None:
    manifest = {"name": "echo", "version": "1.0.0", "entrypoint": "echo:Echo"}
    path = tmp_path / "echo.zip"
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("manifest.json", json.dumps(manifest))
        bundle.writestr("echo.py", "class Echo: ...\n")
    publish_custom_backend("default", path, token=TOKEN, base_url=registry.url)
    [upload] = registry.uploads
    assert upload.parts["slug"].data == b"echo"
    assert upload.parts["task_type"].data == b""
    assert upload.parts["file"].content_type == "application/zip"
    assert upload.parts["file"].data == path.read_bytes()


def test_the_tenant_id_is_one_path_segment(registry: Registry, package: Path) -> None:
    publish_custom_backend("team a/b", package, token=TOKEN, base_url=registry.url)
    assert registry.uploads[0].path == "/api/tenants/team%20a%2Fb/custom-backends"


def test_token_and_base_url_come_from_the_environment(
    registry: Registry, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCEKEY_BASE_URL", registry.url)
    monkeypatch.setenv("INFERENCEKEY_ADMIN_TOKEN", "ik_admin_from_env")
    publish_custom_backend("default", package)
    monkeypatch.setenv("INFERENCEKEY_SDK_TOKEN", "ik_sdk_from_env")
    publish_custom_backend("default", package)  # the project's token wins over the operator's
    publish_custom_backend("default", package, token="explicit-token")
    assert [upload.authorization for upload in registry.uploads] == [
        "Bearer ik_admin_from_env",
        "Bearer ik_sdk_from_env",
        "Bearer explicit-token",
    ]


def test_without_a_token_nothing_is_sent(registry: Registry, package: Path) -> None:
    with pytest.raises(ConfigurationError, match="requires a token"):
        publish_custom_backend("default", package, base_url=registry.url)
    with pytest.raises(ConfigurationError, match="requires a tenant_id"):
        publish_custom_backend(" ", package, token=TOKEN, base_url=registry.url)
    assert registry.uploads == []


def test_a_package_without_a_valid_manifest_is_not_sent(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("echo.py", "")
    with pytest.raises(PackagingError, match=r"no manifest\.json"):
        publish_custom_backend("default", path, token=TOKEN, base_url=registry.url)
    assert registry.uploads == []


@pytest.mark.parametrize(
    ("status", "error_type", "reason"),
    [
        (400, ValidationError, "Bad Request"),
        (401, AuthError, "Unauthorized"),
        (403, PermissionDenied, "Forbidden"),
        (500, ApiError, "Internal Server Error"),
        (502, ApiError, "Bad Gateway"),
    ],
)
def test_an_error_answer_raises_its_typed_error(
    registry: Registry,
    package: Path,
    status: int,
    error_type: type[Exception],
    reason: str,
) -> None:
    registry.status, registry.body = status, b'{"error":"slug_taken"}'
    with pytest.raises(error_type) as raised:
        publish_custom_backend("default", package, token=TOKEN, base_url=registry.url)
    assert type(raised.value) is error_type
    assert str(raised.value) == f'{status} {reason}: {{"error":"slug_taken"}}'
    assert getattr(raised.value, "status", None) == status
    assert getattr(raised.value, "code", None) == "slug_taken"


def test_an_unreachable_manager_is_an_api_error(package: Path) -> None:
    with pytest.raises(ApiError) as raised:
        publish_custom_backend("default", package, token=TOKEN, base_url="http://127.0.0.1:9")
    assert str(raised.value).startswith(
        "could not reach http://127.0.0.1:9/api/tenants/default/custom-backends: "
    )
