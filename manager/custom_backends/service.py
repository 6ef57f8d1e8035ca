"""Publish, list, show and delete a tenant's custom backends; serve their packages to agents.

Locks (see "Locking" in docs/DESIGN.md): a publish holds its backend's row ``FOR NO KEY UPDATE``
while it stores the version, then takes the rows of the workloads it rolls; a delete holds the
backend's row ``FOR UPDATE`` while it looks for workloads using it; a workload written with a
custom backend holds the backend's row ``FOR KEY SHARE``. So a delete waits for a workload being
created on the backend (and then sees it), and neither waits for the other in a cycle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from inferencekey.backend import (
    SDK_PROTOCOL,
    BackendManifest,
    archive_format,
    read_manifest_from_archive,
)
from inferencekey.enums import Backend, WorkloadPhase
from inferencekey.errors import PackagingError
from inferencekey.validation import control_character_field, secret_field, slugify
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ik_contracts.engines import BUILTIN_BACKENDS
from ik_contracts.logs import ids
from manager import notify
from manager.auth import Principal
from manager.db.models import (
    CustomBackend,
    CustomBackendPackageChunk,
    CustomBackendVersion,
    Project,
    Replica,
    Worker,
    Workload,
)
from manager.db.queries import one_of
from manager.errors import (
    BackendInUse,
    CustomBackendNotFound,
    InvalidPackage,
    PackageMismatch,
    PackageNotFound,
    ValidationFailed,
    VersionExists,
)
from manager.ids import new_id
from manager.services import events
from manager.services.timefmt import rfc3339, utcnow
from manager.states import DesiredState
from manager.validation import MAX_LENGTHS, CustomBackendFacts

from . import wire
from .upload import Upload

log = logging.getLogger("inferencekey.manager")

# Packages are stored, and streamed to agents, in pieces of this size.
CHUNK_BYTES = 1024 * 1024
# A download reads this many pieces per short database session.
CHUNKS_PER_READ = 8
CONTENT_TYPES = {"tar.gz": "application/gzip", "zip": "application/zip"}
# Slugs no custom backend may take: every backend the SDK names, hosted here or not.
RESERVED_SLUGS = frozenset({*BUILTIN_BACKENDS, *(backend.value for backend in Backend)})


@dataclass(frozen=True)
class Package:
    """What an upload holds, once its manifest is read: the facts a version is stored with."""

    manifest: BackendManifest
    archive_format: str
    sha256: str
    size_bytes: int
    path: Path


def _read_manifest(path: Path) -> tuple[BackendManifest, str]:
    # Static reads only: the archive is scanned member by member, nothing is extracted or run.
    return read_manifest_from_archive(path), archive_format(path)


async def read_package(upload: Upload) -> Package:
    """The upload's package with its manifest (read in a thread); a 400 naming the fault for
    an archive that is unsafe or not a valid package, or that disagrees with the form."""
    try:
        manifest, kind = await asyncio.to_thread(_read_manifest, upload.path)
    except PackagingError as error:
        raise InvalidPackage(f"invalid package: {error}", field="file") from None
    if manifest.sdk_protocol != SDK_PROTOCOL:
        raise InvalidPackage(
            f"invalid package: sdk_protocol {manifest.sdk_protocol!r} is not supported "
            f"(this Manager serves {SDK_PROTOCOL!r})",
            field="file",
        )
    _check_form(upload.fields, manifest)
    _check_slug(manifest.slug)
    return Package(manifest, kind, upload.sha256, upload.size_bytes, upload.path)


def _check_form(fields: dict[str, str], manifest: BackendManifest) -> None:
    # As the border checks JSON bodies: errors below echo the parts, never a credential.
    bad = control_character_field(fields) or secret_field(fields)
    if bad is not None:
        raise ValidationFailed(
            f"the form part {bad!r} holds a control character or what looks like a credential",
            field=bad,
        )
    for part in ("name", "version", "entrypoint"):
        if not fields.get(part):
            raise ValidationFailed(f"the form part {part!r} is required", field=part)
    expected = {
        "name": fields["name"],
        "slug": fields.get("slug") or slugify(fields["name"]),
        "version": fields["version"],
        "entrypoint": fields["entrypoint"],
    }
    if "task_type" in fields:
        expected["task_type"] = fields["task_type"]
    for part, given in expected.items():
        declared = getattr(manifest, part)
        if given != declared:
            raise PackageMismatch(
                f"the form's {part} is {given!r} but the package's manifest.json declares "
                f"{declared!r}; they must agree",
                field=part,
                form_value=given,
                manifest_value=declared,
            )


def _check_slug(slug: str) -> None:
    if slugify(slug) != slug or len(slug) > MAX_LENGTHS["slug"]:
        raise ValidationFailed(
            f"slug {slug!r} must be lowercase letters and digits joined by single '-' (at most "
            f"{MAX_LENGTHS['slug']} characters)",
            field="slug",
        )
    if slug in RESERVED_SLUGS:
        raise ValidationFailed(
            f"slug {slug!r} is a built-in backend's name; publish the custom backend under "
            "another slug",
            field="slug",
        )


async def publish(
    session: AsyncSession, tenant_id: str, package: Package, principal: Principal
) -> tuple[CustomBackendVersion, bool]:
    """Store a new version, and True; or, when this version is published with the same bytes
    already, that version and False. Other bytes under a published version are a 409.

    A new version rolls every live workload using the backend onto it (a new generation)."""
    manifest = package.manifest
    backend = None
    for _ in range(3):  # a delete that committed between the two statements: insert again
        await session.execute(
            insert(CustomBackend)
            .values(
                tenant_id=tenant_id,
                slug=manifest.slug,
                name=manifest.name,
                description=manifest.description,
            )
            .on_conflict_do_nothing()
        )
        backend = await _backend(session, tenant_id, manifest.slug, lock="no_key_update")
        if backend is not None:
            break
    if backend is None:
        raise VersionExists(
            f"custom backend {manifest.slug!r} is being deleted and published at once; "
            "publish again",
            field="slug",
        )
    existing = (
        await session.execute(
            select(CustomBackendVersion).where(
                CustomBackendVersion.tenant_id == tenant_id,
                CustomBackendVersion.slug == manifest.slug,
                CustomBackendVersion.version == manifest.version,
            )
        )
    ).scalar_one_or_none()
    if existing is not None:
        if existing.sha256 == package.sha256:
            return existing, False
        raise VersionExists(
            f"version {manifest.version} of custom backend {manifest.slug!r} is published "
            f"already with other bytes (sha256 {existing.sha256}); versions never change: "
            "publish this package under a new version",
            field="version",
        )
    # Checked before the bytes are stored, and again on the locked rows after.
    _refuse_other_task_types(
        await live_workloads_using(session, tenant_id, manifest.slug), manifest
    )
    version = CustomBackendVersion(
        id=new_id("cbv"),
        tenant_id=tenant_id,
        slug=manifest.slug,
        version=manifest.version,
        name=manifest.name,
        description=manifest.description,
        task_type=manifest.task_type,
        entrypoint=manifest.entrypoint,
        requires_python=manifest.requires_python,
        cpu_only=manifest.cpu_only,
        sha256=package.sha256,
        size_bytes=package.size_bytes,
        archive_format=package.archive_format,
    )
    session.add(version)
    await session.flush()
    await _store_chunks(session, version.id, package.path)
    backend.name, backend.description = manifest.name, manifest.description
    backend.updated_at = utcnow()
    await _roll_workloads(session, version, manifest, principal)
    await session.refresh(version)
    log.info(
        "published custom backend %s %s (%s, %d bytes) by %s",
        version.slug,
        version.version,
        version.id,
        version.size_bytes,
        principal.display,
    )
    return version, True


async def _store_chunks(session: AsyncSession, version_id: str, path: Path) -> None:
    with path.open("rb") as stream:
        index = 0
        while piece := await asyncio.to_thread(stream.read, CHUNK_BYTES):
            await session.execute(
                insert(CustomBackendPackageChunk).values(
                    version_id=version_id, chunk=index, data=piece
                )
            )
            index += 1


def _refuse_other_task_types(
    rows: list[tuple[Workload, Project]], manifest: BackendManifest
) -> None:
    """A version may not change the task type its live workloads serve."""
    others = [(w, p) for w, p in rows if manifest.task_type and w.task_type != manifest.task_type]
    if others:
        raise BackendInUse(
            f"version {manifest.version} declares task_type {manifest.task_type!r}, but "
            f"{_named(others, with_task_type=True)} use custom backend {manifest.slug!r}; "
            "publish it under another slug, or delete those workloads first",
            workloads=[f"{p.slug}/{w.slug}" for w, p in others],
        )


async def _roll_workloads(
    session: AsyncSession,
    version: CustomBackendVersion,
    manifest: BackendManifest,
    principal: Principal,
) -> None:
    """A new generation for each live workload on the backend: the reconciler replaces its
    replicas with ones of ``version``, old ones serving until the new ones are ready."""
    rows = await live_workloads_using(session, version.tenant_id, version.slug, lock=True)
    _refuse_other_task_types(rows, manifest)
    now = utcnow()
    for workload, _ in rows:
        workload.generation += 1
        workload.phase = WorkloadPhase.SCHEDULING.value
        workload.phase_reason = f"rolling out generation {workload.generation}"
        workload.updated_at = now
        await events.record(
            session,
            workload.id,
            "updated",
            f"custom backend {version.slug} version {version.version} published "
            f"(generation {workload.generation}) by {principal.display}",
            {
                "fields": ["backend"],
                "generation": workload.generation,
                "custom_backend_version": version.id,
            },
        )
        await notify.notify(session, notify.RECONCILE, workload.id)
        log.info(
            "rolling workload %s onto custom backend %s %s",
            workload.slug,
            version.slug,
            version.version,
            extra=ids(workload=workload.slug, workload_id=workload.id),
        )


async def live_workloads_using(
    session: AsyncSession, tenant_id: str, slug: str, *, lock: bool = False
) -> list[tuple[Workload, Project]]:
    """The tenant's live workloads whose backend is ``slug``, with their projects, in id order
    (the order their rows are locked in, with ``lock``)."""
    query = (
        select(Workload, Project)
        .join(Project, Project.id == Workload.project_id)
        .where(
            Project.tenant_id == tenant_id,
            Workload.backend == slug,
            Workload.deleted_at.is_(None),
        )
        .order_by(Workload.id)
    )
    if lock:
        query = query.with_for_update(of=Workload, key_share=True)
    return [(workload, project) for workload, project in (await session.execute(query)).all()]


def _named(rows: list[tuple[Workload, Project]], *, with_task_type: bool = False) -> str:
    names = [
        f"{project.slug}/{workload.slug}" + (f" ({workload.task_type})" if with_task_type else "")
        for workload, project in rows
    ]
    return f"workload{'s' if len(names) > 1 else ''} {', '.join(names)}"


async def _backend(
    session: AsyncSession, tenant_id: str, slug: str, *, lock: str | None = None
) -> CustomBackend | None:
    query = select(CustomBackend).where(
        CustomBackend.tenant_id == tenant_id, CustomBackend.slug == slug
    )
    if lock == "no_key_update":
        query = query.with_for_update(key_share=True)
    elif lock == "key_share":
        query = query.with_for_update(read=True, key_share=True)
    elif lock == "update":
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def _versions(
    session: AsyncSession, tenant_id: str, slug: str | None = None
) -> list[CustomBackendVersion]:
    """The tenant's versions (of ``slug``), each backend's newest first."""
    query = select(CustomBackendVersion).where(CustomBackendVersion.tenant_id == tenant_id)
    if slug is not None:
        query = query.where(CustomBackendVersion.slug == slug)
    query = query.order_by(
        CustomBackendVersion.slug,
        CustomBackendVersion.created_at.desc(),
        CustomBackendVersion.id.desc(),
    )
    return list((await session.execute(query)).scalars())


async def list_backends(session: AsyncSession, tenant_id: str) -> wire.CustomBackendList:
    backends = {
        row.slug: row
        for row in (
            await session.execute(select(CustomBackend).where(CustomBackend.tenant_id == tenant_id))
        ).scalars()
    }
    by_slug: dict[str, list[CustomBackendVersion]] = {}
    for version in await _versions(session, tenant_id):
        by_slug.setdefault(version.slug, []).append(version)
    return wire.CustomBackendList(
        custom_backends=[
            wire.CustomBackendSummary(
                **version_view(versions[0]).model_dump(),
                description=backends[slug].description if slug in backends else None,
                versions=len(versions),
            )
            for slug, versions in sorted(by_slug.items())
        ]
    )


async def show_backend(
    session: AsyncSession, tenant_id: str, slug: str
) -> wire.CustomBackendDetail:
    backend = await _backend(session, tenant_id, slug)
    if backend is None:
        raise _not_found(slug)
    return wire.CustomBackendDetail(
        slug=backend.slug,
        name=backend.name,
        description=backend.description,
        created_at=rfc3339(backend.created_at),
        updated_at=rfc3339(backend.updated_at),
        versions=[version_view(v) for v in await _versions(session, tenant_id, slug)],
    )


async def delete_backend(
    session: AsyncSession, tenant_id: str, slug: str, principal: Principal
) -> None:
    """Delete every version of the backend and their packages; a 409 naming the workloads while
    any live workload uses it."""
    backend = await _backend(session, tenant_id, slug, lock="update")
    if backend is None:
        raise _not_found(slug)
    users = await live_workloads_using(session, tenant_id, slug)
    if users:
        raise BackendInUse(
            f"custom backend {slug!r} is in use by {_named(users)}; delete them or move them to "
            "another backend first",
            workloads=[f"{p.slug}/{w.slug}" for w, p in users],
        )
    # Its versions and their packages go with it (ON DELETE CASCADE).
    await session.execute(
        delete(CustomBackend).where(
            CustomBackend.tenant_id == tenant_id, CustomBackend.slug == slug
        )
    )
    log.info("deleted custom backend %s by %s", slug, principal.display)


def _not_found(slug: str) -> CustomBackendNotFound:
    return CustomBackendNotFound(f"custom backend {slug!r} not found", field="slug")


def version_view(version: CustomBackendVersion) -> wire.CustomBackendVersion:
    return wire.CustomBackendVersion(
        id=version.id,
        slug=version.slug,
        name=version.name,
        version=version.version,
        task_type=version.task_type,
        entrypoint=version.entrypoint,
        requires_python=version.requires_python,
        cpu_only=version.cpu_only,
        sha256=version.sha256,
        size_bytes=version.size_bytes,
        created_at=rfc3339(version.created_at),
    )


# --- what workloads, the reconciler and the agents read -----------------------------------


async def backend_facts(
    session: AsyncSession, tenant_id: str, slug: str
) -> CustomBackendFacts | None:
    """What validating a workload on ``slug`` needs (None: the tenant has no such backend).
    Share-locks the backend's row until the transaction ends: it cannot be deleted meanwhile."""
    if await _backend(session, tenant_id, slug, lock="key_share") is None:
        return None
    newest = (await newest_versions(session, [(tenant_id, slug)])).get((tenant_id, slug))
    if newest is None:
        return None
    return CustomBackendFacts(slug=slug, version=newest.version, task_type=newest.task_type)


async def slugs(session: AsyncSession, tenant_id: str) -> list[str]:
    result = await session.execute(
        select(CustomBackend.slug)
        .where(CustomBackend.tenant_id == tenant_id)
        .order_by(CustomBackend.slug)
    )
    return list(result.scalars())


async def newest_versions(
    session: AsyncSession, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], CustomBackendVersion]:
    """The newest version of each (tenant id, slug) that has one, in one query (of the
    versions' facts only: a backend has a handful)."""
    wanted = set(keys)
    if not wanted:
        return {}
    result = await session.execute(
        select(CustomBackendVersion)
        .where(one_of(CustomBackendVersion.slug, {slug for _, slug in wanted}))
        .order_by(CustomBackendVersion.created_at.desc(), CustomBackendVersion.id.desc())
    )
    newest: dict[tuple[str, str], CustomBackendVersion] = {}
    for row in result.scalars():
        key = (row.tenant_id, row.slug)
        if key in wanted:
            newest.setdefault(key, row)
    return newest


async def versions_by_id(
    session: AsyncSession, version_ids: Iterable[str]
) -> dict[str, CustomBackendVersion]:
    wanted = sorted(set(version_ids))
    if not wanted:
        return {}
    result = await session.execute(
        select(CustomBackendVersion).where(one_of(CustomBackendVersion.id, wanted))
    )
    return {row.id: row for row in result.scalars()}


async def package_for_worker(
    session: AsyncSession, version_id: str, worker: Worker
) -> CustomBackendVersion:
    """The version whose package ``worker`` may download: only one that a replica the worker
    must run was placed with (so an agent credential reads no other package)."""
    version = await session.get(CustomBackendVersion, version_id)
    if version is not None:
        runs_it = await session.scalar(
            select(Replica.id)
            .where(
                Replica.worker_id == worker.id,
                Replica.desired_state == DesiredState.RUN,
                Replica.spec["custom_backend_id"].as_string() == version_id,
            )
            .limit(1)
        )
        if runs_it is None:
            version = None
    if version is None:
        raise PackageNotFound(f"no custom-backend package {version_id!r}", field="version_id")
    return version


async def package_pieces(
    sessions: async_sessionmaker[AsyncSession], version_id: str
) -> AsyncIterator[bytes]:
    """A version's package in order, a few pieces per short session: no connection is held
    while the client reads."""
    start = 0
    while True:
        async with sessions() as session:
            pieces = list(
                (
                    await session.execute(
                        select(CustomBackendPackageChunk.data)
                        .where(
                            CustomBackendPackageChunk.version_id == version_id,
                            CustomBackendPackageChunk.chunk >= start,
                            CustomBackendPackageChunk.chunk < start + CHUNKS_PER_READ,
                        )
                        .order_by(CustomBackendPackageChunk.chunk)
                    )
                ).scalars()
            )
        for piece in pieces:
            yield piece
        if len(pieces) < CHUNKS_PER_READ:
            return
        start += CHUNKS_PER_READ
