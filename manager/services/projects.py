"""Tenants and projects. One default tenant per installation; projects under it."""

from __future__ import annotations

from inferencekey.validation import slugify
from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from manager import wire
from manager.auth import Principal, TokenKind
from manager.db.models import Project, Tenant
from manager.errors import ProjectNotFound, SlugConflict, TenantNotFound, ValidationFailed
from manager.ids import new_id

from .timefmt import rfc3339

DEFAULT_TENANT_ID = "ten_default"
# What a path may name the installation's tenant by, instead of its id.
DEFAULT_TENANT_ALIAS = "default"


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


async def visible_tenants(session: AsyncSession, principal: Principal) -> list[Tenant]:
    """Every tenant for the operator; the tenant of its project for a project's credential."""
    query = select(Tenant).order_by(Tenant.created_at, Tenant.id)
    if principal.kind is not TokenKind.ADMIN:
        query = query.join(Project, Project.tenant_id == Tenant.id).where(
            Project.id == principal.project_id
        )
    return list((await session.execute(query)).scalars())


async def resolve_tenant(session: AsyncSession, principal: Principal, ref: str) -> Tenant:
    """The tenant a path names (its id, or ``default``) if ``principal`` may see it; another
    tenant's is as unknown as one that does not exist."""
    tenant_id = DEFAULT_TENANT_ID if ref == DEFAULT_TENANT_ALIAS else ref
    for tenant in await visible_tenants(session, principal):
        if tenant.id == tenant_id:
            return tenant
    raise TenantNotFound(
        f'tenant "{ref}" not found; GET /api/tenants lists yours ("{DEFAULT_TENANT_ALIAS}" '
        "names this installation's)",
        field="tenant_id",
    )


def tenant_view(tenant: Tenant) -> wire.Tenant:
    return wire.Tenant(id=tenant.id, name=tenant.name)
