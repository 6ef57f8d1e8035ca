"""Packages of tests/agent/sample_backend as the SDK builds them, their refs as the Manager sends
them, and wheels for a local index that uv installs requirements from."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path
from typing import Any

from inferencekey.backend import BackendPackage, package_backend

from ik_contracts.protocol import CustomBackendRef

SAMPLE_SRC = Path(__file__).parent / "sample_backend"


def build_package(
    out: Path, *, version: str = "1.0.0", requirements: list[str] | None = None
) -> BackendPackage:
    return package_backend(
        SAMPLE_SRC,
        entrypoint="sample_backend:Sample",
        name="sample",
        version=version,
        out=out,
        task_type="text2text",
        requirements=requirements or [],
    )


def ref_of(
    package: BackendPackage, version_id: str = "cbv_sample", **changes: Any
) -> CustomBackendRef:
    fields: dict[str, Any] = {
        "id": version_id,
        "slug": package.manifest.slug,
        "version": package.manifest.version,
        "sha256": package.sha256,
        "size_bytes": package.size_bytes,
        "entrypoint": package.manifest.entrypoint,
        "task_type": package.manifest.task_type,
        "config": {"greeting": "hola"},
    }
    return CustomBackendRef(**{**fields, **changes})


def wheel(directory: Path, name: str, version: str, module_source: str) -> Path:
    """A pure-Python wheel holding one module, as a build backend would write it."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}.py": module_source.encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: ik-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for member, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{member},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path
