"""What the custom-backend routes answer (``/api/tenants/{tenant}/custom-backends``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class CustomBackendVersion(BaseModel):
    """One published version: the publish answer, and each entry of a backend's versions."""

    id: str = Field(description="the version's id, cbv_…")
    slug: str = Field(description="what a WorkloadSpec names as its backend")
    name: str
    version: str
    task_type: str = Field(description='the task type it serves; "" serves any')
    entrypoint: str = Field(description="module:Class")
    requires_python: str = Field(description='a PEP 440 specifier, or ""')
    cpu_only: bool = Field(description="placed without claiming a GPU")
    sha256: str = Field(description="of the package as uploaded (hex)")
    size_bytes: int
    created_at: str


class CustomBackendSummary(CustomBackendVersion):
    """A backend in the listing: its newest version, its description and how many it has."""

    description: str | None
    versions: int = Field(description="how many versions are published")


class CustomBackendList(BaseModel):
    custom_backends: list[CustomBackendSummary]


class CustomBackendDetail(BaseModel):
    """A backend with every published version, newest first (workloads run the first)."""

    slug: str
    name: str
    description: str | None
    created_at: str
    updated_at: str
    versions: list[CustomBackendVersion]
