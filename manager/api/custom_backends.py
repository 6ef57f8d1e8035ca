"""The custom-backend registry (contract sections 1b and 11), and the tenants a caller may name.

Publishing, listing, showing and deleting take the operator's ``ik_admin_`` credential or a
project's ``ik_sdk_`` token (read scope to read, write scope to publish and delete: a tenant's
backends are shared by all its projects). The upload is ``multipart/form-data`` streamed to disk,
so it has a route class of its own (``StreamedBodyRoute``) and its own size limit.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status
from inferencekey.wire import ErrorBody
from starlette.types import Scope as AsgiScope

from manager import wire
from manager.api.border import BorderRoute, StreamedBodyRoute, authenticated
from manager.auth import Principal, Scope, TokenKind, require_scope
from manager.custom_backends import service, upload
from manager.custom_backends.wire import (
    CustomBackendDetail,
    CustomBackendList,
    CustomBackendVersion,
)
from manager.errors import WrongCredentialType
from manager.openapi import ERROR_RESPONSES
from manager.services import projects

from .deps import Session

router = APIRouter(prefix="/api", route_class=BorderRoute, responses=ERROR_RESPONSES)
upload_router = APIRouter(prefix="/api", route_class=StreamedBodyRoute, responses=ERROR_RESPONSES)

_UPLOAD_PATH = re.compile(r"/api/tenants/[^/]+/custom-backends/?")
_FORM_TEXT = {
    "name": "the manifest's name",
    "slug": "the manifest's slug (default: the name, canonicalised)",
    "version": "the manifest's version",
    "task_type": "the manifest's task_type (may be empty: any)",
    "entrypoint": "the manifest's entrypoint, module:Class",
}
PUBLISH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "version", "entrypoint", "file"],
                    "properties": {
                        **{
                            name: {"type": "string", "description": text}
                            for name, text in _FORM_TEXT.items()
                        },
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "the package, .tar.gz or .zip, with manifest.json at "
                            "its root (at most INFERENCEKEY_CUSTOM_BACKEND_MAX_BYTES)",
                        },
                    },
                }
            }
        },
    }
}


def is_upload(scope: AsgiScope) -> bool:
    """A publish request: its body is streamed and capped by the route, not by the middleware."""
    return scope.get("method") == "POST" and _UPLOAD_PATH.fullmatch(scope["path"]) is not None


def _registry_caller(scope: Scope) -> Callable[[Request], Awaitable[Principal]]:
    async def dependency(request: Request) -> Principal:
        principal = await authenticated(request)
        if principal.kind is TokenKind.SDK:
            require_scope(principal, scope)
        elif principal.kind is not TokenKind.ADMIN:
            raise WrongCredentialType(
                "custom backends need an ik_sdk_ token or the ik_admin_ credential; "
                f"got {principal.display}"
            )
        return principal

    return dependency


RegistryReader = Annotated[Principal, Depends(_registry_caller(Scope.WORKLOAD_READ))]
RegistryWriter = Annotated[Principal, Depends(_registry_caller(Scope.WORKLOAD_WRITE))]


async def _any_caller(request: Request) -> Principal:
    principal = await authenticated(request)
    if principal.kind not in (TokenKind.SDK, TokenKind.ADMIN):
        raise WrongCredentialType(
            "tenants are listed for an ik_sdk_ token or the ik_admin_ credential; "
            f"got {principal.display}"
        )
    return principal


@router.get("/tenants")
async def list_tenants(
    caller: Annotated[Principal, Depends(_any_caller)], session: Session
) -> wire.TenantList:
    """The tenants the caller may name in ``/api/tenants/{tenant_id}/...``: the installation's
    one (``default`` names it too)."""
    rows = await projects.visible_tenants(session, caller)
    return wire.TenantList(tenants=[projects.tenant_view(t) for t in rows])


@upload_router.post(
    "/tenants/{tenant_id}/custom-backends",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=PUBLISH_BODY,
    responses={
        status.HTTP_200_OK: {
            "model": CustomBackendVersion,
            "description": "this version was published already with the same bytes: that one",
        },
        status.HTTP_409_CONFLICT: {
            "model": ErrorBody,
            "description": "version_exists (other bytes under a published version) or "
            "backend_in_use (the version changes the task type of workloads using it)",
        },
    },
)
async def publish_custom_backend(
    tenant_id: str,
    request: Request,
    response: Response,
    caller: RegistryWriter,
    session: Session,
) -> CustomBackendVersion:
    """Publish a version: the form's text parts must agree with the package's manifest.json,
    which is read statically (nothing in the package is run here). Live workloads using the
    backend roll onto the new version."""
    tenant = await projects.resolve_tenant(session, caller, tenant_id)
    await session.close()  # the upload may take minutes: hold no connection meanwhile
    limit: int = request.app.state.settings.custom_backend_max_bytes
    upload.check_declared_length(request.headers.get("content-length"), limit)
    received = await upload.read_upload(
        request.stream(), request.headers.get("content-type"), limit, directory=None
    )
    try:
        package = await service.read_package(received)
        version, created = await service.publish(session, tenant.id, package, caller)
        await session.commit()
    finally:
        received.path.unlink(missing_ok=True)
    if not created:
        response.status_code = status.HTTP_200_OK
    return service.version_view(version)


@router.get("/tenants/{tenant_id}/custom-backends")
async def list_custom_backends(
    tenant_id: str, caller: RegistryReader, session: Session
) -> CustomBackendList:
    """Each of the tenant's custom backends: its newest version and how many it has."""
    tenant = await projects.resolve_tenant(session, caller, tenant_id)
    return await service.list_backends(session, tenant.id)


@router.get("/tenants/{tenant_id}/custom-backends/{slug}")
async def show_custom_backend(
    tenant_id: str, slug: str, caller: RegistryReader, session: Session
) -> CustomBackendDetail:
    """A custom backend with all its versions, newest first."""
    tenant = await projects.resolve_tenant(session, caller, tenant_id)
    return await service.show_backend(session, tenant.id, slug)


@router.delete(
    "/tenants/{tenant_id}/custom-backends/{slug}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        status.HTTP_409_CONFLICT: {
            "model": ErrorBody,
            "description": "backend_in_use: live workloads use it (named)",
        }
    },
)
async def delete_custom_backend(
    tenant_id: str, slug: str, caller: RegistryWriter, session: Session
) -> Response:
    """Delete every version and package of a backend no live workload uses."""
    tenant = await projects.resolve_tenant(session, caller, tenant_id)
    await service.delete_backend(session, tenant.id, slug, caller)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
