"""Publish a custom-backend package to a Manager's registry (contract sections 9 and 11).

>>> from inferencekey import publish_custom_backend
>>> publish_custom_backend("default", "dist/my-backend-1.0.0.tar.gz",
...                        token="ik_admin_...")  # doctest: +SKIP
{'id': '...', 'slug': 'my-backend', 'sha256': '...', ...}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ._config import DEFAULT_BASE_URL, from_env, present
from ._http import NETWORK_ERROR_CODE, join_url, normalize_base_url
from .backend.packaging import archive_format, read_manifest_from_archive
from .errors import (
    ApiError,
    AuthError,
    ConfigurationError,
    ConflictError,
    InferenceKeyError,
    NotFoundError,
    PermissionDenied,
    ValidationError,
)

# Where the token comes from when none is passed, in this order: the project's SDK token, then
# the operator's admin credential (only a fallback, never preferred over the project's token).
TOKEN_ENV_VARS = ("INFERENCEKEY_SDK_TOKEN", "INFERENCEKEY_ADMIN_TOKEN")
_CONTENT_TYPES = {"tar.gz": "application/gzip", "zip": "application/zip"}
_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


def publish_custom_backend(
    tenant_id: str,
    package_path: str | os.PathLike[str],
    *,
    token: str | None = None,
    base_url: str | None = None,
) -> dict[str, Any]:
    """Upload a package built by ``package_backend``; returns the Manager's answer
    (``id``, ``slug``, ``sha256``, ...).

    ``tenant_id`` may be ``"default"``. ``token`` is sent verbatim as the bearer credential;
    without it ``$INFERENCEKEY_SDK_TOKEN``, then ``$INFERENCEKEY_ADMIN_TOKEN`` is used.
    ``base_url`` defaults to ``$INFERENCEKEY_BASE_URL``. The manifest is read from the package
    (a ``PackagingError`` if it is not a valid one) and its ``name``, ``slug``, ``version``,
    ``task_type`` and ``entrypoint`` are sent as form fields beside the ``file``.

    Raises ``ConfigurationError`` (no token, no tenant: nothing sent), ``AuthError`` (401),
    ``PermissionDenied`` (403), ``ValidationError`` (400), ``ApiError`` for any other answer
    (``"<status> <reason>: <body>"``) or when the Manager cannot be reached.
    """
    credential = present(token) and token
    for name in TOKEN_ENV_VARS:
        credential = credential or present(os.environ.get(name))
    if not credential:
        raise ConfigurationError(
            "publish_custom_backend requires a token: pass token= or set "
            + " or ".join(TOKEN_ENV_VARS)
        )
    tenant = (tenant_id or "").strip()
    if not tenant:
        raise ConfigurationError("publish_custom_backend requires a tenant_id (e.g. 'default')")
    root = normalize_base_url(from_env(base_url, "INFERENCEKEY_BASE_URL") or DEFAULT_BASE_URL)
    package = Path(package_path)
    manifest = read_manifest_from_archive(package)
    fields = {
        "name": manifest.name,
        "slug": manifest.slug or manifest.name,
        "version": manifest.version,
        "task_type": manifest.task_type,
        "entrypoint": manifest.entrypoint,
    }
    url = join_url(root, f"/api/tenants/{quote(tenant, safe='')}/custom-backends")
    headers = {"Authorization": f"Bearer {credential}", "Accept": "application/json"}
    content_type = _CONTENT_TYPES[archive_format(package)]
    with package.open("rb") as stream, httpx.Client(timeout=_TIMEOUT) as client:
        try:
            response = client.post(
                url,
                data=fields,
                files={"file": (package.name, stream, content_type)},
                headers=headers,
            )
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            raise ApiError(f"could not reach {url}: {detail}", code=NETWORK_ERROR_CODE) from exc
    if not response.is_success:
        raise _publish_error(response)
    try:
        answer = response.json() if response.content else {}
    except ValueError as exc:
        raise ApiError(
            f"the Manager answered non-JSON: {exc}", status=response.status_code
        ) from exc
    if not isinstance(answer, dict):
        raise ApiError(
            "the Manager answered JSON that is not an object", status=response.status_code
        )
    return answer


def _publish_error(response: httpx.Response) -> InferenceKeyError:
    status = response.status_code
    message = f"{status} {response.reason_phrase}: {response.text.strip()}"
    code = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = next(
            (body[key] for key in ("code", "error") if isinstance(body.get(key), str)), None
        )
    error_type: type[InferenceKeyError] = {
        400: ValidationError,
        401: AuthError,
        403: PermissionDenied,
        404: NotFoundError,
        409: ConflictError,
    }.get(status, ApiError)
    return error_type(message, status=status, code=code)
