"""The management plane: declare workloads with ``ensure()``, list, get and delete them,
and wait for one to become ready.

``ManagementClient`` and ``AsyncManagementClient`` share one implementation: each operation
is a generator of HTTP calls (see ``_http``; ``_sse`` for the readiness stream) that the sync
client drives with ``httpx.Client`` and the async client with ``httpx.AsyncClient``.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pydantic

from . import _http, _sse
from ._config import DEFAULT_BASE_URL
from ._config import from_env as _from_env
from ._config import present as _present
from ._http import NETWORK_ERROR_CODE, Call, Steps
from ._sse import NextFrame, OpenStream, Pause, StreamSignal, StreamSteps
from .enums import OnDrift, ReadinessPhase
from .errors import (
    ApiError,
    ConfigurationError,
    ConflictError,
    DriftError,
    NotFoundError,
    PermissionDenied,
    ValidationError,
)
from .progress import ProgressRenderer
from .spec import DriftItem, EndpointRef, Plan, WorkloadSpec, compute_drift
from .validation import redact_token, slugify
from .wire import ReadinessEvent, Workload

logger = logging.getLogger("inferencekey")

_NO_PROJECT_FOR_ENSURE = (
    "No project configured. Set INFERENCEKEY_PROJECT, pass project=, or set spec.project."
)
_NO_PROJECT = "No project configured. Set INFERENCEKEY_PROJECT or pass project=."

# Waits between readiness reconnects: 1 s, 2 s, 4 s, then 5 s each time; any frame resets them.
_RECONNECT_DELAYS_S = (1.0, 2.0, 4.0, 5.0)
# Answers after which the readiness stream is reopened; any other error is final.
_TRANSIENT_STATUSES = frozenset({502, 503, 504})
# A readiness stream silent this long is presumed dead and reopened (the Manager pings each 15 s).
_STALL_S = 45.0
# How often the default renderer's clock moves while no frame arrives.
_TICK_S = 1.0

ProgressCallback = Callable[[ReadinessEvent], None]


def check_sdk_token(token: str) -> None:
    """Refuse anything but an ``ik_sdk_`` token before a request is made.

    >>> check_sdk_token("ik_live_0123abcd_" + "0" * 64)
    Traceback (most recent call last):
    ...
    inferencekey.errors.PermissionDenied: permission denied [wrong_credential_type]: ...
    """
    if not token:
        raise ConfigurationError("ManagementClient requires an ik_sdk_ token.")
    if token.startswith("ik_live_"):
        raise PermissionDenied(
            f"permission denied [wrong_credential_type]: {redact_token(token)} is a data key; "
            "the management plane requires an ik_sdk_ token",
            code="wrong_credential_type",
        )
    if not token.startswith("ik_sdk_"):
        raise ConfigurationError(f"{redact_token(token)} is not an ik_sdk_ management token")


def _parse_on_drift(value: OnDrift | str) -> OnDrift:
    if isinstance(value, OnDrift):
        return value
    if value == "":
        return OnDrift.RECONCILE
    try:
        return OnDrift(value)
    except ValueError:
        raise ValidationError(f"unknown on_drift: {value}") from None


def _workloads_path(project: str) -> str:
    return f"/api/projects/{quote(project, safe='')}/workloads"


def _workload_path(workload_id: str) -> str:
    return f"/api/workloads/{quote(workload_id, safe='')}"


def _workload_items(answer: Any) -> list[dict[str, Any]]:
    """The list answer as raw dicts: a JSON array, ``{"workloads": [...]}``, or null."""
    items = answer.get("workloads") if isinstance(answer, dict) else answer
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ApiError('json error: workload list is neither an array nor {"workloads": [...]}')
    return items


def _workload(answer: Any) -> Workload:
    try:
        return Workload.model_validate(answer)
    except pydantic.ValidationError as exc:
        raise ApiError(f"json error: unexpected workload shape: {exc}") from exc


def _find(items: list[dict[str, Any]], slug: str) -> dict[str, Any] | None:
    return next((item for item in items if item.get("slug") == slug), None)


def _ensure_steps(
    spec: WorkloadSpec, on_drift: OnDrift | str, project: str | None, client_project: str | None
) -> Steps[EndpointRef]:
    """The contract's ensure() algorithm (section 7) as a sequence of calls."""
    spec.check()
    mode = _parse_on_drift(on_drift)
    resolved = _present(project) or _present(spec.project) or client_project
    if resolved is None:
        raise ConfigurationError(_NO_PROJECT_FOR_ENSURE)
    ref_project = _present(spec.project) or resolved
    slug = slugify(spec.slug)

    live = _find(_workload_items((yield Call("GET", _workloads_path(resolved)))), slug)

    if live is None:
        if mode is OnDrift.DRY_RUN:
            body = spec.to_create_body()
            changes = tuple(DriftItem(field=k, live=None, desired=v) for k, v in body.items())
            logger.info("dry run: would create workload %r in project %r", slug, resolved)
            return EndpointRef(ref_project, slug, Plan("create", changes))
        try:
            created = _workload(
                (yield Call("POST", _workloads_path(resolved), spec.to_create_body()))
            )
            return EndpointRef(ref_project, created.slug)
        except ConflictError:
            # Created by a concurrent ensure() between our read and our create: converge on
            # what is there now, as if we had read it first.
            live = _find(_workload_items((yield Call("GET", _workloads_path(resolved)))), slug)
            if live is None:
                raise

    # Drift is computed on the raw JSON so that equality is exact, as the contract requires.
    drift = compute_drift(spec, live)
    fields = [item.field for item in drift]
    existing = _workload(live)
    live_slug = existing.slug
    if not drift:
        plan = Plan("none") if mode is OnDrift.DRY_RUN else None
        return EndpointRef(ref_project, live_slug, plan)
    if mode is OnDrift.RECONCILE:
        patch = {item.field: item.desired for item in drift}
        updated = _workload((yield Call("PATCH", _workload_path(existing.id), patch)))
        return EndpointRef(ref_project, updated.slug)
    if mode is OnDrift.FAIL:
        raise DriftError(f"workload drifted from spec: {', '.join(fields)}", fields=fields)
    if mode is OnDrift.DRY_RUN:
        logger.info("dry run: would update workload %r: %s", live_slug, ", ".join(fields))
        return EndpointRef(ref_project, live_slug, Plan("update", tuple(drift)))
    if mode is OnDrift.WARN:
        logger.warning(
            "workload %r drifted from spec (not reconciled, on_drift=warn): %s",
            live_slug,
            ", ".join(fields),
        )
    return EndpointRef(ref_project, live_slug)


def _delete_steps(workload_slug: str, project: str) -> Steps[bool]:
    live = _find(_workload_items((yield Call("GET", _workloads_path(project)))), workload_slug)
    if live is None:
        return False
    try:
        yield Call("DELETE", _workload_path(_workload(live).id))
    except NotFoundError:
        # Deleted by someone else between our list and our delete: the outcome is the same.
        return False
    return True


def _list_steps(project: str) -> Steps[list[Workload]]:
    items = _workload_items((yield Call("GET", _workloads_path(project))))
    return [_workload(item) for item in items]


def _get_steps(workload_slug: str, project: str) -> Steps[Workload]:
    live = _find(_workload_items((yield Call("GET", _workloads_path(project)))), workload_slug)
    if live is None:
        raise NotFoundError(
            f'not found: workload "{workload_slug}" not found in project "{project}"',
            code="workload_not_found",
        )
    return _workload(live)


def _readiness_path(project: str, workload_slug: str) -> str:
    return f"{_workloads_path(project)}/{quote(workload_slug, safe='')}/readiness-events"


def _readiness_event(data: str) -> ReadinessEvent:
    try:
        return ReadinessEvent.model_validate_json(data)
    except pydantic.ValidationError as exc:
        raise ValidationError(f"json error: readiness frame {data!r}: {exc}") from exc


def _is_transient(exc: ApiError) -> bool:
    return exc.code == NETWORK_ERROR_CODE or exc.status in _TRANSIENT_STATUSES


def _wait_steps(
    workload_slug: str,
    project: str,
    timeout: float,
    on_progress: ProgressCallback | None,
    silent: bool,
) -> StreamSteps[None]:
    """The contract's wait_until_ready (section 7): follow the readiness stream to a terminal
    phase, reopening it after a drop or a transient error, until ``timeout`` seconds pass."""
    if not workload_slug.strip():
        raise ValidationError("validation error: workload slug must not be empty")
    if "/" in project:
        raise ValidationError(f"validation error: project must not contain '/': {project!r}")
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f'workload "{workload_slug}" not ready after {timeout:g}s')
        return left

    if on_progress is None and not silent:
        on_progress = ProgressRenderer()
    renderer = on_progress if isinstance(on_progress, ProgressRenderer) else None
    path = _readiness_path(project, workload_slug)
    failures = 0
    try:
        while True:
            yield OpenStream(path, timeout=min(remaining(), _STALL_S))
            while True:
                try:
                    frame = yield NextFrame(wait=min(remaining(), _TICK_S))
                except ApiError as exc:
                    if not _is_transient(exc):
                        raise
                    logger.debug("readiness stream of %r interrupted: %s", workload_slug, exc)
                    break
                if frame is StreamSignal.IDLE:
                    if renderer is not None:
                        renderer.tick()
                    continue
                if frame is StreamSignal.ENDED:
                    break
                failures = 0
                event = _readiness_event(frame)
                if on_progress is not None:
                    on_progress(event)
                if event.phase == ReadinessPhase.READY.value:
                    return
                if event.phase == ReadinessPhase.ERROR.value:
                    raise ApiError(
                        f'workload "{workload_slug}" failed to become ready: {event.message}'
                    )
            delay = _RECONNECT_DELAYS_S[min(failures, len(_RECONNECT_DELAYS_S) - 1)]
            failures += 1
            yield Pause(min(remaining(), delay))
    finally:
        if renderer is not None:
            renderer.close()


class _ManagementBase:
    """Configuration shared by the sync and async clients."""

    def __init__(
        self, *, base_url: str, sdk_token: str, project: str | None = None, timeout: float = 30.0
    ) -> None:
        check_sdk_token(sdk_token)
        self.base_url = _http.normalize_base_url(base_url)
        self.project = _present(project)
        self._headers = _http.auth_headers(sdk_token)
        self._token_display = redact_token(sdk_token)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, project={self.project!r}, "
            f"sdk_token={self._token_display!r})"
        )

    @classmethod
    def _env_kwargs(
        cls, base_url: str | None, project: str | None, sdk_token: str | None
    ) -> dict[str, Any]:
        return {
            "base_url": _from_env(base_url, "INFERENCEKEY_BASE_URL") or DEFAULT_BASE_URL,
            "project": _from_env(project, "INFERENCEKEY_PROJECT"),
            "sdk_token": _from_env(sdk_token, "INFERENCEKEY_SDK_TOKEN") or "",
        }

    def _project(self, project: str | None) -> str:
        resolved = _present(project) or self.project
        if resolved is None:
            raise ConfigurationError(_NO_PROJECT)
        return resolved


class ManagementClient(_ManagementBase):
    """Control-plane client, authenticated with a project's ``ik_sdk_`` token.

    >>> from inferencekey import ManagementClient, WorkloadSpec, Backend
    >>> with ManagementClient.from_env() as mgmt:  # doctest: +SKIP
    ...     ref = mgmt.ensure(WorkloadSpec(name="Support bot", slug="support-bot",
    ...                                    model="qwen2.5:0.5b", backend=Backend.OLLAMA))
    ...     print(ref.project_slug, ref.workload_slug)
    acme support-bot
    """

    def __init__(
        self, *, base_url: str, sdk_token: str, project: str | None = None, timeout: float = 30.0
    ) -> None:
        super().__init__(base_url=base_url, sdk_token=sdk_token, project=project, timeout=timeout)
        self._client = httpx.Client(headers=self._headers, timeout=timeout)

    @classmethod
    def from_env(
        cls,
        *,
        base_url: str | None = None,
        project: str | None = None,
        sdk_token: str | None = None,
    ) -> ManagementClient:
        """Build a client from arguments, falling back to the environment.

        Explicit argument > ``INFERENCEKEY_BASE_URL`` (default ``https://api.inferencekey.com``),
        ``INFERENCEKEY_PROJECT``, ``INFERENCEKEY_SDK_TOKEN``. Never reads ``INFERENCEKEY_API_KEY``.

        >>> mgmt = ManagementClient.from_env(project="acme")  # doctest: +SKIP
        """
        return cls(**cls._env_kwargs(base_url, project, sdk_token))

    def _call(self, call: Call) -> Any:
        return _http.send(self._client, self.base_url, call)

    def ensure(
        self,
        spec: WorkloadSpec,
        *,
        on_drift: OnDrift | str = OnDrift.RECONCILE,
        project: str | None = None,
    ) -> EndpointRef:
        """Make the workload described by ``spec`` exist, handling drift per ``on_drift``.

        Absent: created (``DRY_RUN`` only returns ``Plan("create")``). Present and different:
        ``RECONCILE`` patches the drifted fields, ``FAIL`` raises ``DriftError``, ``DRY_RUN``
        returns ``Plan("update")`` with the changes, ``WARN`` logs, ``IGNORE`` does nothing.
        Project: ``project=`` > ``spec.project`` > the client's.

        >>> ref = mgmt.ensure(spec, on_drift=OnDrift.DRY_RUN)  # doctest: +SKIP
        >>> ref.plan.action, ref.plan.fields  # doctest: +SKIP
        ('update', ['model_name'])
        """
        return _http.run_steps(_ensure_steps(spec, on_drift, project, self.project), self._call)

    def delete(self, workload_slug: str, *, project: str | None = None) -> bool:
        """Delete the workload with this exact slug. True if deleted, False if it was absent.

        >>> mgmt.delete("support-bot")  # doctest: +SKIP
        True
        """
        return _http.run_steps(_delete_steps(workload_slug, self._project(project)), self._call)

    def list(self, *, project: str | None = None) -> builtins.list[Workload]:
        """The project's workloads.

        >>> [w.slug for w in mgmt.list()]  # doctest: +SKIP
        ['support-bot']
        """
        return _http.run_steps(_list_steps(self._project(project)), self._call)

    def get(self, workload_slug: str, *, project: str | None = None) -> Workload:
        """The workload with this exact slug; ``NotFoundError`` if there is none.

        >>> mgmt.get("support-bot").model_name  # doctest: +SKIP
        'qwen2.5:0.5b'
        """
        return _http.run_steps(_get_steps(workload_slug, self._project(project)), self._call)

    def wait_until_ready(
        self,
        workload_slug: str,
        *,
        project: str | None = None,
        timeout: float = 600.0,
        on_progress: ProgressCallback | None = None,
        silent: bool = False,
    ) -> None:
        """Block until the workload serves, following the Manager's readiness stream.

        Each event (``ReadinessEvent``) goes to ``on_progress``; without one, a
        ``ProgressRenderer`` shows them on stderr unless ``silent``. A dropped stream or a
        502/503/504 is retried (1 s, 2 s, 4 s, then every 5 s). Raises ``ApiError`` if the
        workload fails to become ready, builtin ``TimeoutError`` after ``timeout`` seconds,
        and the typed error of any other failed answer (``NotFoundError``, ``AuthError``, ...).

        >>> ref = mgmt.ensure(spec)  # doctest: +SKIP
        >>> mgmt.wait_until_ready(ref.workload_slug, timeout=900)  # doctest: +SKIP
        """
        steps = _wait_steps(workload_slug, self._project(project), timeout, on_progress, silent)
        _sse.run_stream_steps(steps, self._client, self.base_url)

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncManagementClient(_ManagementBase):
    """``ManagementClient`` for asyncio: the same methods, awaited.

    >>> async with AsyncManagementClient.from_env() as mgmt:  # doctest: +SKIP
    ...     ref = await mgmt.ensure(spec)
    ...     await mgmt.delete(ref.workload_slug)
    True
    """

    def __init__(
        self, *, base_url: str, sdk_token: str, project: str | None = None, timeout: float = 30.0
    ) -> None:
        super().__init__(base_url=base_url, sdk_token=sdk_token, project=project, timeout=timeout)
        self._client = httpx.AsyncClient(headers=self._headers, timeout=timeout)

    @classmethod
    def from_env(
        cls,
        *,
        base_url: str | None = None,
        project: str | None = None,
        sdk_token: str | None = None,
    ) -> AsyncManagementClient:
        """Build a client from arguments, falling back to the environment (as the sync one).

        >>> mgmt = AsyncManagementClient.from_env(project="acme")  # doctest: +SKIP
        """
        return cls(**cls._env_kwargs(base_url, project, sdk_token))

    async def _call(self, call: Call) -> Any:
        return await _http.send_async(self._client, self.base_url, call)

    async def ensure(
        self,
        spec: WorkloadSpec,
        *,
        on_drift: OnDrift | str = OnDrift.RECONCILE,
        project: str | None = None,
    ) -> EndpointRef:
        """Make the workload described by ``spec`` exist; see ``ManagementClient.ensure``.

        >>> ref = await mgmt.ensure(spec)  # doctest: +SKIP
        """
        return await _http.run_steps_async(
            _ensure_steps(spec, on_drift, project, self.project), self._call
        )

    async def delete(self, workload_slug: str, *, project: str | None = None) -> bool:
        """Delete the workload with this exact slug. True if deleted, False if it was absent.

        >>> await mgmt.delete("support-bot")  # doctest: +SKIP
        True
        """
        return await _http.run_steps_async(
            _delete_steps(workload_slug, self._project(project)), self._call
        )

    async def list(self, *, project: str | None = None) -> builtins.list[Workload]:
        """The project's workloads.

        >>> [w.slug for w in await mgmt.list()]  # doctest: +SKIP
        ['support-bot']
        """
        return await _http.run_steps_async(_list_steps(self._project(project)), self._call)

    async def get(self, workload_slug: str, *, project: str | None = None) -> Workload:
        """The workload with this exact slug; ``NotFoundError`` if there is none.

        >>> (await mgmt.get("support-bot")).model_name  # doctest: +SKIP
        'qwen2.5:0.5b'
        """
        return await _http.run_steps_async(
            _get_steps(workload_slug, self._project(project)), self._call
        )

    async def wait_until_ready(
        self,
        workload_slug: str,
        *,
        project: str | None = None,
        timeout: float = 600.0,
        on_progress: ProgressCallback | None = None,
        silent: bool = False,
    ) -> None:
        """Wait until the workload serves; see ``ManagementClient.wait_until_ready``.

        >>> await mgmt.wait_until_ready("support-bot", on_progress=print)  # doctest: +SKIP
        """
        steps = _wait_steps(workload_slug, self._project(project), timeout, on_progress, silent)
        await _sse.run_stream_steps_async(steps, self._client, self.base_url)

    async def close(self) -> None:
        """Release the connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> AsyncManagementClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
