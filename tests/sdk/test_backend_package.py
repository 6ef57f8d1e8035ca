"""Custom-backend packages: ``package_backend`` (layout, determinism, refusals), the package
command, and ``read_manifest_from_archive`` on good and hostile archives built here."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from inferencekey.backend import (
    BackendManifest,
    archive_format,
    package_backend,
    read_manifest_from_archive,
)
from inferencekey.errors import BackendError, PackagingError

BACKEND_SOURCE = (
    "from inferencekey.backend import CustomBackend\n\nclass Echo(CustomBackend): ...\n"
)
MANIFEST: dict[str, Any] = {
    "name": "echo",
    "slug": "echo",
    "version": "1.0.0",
    "task_type": "text2text",
    "requires_python": ">=3.10",
    "entrypoint": "echo_backend:Echo",
    "sdk_protocol": "1",
}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A backend directory: a module, a subpackage, and the byte-code a run leaves behind."""
    root = tmp_path / "src"
    (root / "helpers" / "__pycache__").mkdir(parents=True)
    (root / "echo_backend.py").write_text(BACKEND_SOURCE)
    (root / "helpers" / "__init__.py").write_text("")
    (root / "helpers" / "tokens.py").write_text("SPLIT = ' '\n")
    (root / "helpers" / "__pycache__" / "tokens.cpython-311.pyc").write_bytes(b"\x00bytecode")
    (root / "stale.pyc").write_bytes(b"\x00bytecode")
    (root / "weights.json").write_text("{}")
    return root


def build(src: Path, out: Path, **overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "entrypoint": "echo_backend:Echo",
        "name": "echo",
        "version": "1.0.0",
        "out": out,
        "task_type": "text2text",
    }
    arguments.update(overrides)
    return package_backend(src, **arguments)


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return {info.name: info for info in tar.getmembers()}


def read_member(path: Path, name: str) -> bytes:
    with tarfile.open(path, "r:gz") as tar:
        stream = tar.extractfile(name)
        assert stream is not None
        return stream.read()


# --- package_backend ------------------------------------------------------------------------------


def test_a_directory_package_has_manifest_requirements_and_the_code_at_its_root(
    src: Path, tmp_path: Path
) -> None:
    package = build(src, tmp_path / "dist", requirements=["numpy>=1.26", "", "  torch  "])
    assert package.path == tmp_path / "dist" / "echo-1.0.0.tar.gz"
    assert list(members(package.path)) == [
        "echo_backend.py",
        "helpers/__init__.py",
        "helpers/tokens.py",
        "manifest.json",
        "requirements.txt",
        "weights.json",
    ]
    assert read_member(package.path, "requirements.txt") == b"numpy>=1.26\ntorch\n"
    assert read_member(package.path, "echo_backend.py") == BACKEND_SOURCE.encode()
    assert json.loads(read_member(package.path, "manifest.json")) == {
        "name": "echo",
        "slug": "echo",
        "version": "1.0.0",
        "task_type": "text2text",
        "requires_python": "",
        "entrypoint": "echo_backend:Echo",
        "sdk_protocol": "1",
    }
    assert package.size_bytes == package.path.stat().st_size
    assert package.manifest == read_manifest_from_archive(package.path)


def test_a_single_file_package_has_the_file_at_its_root_and_empty_requirements(
    src: Path, tmp_path: Path
) -> None:
    package = build(src / "echo_backend.py", tmp_path / "dist")
    assert sorted(members(package.path)) == ["echo_backend.py", "manifest.json", "requirements.txt"]
    assert read_member(package.path, "requirements.txt") == b""


def test_requirements_come_from_a_file_or_the_src_root(src: Path, tmp_path: Path) -> None:
    listed = tmp_path / "reqs.txt"
    listed.write_text("pandas==2.2.0\n")
    from_file = build(src, tmp_path / "a", requirements=listed)
    assert read_member(from_file.path, "requirements.txt") == b"pandas==2.2.0\n"
    (src / "requirements.txt").write_text("scipy\n")
    from_src = build(src, tmp_path / "b")
    assert read_member(from_src.path, "requirements.txt") == b"scipy\n"


def test_members_have_fixed_times_owners_and_modes(src: Path, tmp_path: Path) -> None:
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    infos = members(build(src, tmp_path / "dist").path)
    assert {
        (info.mtime, info.uid, info.gid, info.uname, info.gname) for info in infos.values()
    } == {(315_532_800, 0, 0, "", "")}
    assert infos["run.sh"].mode == 0o755
    assert infos["echo_backend.py"].mode == 0o644
    assert all(info.isreg() for info in infos.values())


def test_the_same_source_gives_the_same_sha256(src: Path, tmp_path: Path) -> None:
    first = build(src, tmp_path / "one")
    for path in src.rglob("*"):
        os.utime(path, (1_900_000_000, 1_900_000_000))
    second = build(src, tmp_path / "two")
    assert first.sha256 == second.sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    (src / "echo_backend.py").write_text(BACKEND_SOURCE + "# changed\n")
    assert build(src, tmp_path / "three").sha256 != first.sha256


def test_an_out_directory_inside_src_is_not_packed(src: Path) -> None:
    first = build(src, src / "dist")
    second = build(src, src / "dist")
    assert first.sha256 == second.sha256
    assert not any(name.startswith("dist") for name in members(second.path))


def test_slug_defaults_to_the_name_canonicalised(src: Path, tmp_path: Path) -> None:
    assert build(src, tmp_path / "a", name="Echo_Bot").manifest.slug == "echo-bot"
    assert build(src, tmp_path / "b", slug="my-echo").manifest.slug == "my-echo"


def test_description_and_cpu_only_are_written_when_set(src: Path, tmp_path: Path) -> None:
    package = build(src, tmp_path / "dist", description="Says it back", cpu_only=True)
    manifest = json.loads(read_member(package.path, "manifest.json"))
    assert (manifest["description"], manifest["cpu_only"]) == ("Says it back", True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"entrypoint": "echo_backend.Echo"}, "must look like 'module:Class'"),
        ({"entrypoint": "echo-backend:Echo"}, "must look like 'module:Class'"),
        ({"entrypoint": "missing:Echo"}, "entrypoint module 'missing' is not in src"),
        ({"entrypoint": "helpers.nope:Echo"}, "expected helpers/nope.py or helpers/nope/__init__"),
        ({"name": "bad name"}, "name 'bad name' must be"),
        ({"name": "../escape"}, "name '../escape' must be"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"version": "1.0/2"}, "version '1.0/2' must be"),
        ({"version": ""}, "version must be a non-empty string"),
        ({"slug": "Not A Slug"}, "slug 'Not A Slug' must be"),
        ({"task_type": "text2video"}, "task_type 'text2video' is not one of"),
        ({"requires_python": "python3"}, "requires_python 'python3' is not a PEP 440"),
    ],
)
def test_package_backend_refuses_bad_arguments(
    src: Path, tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(PackagingError) as raised:
        build(src, tmp_path / "dist", **overrides)
    assert message in str(raised.value)
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_a_missing_src_is_a_packaging_error(tmp_path: Path) -> None:
    with pytest.raises(PackagingError, match="does not exist"):
        build(tmp_path / "nowhere", tmp_path / "dist")


def test_src_holding_a_manifest_or_a_link_is_refused(src: Path, tmp_path: Path) -> None:
    (src / "manifest.json").write_text("{}")
    with pytest.raises(PackagingError, match=r"must not hold a manifest\.json"):
        build(src, tmp_path / "dist")
    (src / "manifest.json").unlink()
    (src / "link.py").symlink_to(src / "echo_backend.py")
    with pytest.raises(PackagingError, match="link"):
        build(src, tmp_path / "dist")


def test_requirements_in_src_and_as_an_argument_conflict(src: Path, tmp_path: Path) -> None:
    (src / "requirements.txt").write_text("scipy\n")
    with pytest.raises(PackagingError, match="keep one of them"):
        build(src, tmp_path / "dist", requirements=["numpy"])


def test_a_single_file_src_must_be_python(src: Path, tmp_path: Path) -> None:
    with pytest.raises(PackagingError, match=r"single \.py file"):
        build(src / "weights.json", tmp_path / "dist")


def test_packaging_error_is_a_backend_error() -> None:
    assert issubclass(PackagingError, BackendError)


# --- read_manifest_from_archive on archives built by hand -----------------------------------------


def tar_gz(path: Path, *entries: tarfile.TarInfo | tuple[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def zip_file(path: Path, *entries: tuple[str, bytes] | tuple[zipfile.ZipInfo, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries:
            bundle.writestr(name, data)
    return path


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


MANIFEST_ENTRY = ("manifest.json", json.dumps(MANIFEST).encode())
CODE_ENTRY = ("echo_backend.py", BACKEND_SOURCE.encode())


def test_a_hand_made_zip_reads_like_a_tar_gz(tmp_path: Path) -> None:
    path = zip_file(tmp_path / "echo.zip", MANIFEST_ENTRY, CODE_ENTRY, ("requirements.txt", b""))
    assert read_manifest_from_archive(path) == BackendManifest.from_dict(MANIFEST)
    assert archive_format(path) == "zip"


def test_the_kind_is_told_by_content_not_by_name(tmp_path: Path) -> None:
    path = tar_gz(tmp_path / "package.zip", MANIFEST_ENTRY, CODE_ENTRY)
    assert archive_format(path) == "tar.gz"
    assert read_manifest_from_archive(path).name == "echo"


def test_members_under_dot_slash_are_at_the_root(tmp_path: Path) -> None:
    directory = tarfile.TarInfo("./")
    directory.type = tarfile.DIRTYPE
    path = tar_gz(
        tmp_path / "p.tar.gz", directory, ("./manifest.json", MANIFEST_ENTRY[1]), CODE_ENTRY
    )
    assert read_manifest_from_archive(path).entrypoint == "echo_backend:Echo"


def test_a_missing_slug_falls_back_to_the_name(tmp_path: Path) -> None:
    manifest = {key: value for key, value in MANIFEST.items() if key != "slug"}
    path = zip_file(
        tmp_path / "p.zip", ("manifest.json", json.dumps(manifest).encode()), CODE_ENTRY
    )
    assert read_manifest_from_archive(path).slug == "echo"


def test_an_open_binary_file_reads_like_a_path_and_stays_open(src: Path, tmp_path: Path) -> None:
    package = build(src, tmp_path / "dist")
    with tempfile.SpooledTemporaryFile() as upload:  # what a web framework hands an upload as
        upload.write(package.path.read_bytes())
        assert read_manifest_from_archive(upload) == package.manifest
        assert archive_format(upload) == "tar.gz"
        assert not upload.closed
    hostile = zip_file(tmp_path / "p.zip", MANIFEST_ENTRY, CODE_ENTRY, ("../x.py", b""))
    with pytest.raises(PackagingError, match="the package"):
        read_manifest_from_archive(io.BytesIO(b"plain text"))
    with pytest.raises(PackagingError, match="climbs out"):
        read_manifest_from_archive(io.BytesIO(hostile.read_bytes()))


HOSTILE_TARS: dict[str, tuple[Callable[[], list[Any]], str]] = {
    "traversal": (lambda: [MANIFEST_ENTRY, CODE_ENTRY, ("../evil.py", b"x")], "climbs out"),
    "deep traversal": (
        lambda: [MANIFEST_ENTRY, CODE_ENTRY, ("lib/../../evil.py", b"x")],
        "climbs out",
    ),
    "absolute path": (lambda: [MANIFEST_ENTRY, CODE_ENTRY, ("/etc/cron.d/x", b"x")], "absolute"),
    "symlink": (
        lambda: [MANIFEST_ENTRY, CODE_ENTRY, link("data", "/etc/passwd", tarfile.SYMTYPE)],
        "is a link",
    ),
    "hardlink": (
        lambda: [MANIFEST_ENTRY, CODE_ENTRY, link("data", "/etc/passwd", tarfile.LNKTYPE)],
        "is a link",
    ),
    "fifo": (
        lambda: [MANIFEST_ENTRY, CODE_ENTRY, link("pipe", "", tarfile.FIFOTYPE)],
        "not a regular file or directory",
    ),
    "backslash": (lambda: [MANIFEST_ENTRY, CODE_ENTRY, ("..\\evil.py", b"x")], "backslash"),
    "missing manifest": (lambda: [CODE_ENTRY], "has no manifest.json at its root"),
    "nested manifest only": (
        lambda: [("pkg/manifest.json", MANIFEST_ENTRY[1]), CODE_ENTRY],
        "has no manifest.json at its root",
    ),
    "two manifests": (lambda: [MANIFEST_ENTRY, CODE_ENTRY, MANIFEST_ENTRY], "twice"),
    "huge manifest": (
        lambda: [("manifest.json", b" " * (64 * 1024) + b"{}"), CODE_ENTRY],
        "larger than 65536 bytes",
    ),
    "manifest not json": (lambda: [("manifest.json", b"name: echo"), CODE_ENTRY], "not valid JSON"),
    "manifest not an object": (lambda: [("manifest.json", b"[]"), CODE_ENTRY], "JSON object"),
    "manifest without entrypoint": (
        lambda: [("manifest.json", json.dumps({"name": "echo", "version": "1"}).encode())],
        "entrypoint must be a non-empty string",
    ),
    "unknown protocol": (
        lambda: [
            ("manifest.json", json.dumps({**MANIFEST, "sdk_protocol": "2"}).encode()),
            CODE_ENTRY,
        ],
        "sdk_protocol '2' is not supported",
    ),
    "entrypoint module absent": (
        lambda: [MANIFEST_ENTRY, ("other.py", b"")],
        "entrypoint module 'echo_backend' is not in the archive",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_TARS))
def test_a_hostile_or_broken_tar_gz_is_refused(tmp_path: Path, case: str) -> None:
    entries, message = HOSTILE_TARS[case]
    path = tar_gz(tmp_path / "p.tar.gz", *entries())
    with pytest.raises(PackagingError) as raised:
        read_manifest_from_archive(path)
    assert message in str(raised.value)


def zip_symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the mode lives in the high bits of external_attr
    info.external_attr = (0o120777 << 16) & 0xFFFF0000
    return info


HOSTILE_ZIPS: dict[str, tuple[Callable[[], list[Any]], str]] = {
    "traversal": (lambda: [MANIFEST_ENTRY, CODE_ENTRY, ("../../evil.py", b"x")], "climbs out"),
    "absolute path": (lambda: [MANIFEST_ENTRY, CODE_ENTRY, ("/tmp/evil.py", b"x")], "absolute"),
    "drive letter": (lambda: [MANIFEST_ENTRY, CODE_ENTRY, ("C:/evil.py", b"x")], "absolute"),
    "symlink": (lambda: [MANIFEST_ENTRY, CODE_ENTRY, (zip_symlink("data"), b"/etc")], "is a link"),
    "missing manifest": (lambda: [CODE_ENTRY], "has no manifest.json at its root"),
    "huge manifest": (
        lambda: [("manifest.json", b"{" + b" " * (64 * 1024) + b"}"), CODE_ENTRY],
        "larger than 65536 bytes",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_ZIPS))
def test_a_hostile_or_broken_zip_is_refused(tmp_path: Path, case: str) -> None:
    entries, message = HOSTILE_ZIPS[case]
    path = zip_file(tmp_path / "p.zip", *entries())
    with pytest.raises(PackagingError) as raised:
        read_manifest_from_archive(path)
    assert message in str(raised.value)


def test_a_zip_with_more_than_10000_members_is_refused(tmp_path: Path) -> None:
    fillers = [(f"f{index}.txt", b"") for index in range(10_001)]
    path = zip_file(tmp_path / "many.zip", MANIFEST_ENTRY, CODE_ENTRY, *fillers)
    with pytest.raises(PackagingError, match="more than 10000 members"):
        read_manifest_from_archive(path)


def test_a_tar_with_more_members_than_allowed_is_refused(tmp_path: Path) -> None:
    fillers = [(f"f{index}.txt", b"") for index in range(10)]
    path = tar_gz(tmp_path / "many.tar.gz", MANIFEST_ENTRY, CODE_ENTRY, *fillers)
    with pytest.raises(PackagingError, match="more than 5 members"):
        read_manifest_from_archive(path, max_members=5)


def test_a_tar_that_unpacks_too_large_is_refused(tmp_path: Path) -> None:
    big = ("weights.bin", b"\x00" * (3 * 1024 * 1024))
    path = tar_gz(tmp_path / "big.tar.gz", MANIFEST_ENTRY, CODE_ENTRY, big)
    assert path.stat().st_size < 64 * 1024  # zeros compress: a small upload, a large unpack
    with pytest.raises(PackagingError, match="unpacks to more than"):
        read_manifest_from_archive(path, max_unpacked_bytes=1024 * 1024)


def test_a_tar_whose_header_claims_a_huge_member_is_refused_without_reading_it(
    tmp_path: Path,
) -> None:
    # A pax header claiming 8 GiB: tarfile reads a pax header into memory whole.
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 8**11 - 1
    raw = header.tobuf(format=tarfile.USTAR_FORMAT) + b"\x00" * 512
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(PackagingError, match="unpacks to more than"):
        read_manifest_from_archive(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just text", "is not a .tar.gz or .zip archive"),
        (gzip.compress(b"not a tar at all" * 100), "is not a valid .tar.gz archive"),
        (b"\x1f\x8b\x08\x00truncated", "is not a valid .tar.gz archive"),
    ],
)
def test_something_that_is_not_an_archive_is_refused(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "p.tar.gz"
    path.write_bytes(content)
    with pytest.raises(PackagingError, match=message):
        read_manifest_from_archive(path)


def test_a_missing_archive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackagingError, match="cannot read package"):
        read_manifest_from_archive(tmp_path / "nope.tar.gz")


# --- python -m inferencekey.backend.package -------------------------------------------------------


def run_package(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferencekey.backend.package", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_package_command_prints_the_path_then_the_sha256(src: Path, tmp_path: Path) -> None:
    requirements = tmp_path / "reqs.txt"
    requirements.write_text("numpy\n")
    done = run_package(
        "--src", str(src), "--entrypoint", "echo_backend:Echo", "--name", "echo",
        "--version", "1.0.0", "--task-type", "text2text", "--requirements", str(requirements),
        "--requires-python", ">=3.10", "--slug", "echo-bot", "--description", "Says it back",
        "--cpu-only", "--out", str(tmp_path / "dist"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    path, sha256 = done.stdout.splitlines()
    built = build(
        src,
        tmp_path / "again",
        requirements=["numpy"],
        requires_python=">=3.10",
        slug="echo-bot",
        description="Says it back",
        cpu_only=True,
    )
    assert Path(path) == tmp_path / "dist" / "echo-1.0.0.tar.gz"
    assert sha256 == built.sha256
    manifest = read_manifest_from_archive(path)
    assert (manifest.slug, manifest.cpu_only, manifest.requires_python) == (
        "echo-bot",
        True,
        ">=3.10",
    )


def test_the_package_command_exits_2_on_a_packaging_error(src: Path, tmp_path: Path) -> None:
    done = run_package(
        "--src", str(src), "--entrypoint", "missing:Echo", "--name", "echo",
        "--version", "1.0.0", "--out", str(tmp_path / "dist"),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: entrypoint module 'missing' is not in src")


def test_the_package_command_exits_2_without_its_required_flags(tmp_path: Path) -> None:
    done = run_package("--src", str(tmp_path))
    assert done.returncode == 2
    assert "required" in done.stderr
