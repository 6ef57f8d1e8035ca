"""Tenants and projects. One default tenant per installation; projects under it."""

from __future__ import annotations

from inferencekey.validation import slugify
from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from manager import wire
from manager.db.models import Project, Tenant
from manager.errors import ProjectNotFound, SlugConflict, ValidationFailed
from manager.ids import new_id

from .timefmt import rfc3339

DEFAULT_TENANT_ID = "ten_default"


async def ensure_default_tenant(session: AsyncSession) -> None:
    await session.execute(
        insert(Tenant).values(id=DEFAULT_TENANT_ID, name="default").on_conflict_do_nothing()
    )


async def create_project(session: AsyncSession, slug: str, name: str | None) -> Project:
    canonical = slugify(slug)
    if not canonical:
        raise ValidationFailed(f"slug {slug!r} must contain a letter or digit", field="slug")
    if canonical.startswith("proj_"):
        raise ValidationFailed("slug must not start with 'proj_' (reserved for ids)", field="slug")
    project = Project(
        id=new_id("proj"), tenant_id=DEFAULT_TENANT_ID, slug=canonical, name=name or canonical
    )
    try:
        async with session.begin_nested():
            session.add(project)
    except IntegrityError:
        raise SlugConflict(
            f'a project with slug "{canonical}" already exists', field="slug"
        ) from None
    await session.refresh(project)
    return project


async def find_project(session: AsyncSession, ref: str) -> Project | None:
    """A project by slug or id."""
    result = await session.execute(
        select(Project).where(or_(Project.slug == ref, Project.id == ref))
    )
    return result.scalar_one_or_none()


async def get_project(session: AsyncSession, ref: str) -> Project:
    project = await find_project(session, ref)
    if project is None:
        raise ProjectNotFound(f'project "{ref}" not found', field="project")
    return project


async def list_projects(session: AsyncSession) -> list[Project]:
    return list((await session.execute(select(Project).order_by(Project.created_at))).scalars())


def project_view(project: Project) -> wire.Project:
    return wire.Project(
        id=project.id,
        slug=project.slug,
        name=project.name,
        created_at=rfc3339(project.created_at),
    )
