"""The management plane: declare workloads with ``ensure()``, list them (or page through
them: ``iter_workloads``), get and delete them, wait for one to become ready, and run its
async surface: endpoint switches, webhook destinations, jobs and their deliveries.

``ManagementClient`` and ``AsyncManagementClient`` share one implementation: each operation
is a generator of HTTP calls (see ``_http``; ``_sse`` for the readiness stream) that the sync
client drives with ``httpx.Client`` and the async client with ``httpx.AsyncClient``.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
import pydantic

from . import _http, _jobs, _sse
from ._config import DEFAULT_BASE_URL
from ._config import from_env as _from_env
from ._config import present as _present
from ._http import NETWORK_ERROR_CODE, Call, Pause, Steps
from ._sse import NextFrame, OpenStream, StreamSignal, StreamSteps
from .enums import JobStatus, OnDrift, ReadinessPhase, wire_value
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
from .results import Job
from .spec import DriftItem, EndpointRef, Plan, WorkloadSpec, compute_drift
from .validation import redact_token, slugify
from .wire import (
    MAX_WORKLOAD_PAGE_SIZE,
    EndpointToggles,
    ReadinessEvent,
    WebhookDelivery,
    WebhookDestination,
    WebhookTestResult,
    Workload,
    WorkloadPage,
)

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
Model = TypeVar("Model", bound=pydantic.BaseModel)


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


def _check_page_size(limit: int, name: str) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ValidationError(f"validation error: {name} must be an integer")
    if not 1 <= limit <= MAX_WORKLOAD_PAGE_SIZE:
        raise ValidationError(
            f"validation error: {name} must be from 1 to {MAX_WORKLOAD_PAGE_SIZE}, got {limit}"
        )


def _page_steps(project: str, limit: int, after: str | None) -> Steps[WorkloadPage]:
    """One page of the list; an answer without ``next_cursor`` (a Manager that does not page
    answers every workload) is the last page."""
    answer = yield Call("GET", f"{_workloads_path(project)}{_query(limit=limit, after=after)}")
    items = _workload_items(answer)
    cursor = answer.get("next_cursor") if isinstance(answer, dict) else None
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise ApiError("json error: next_cursor is neither a non-empty string nor null")
    return WorkloadPage(workloads=[_workload(item) for item in items], next_cursor=cursor)


def _cursor_after(page: WorkloadPage, after: str | None) -> str | None:
    """The cursor of the page after ``page`` (None: it was the last), never the one just sent."""
    if page.next_cursor is not None and page.next_cursor == after:
        raise ApiError(f"json error: the page after cursor {after!r} names the same cursor")
    return page.next_cursor


def _get_steps(workload_slug: str, project: str) -> Steps[Workload]:
    live = _find(_workload_items((yield Call("GET", _workloads_path(project)))), workload_slug)
    if live is None:
        raise NotFoundError(
            f'not found: workload "{workload_slug}" not found in project "{project}"',
            code="workload_not_found",
        )
    return _workload(live)


# --- the async surface: endpoint switches, webhooks, jobs, deliveries ------------------------


def _invalid(reason: str) -> ValidationError:
    return ValidationError(f"validation error: {reason}")


def _id_segment(value: str, name: str) -> str:
    """``value`` as a path segment; a blank one would address the collection instead."""
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"{name} must not be empty")
    return quote(value, safe="")


def _model(model: type[Model], answer: Any, what: str) -> Model:
    try:
        return model.model_validate(answer)
    except pydantic.ValidationError as exc:
        raise ApiError(f"json error: unexpected {what} shape: {exc}") from exc


def _items(answer: Any, key: str) -> builtins.list[Any]:
    items = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(items, builtins.list):
        raise ApiError(f'json error: expected {{"{key}": [...]}}')
    return items


def _workload_route_steps(workload_slug: str, project: str) -> Steps[str]:
    """The workload's control path, once it is found in ``project`` (``NotFoundError`` if not).

    Looking it up in the project's list, as ``get`` and ``delete`` do, makes a token of
    another project a 403 rather than a silent change to a same-named workload of its own.
    """
    workload = yield from _get_steps(workload_slug, project)
    return _workload_path(workload.slug)


def _toggles_body(toggles: Mapping[str, bool]) -> dict[str, bool]:
    if not isinstance(toggles, Mapping) or not toggles:
        raise _invalid("toggles must not be empty")
    if not all(isinstance(name, str) and isinstance(on, bool) for name, on in toggles.items()):
        raise _invalid("toggles must map endpoint names to True or False")
    return dict(toggles)


def _endpoints_steps(
    workload_slug: str, project: str, toggles: Mapping[str, bool] | None
) -> Steps[dict[str, bool]]:
    """Read the switches, or change ``toggles`` when given; either way all of them come back."""
    body = None if toggles is None else {"endpoints": _toggles_body(toggles)}
    route = yield from _workload_route_steps(workload_slug, project)
    call = (
        Call("GET", f"{route}/endpoints")
        if body is None
        else Call("PATCH", f"{route}/endpoints", body)
    )
    return dict(_model(EndpointToggles, (yield call), "endpoints").endpoints)


def _add_webhook_steps(
    workload_slug: str, project: str, url: str, enabled: bool
) -> Steps[WebhookDestination]:
    if not isinstance(url, str) or not url.strip():
        raise _invalid("url must not be empty")
    route = yield from _workload_route_steps(workload_slug, project)
    answer = yield Call("POST", f"{route}/webhooks", {"url": url, "enabled": enabled})
    return _model(WebhookDestination, answer, "webhook destination")


def _list_webhooks_steps(
    workload_slug: str, project: str
) -> Steps[builtins.list[WebhookDestination]]:
    route = yield from _workload_route_steps(workload_slug, project)
    items = _items((yield Call("GET", f"{route}/webhooks")), "webhooks")
    return [_model(WebhookDestination, item, "webhook destination") for item in items]


def _update_webhook_steps(
    workload_slug: str,
    project: str,
    destination_id: str,
    enabled: bool | None,
    url: str | None,
) -> Steps[WebhookDestination]:
    destination = _id_segment(destination_id, "destination_id")
    if enabled is None and url is None:
        raise _invalid("provide enabled or url")
    if url is not None and (not isinstance(url, str) or not url.strip()):
        raise _invalid("url must not be empty")
    body: dict[str, Any] = {}
    if enabled is not None:
        body["enabled"] = enabled
    if url is not None:
        body["url"] = url
    route = yield from _workload_route_steps(workload_slug, project)
    answer = yield Call("PATCH", f"{route}/webhooks/{destination}", body)
    return _model(WebhookDestination, answer, "webhook destination")


def _delete_webhook_steps(workload_slug: str, project: str, destination_id: str) -> Steps[None]:
    destination = _id_segment(destination_id, "destination_id")
    route = yield from _workload_route_steps(workload_slug, project)
    yield Call("DELETE", f"{route}/webhooks/{destination}")


def _test_webhook_steps(
    workload_slug: str, project: str, destination_id: str
) -> Steps[WebhookTestResult]:
    destination = _id_segment(destination_id, "destination_id")
    route = yield from _workload_route_steps(workload_slug, project)
    answer = yield Call("POST", f"{route}/webhooks/{destination}/test")
    return _model(WebhookTestResult, answer, "webhook test result")


def _query(**params: object) -> str:
    given = {name: wire_value(value) for name, value in params.items() if value is not None}
    return f"?{urlencode(given)}" if given else ""


def _list_jobs_steps(
    workload_slug: str, project: str, status: JobStatus | str | None, limit: int | None
) -> Steps[builtins.list[Job]]:
    route = yield from _workload_route_steps(workload_slug, project)
    answer = yield Call("GET", f"{route}/jobs{_query(status=status, limit=limit)}")
    return _jobs.jobs_from_answer(answer)


def _list_deliveries_steps(
    workload_slug: str, project: str, status: str | None
) -> Steps[builtins.list[WebhookDelivery]]:
    route = yield from _workload_route_steps(workload_slug, project)
    items = _items((yield Call("GET", f"{route}/deliveries{_query(status=status)}")), "deliveries")
    return [_model(WebhookDelivery, item, "webhook delivery") for item in items]


def _redeliver_steps(workload_slug: str, project: str, delivery_id: str) -> Steps[WebhookDelivery]:
    delivery = _id_segment(delivery_id, "delivery_id")
    route = yield from _workload_route_steps(workload_slug, project)
    answer = yield Call("POST", f"{route}/deliveries/{delivery}/redeliver")
    return _model(WebhookDelivery, answer, "webhook delivery")


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

    def list_workloads(
        self, *, limit: int, after: str | None = None, project: str | None = None
    ) -> WorkloadPage:
        """One page of the project's workloads, in creation order: at most ``limit`` (1 to
        1000) after the cursor ``after``; ``next_cursor`` is the next page's (None: the last).

        >>> page = mgmt.list_workloads(limit=100)  # doctest: +SKIP
        >>> while page.next_cursor:  # doctest: +SKIP
        ...     page = mgmt.list_workloads(limit=100, after=page.next_cursor)
        """
        _check_page_size(limit, "limit")
        steps = _page_steps(self._project(project), limit, after)
        return _http.run_steps(steps, self._call)

    def iter_workloads(
        self, *, page_size: int = 500, project: str | None = None
    ) -> Iterator[Workload]:
        """Every workload of the project, in creation order, read a page at a time.

        A workload created or deleted meanwhile makes no other one skip or repeat.

        >>> sum(1 for w in mgmt.iter_workloads() if w.status.phase == "ready")  # doctest: +SKIP
        9412
        """
        _check_page_size(page_size, "page_size")
        resolved = self._project(project)

        def pages() -> Iterator[Workload]:
            after: str | None = None
            while True:
                steps = _page_steps(resolved, page_size, after)
                page = _http.run_steps(steps, self._call)
                yield from page.workloads
                after = _cursor_after(page, after)
                if after is None:
                    return

        return pages()

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

    def endpoints(self, workload_slug: str, *, project: str | None = None) -> dict[str, bool]:
        """The workload's endpoint switches: route name to on or off.

        ``jobs`` is the master switch of async jobs; the others are the routes of the
        workload's task type (``chat``, ``completions``, ``embeddings``, ...), sync and async.

        >>> mgmt.endpoints("support-bot")  # doctest: +SKIP
        {'jobs': False, 'chat': True, 'completions': True}
        """
        steps = _endpoints_steps(workload_slug, self._project(project), None)
        return _http.run_steps(steps, self._call)

    def set_endpoints(
        self, workload_slug: str, toggles: Mapping[str, bool], *, project: str | None = None
    ) -> dict[str, bool]:
        """Turn endpoints on or off (those not named stay as they are); returns all switches.

        >>> mgmt.set_endpoints("support-bot", {"completions": False})  # doctest: +SKIP
        {'jobs': True, 'chat': True, 'completions': False}
        """
        steps = _endpoints_steps(workload_slug, self._project(project), toggles)
        return _http.run_steps(steps, self._call)

    def add_webhook(
        self, workload_slug: str, url: str, *, enabled: bool = True, project: str | None = None
    ) -> WebhookDestination:
        """Add a destination for the workload's job results (``https://``, publicly reachable).

        The answer is the only one that carries the signing ``secret``: keep it to verify
        deliveries (``inferencekey.webhooks.verify``).

        >>> hook = mgmt.add_webhook("support-bot", "https://example.com/hooks/ik")  # doctest: +SKIP
        >>> hook.id, hook.secret[:6]  # doctest: +SKIP
        ('whd_...', 'whsec_')
        """
        steps = _add_webhook_steps(workload_slug, self._project(project), url, enabled)
        return _http.run_steps(steps, self._call)

    def list_webhooks(
        self, workload_slug: str, *, project: str | None = None
    ) -> builtins.list[WebhookDestination]:
        """The workload's webhook destinations (without their secrets).

        >>> [hook.url for hook in mgmt.list_webhooks("support-bot")]  # doctest: +SKIP
        ['https://example.com/hooks/ik']
        """
        steps = _list_webhooks_steps(workload_slug, self._project(project))
        return _http.run_steps(steps, self._call)

    def update_webhook(
        self,
        workload_slug: str,
        destination_id: str,
        *,
        enabled: bool | None = None,
        url: str | None = None,
        project: str | None = None,
    ) -> WebhookDestination:
        """Mute or unmute a destination, or change its URL; it keeps its secret.

        >>> mgmt.update_webhook("support-bot", hook.id, enabled=False).enabled  # doctest: +SKIP
        False
        """
        steps = _update_webhook_steps(
            workload_slug, self._project(project), destination_id, enabled, url
        )
        return _http.run_steps(steps, self._call)

    def delete_webhook(
        self, workload_slug: str, destination_id: str, *, project: str | None = None
    ) -> None:
        """Remove a destination; ``NotFoundError`` if the workload has none with this id.

        >>> mgmt.delete_webhook("support-bot", hook.id)  # doctest: +SKIP
        """
        steps = _delete_webhook_steps(workload_slug, self._project(project), destination_id)
        _http.run_steps(steps, self._call)

    def test_webhook(
        self, workload_slug: str, destination_id: str, *, project: str | None = None
    ) -> WebhookTestResult:
        """Send the destination a signed ``ping`` now and report what it answered.

        >>> mgmt.test_webhook("support-bot", hook.id)  # doctest: +SKIP
        WebhookTestResult(delivered=True, status_code=204, error=None, duration_ms=41.5)
        """
        steps = _test_webhook_steps(workload_slug, self._project(project), destination_id)
        return _http.run_steps(steps, self._call)

    def list_jobs(
        self,
        workload_slug: str,
        *,
        status: JobStatus | str | None = None,
        limit: int | None = None,
        project: str | None = None,
    ) -> builtins.list[Job]:
        """The workload's jobs; ``status`` (a ``JobStatus``) and ``limit`` narrow the list.

        >>> [job.job_id for job in mgmt.list_jobs("support-bot", status="failed")]  # doctest: +SKIP
        ['7d0c5b1e-...']
        """
        steps = _list_jobs_steps(workload_slug, self._project(project), status, limit)
        return _http.run_steps(steps, self._call)

    def list_deliveries(
        self, workload_slug: str, *, status: str | None = None, project: str | None = None
    ) -> builtins.list[WebhookDelivery]:
        """The workload's result deliveries, each with its attempts; ``status`` is one of
        ``pending``, ``delivered``, ``terminal``, ``skipped``.

        >>> stuck = mgmt.list_deliveries("support-bot", status="terminal")  # doctest: +SKIP
        >>> [delivery.last_error for delivery in stuck]  # doctest: +SKIP
        ['HTTP 500']
        """
        steps = _list_deliveries_steps(workload_slug, self._project(project), status)
        return _http.run_steps(steps, self._call)

    def redeliver(
        self, workload_slug: str, delivery_id: str, *, project: str | None = None
    ) -> WebhookDelivery:
        """Queue a delivery again (after fixing the receiver, say); it is ``pending`` again.

        >>> mgmt.redeliver("support-bot", delivery.id).status  # doctest: +SKIP
        'pending'
        """
        steps = _redeliver_steps(workload_slug, self._project(project), delivery_id)
        return _http.run_steps(steps, self._call)

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

    async def list_workloads(
        self, *, limit: int, after: str | None = None, project: str | None = None
    ) -> WorkloadPage:
        """One page of the project's workloads; see ``ManagementClient.list_workloads``.

        >>> page = await mgmt.list_workloads(limit=100)  # doctest: +SKIP
        """
        _check_page_size(limit, "limit")
        steps = _page_steps(self._project(project), limit, after)
        return await _http.run_steps_async(steps, self._call)

    def iter_workloads(
        self, *, page_size: int = 500, project: str | None = None
    ) -> AsyncIterator[Workload]:
        """Every workload of the project, a page at a time; see
        ``ManagementClient.iter_workloads``.

        >>> slugs = [w.slug async for w in mgmt.iter_workloads()]  # doctest: +SKIP
        """
        _check_page_size(page_size, "page_size")
        resolved = self._project(project)

        async def pages() -> AsyncIterator[Workload]:
            after: str | None = None
            while True:
                steps = _page_steps(resolved, page_size, after)
                page = await _http.run_steps_async(steps, self._call)
                for workload in page.workloads:
                    yield workload
                after = _cursor_after(page, after)
                if after is None:
                    return

        return pages()

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

    async def endpoints(self, workload_slug: str, *, project: str | None = None) -> dict[str, bool]:
        """The workload's endpoint switches; see ``ManagementClient.endpoints``.

        >>> await mgmt.endpoints("support-bot")  # doctest: +SKIP
        {'jobs': False, 'chat': True, 'completions': True}
        """
        steps = _endpoints_steps(workload_slug, self._project(project), None)
        return await _http.run_steps_async(steps, self._call)

    async def set_endpoints(
        self, workload_slug: str, toggles: Mapping[str, bool], *, project: str | None = None
    ) -> dict[str, bool]:
        """Turn endpoints on or off; see ``ManagementClient.set_endpoints``.

        >>> await mgmt.set_endpoints("support-bot", {"jobs": True})  # doctest: +SKIP
        """
        steps = _endpoints_steps(workload_slug, self._project(project), toggles)
        return await _http.run_steps_async(steps, self._call)

    async def add_webhook(
        self, workload_slug: str, url: str, *, enabled: bool = True, project: str | None = None
    ) -> WebhookDestination:
        """Add a destination, with its secret; see ``ManagementClient.add_webhook``.

        >>> hook = await mgmt.add_webhook("support-bot", "https://x.test/hook")  # doctest: +SKIP
        """
        steps = _add_webhook_steps(workload_slug, self._project(project), url, enabled)
        return await _http.run_steps_async(steps, self._call)

    async def list_webhooks(
        self, workload_slug: str, *, project: str | None = None
    ) -> builtins.list[WebhookDestination]:
        """The workload's webhook destinations; see ``ManagementClient.list_webhooks``.

        >>> hooks = await mgmt.list_webhooks("support-bot")  # doctest: +SKIP
        """
        steps = _list_webhooks_steps(workload_slug, self._project(project))
        return await _http.run_steps_async(steps, self._call)

    async def update_webhook(
        self,
        workload_slug: str,
        destination_id: str,
        *,
        enabled: bool | None = None,
        url: str | None = None,
        project: str | None = None,
    ) -> WebhookDestination:
        """Mute, unmute or move a destination; see ``ManagementClient.update_webhook``.

        >>> await mgmt.update_webhook("support-bot", hook.id, enabled=False)  # doctest: +SKIP
        """
        steps = _update_webhook_steps(
            workload_slug, self._project(project), destination_id, enabled, url
        )
        return await _http.run_steps_async(steps, self._call)

    async def delete_webhook(
        self, workload_slug: str, destination_id: str, *, project: str | None = None
    ) -> None:
        """Remove a destination; see ``ManagementClient.delete_webhook``.

        >>> await mgmt.delete_webhook("support-bot", hook.id)  # doctest: +SKIP
        """
        steps = _delete_webhook_steps(workload_slug, self._project(project), destination_id)
        await _http.run_steps_async(steps, self._call)

    async def test_webhook(
        self, workload_slug: str, destination_id: str, *, project: str | None = None
    ) -> WebhookTestResult:
        """Send a signed ``ping`` now; see ``ManagementClient.test_webhook``.

        >>> (await mgmt.test_webhook("support-bot", hook.id)).delivered  # doctest: +SKIP
        True
        """
        steps = _test_webhook_steps(workload_slug, self._project(project), destination_id)
        return await _http.run_steps_async(steps, self._call)

    async def list_jobs(
        self,
        workload_slug: str,
        *,
        status: JobStatus | str | None = None,
        limit: int | None = None,
        project: str | None = None,
    ) -> builtins.list[Job]:
        """The workload's jobs; see ``ManagementClient.list_jobs``.

        >>> jobs = await mgmt.list_jobs("support-bot", limit=10)  # doctest: +SKIP
        """
        steps = _list_jobs_steps(workload_slug, self._project(project), status, limit)
        return await _http.run_steps_async(steps, self._call)

    async def list_deliveries(
        self, workload_slug: str, *, status: str | None = None, project: str | None = None
    ) -> builtins.list[WebhookDelivery]:
        """The workload's result deliveries; see ``ManagementClient.list_deliveries``.

        >>> stuck = await mgmt.list_deliveries("support-bot", status="terminal")  # doctest: +SKIP
        """
        steps = _list_deliveries_steps(workload_slug, self._project(project), status)
        return await _http.run_steps_async(steps, self._call)

    async def redeliver(
        self, workload_slug: str, delivery_id: str, *, project: str | None = None
    ) -> WebhookDelivery:
        """Queue a delivery again; see ``ManagementClient.redeliver``.

        >>> await mgmt.redeliver("support-bot", delivery.id)  # doctest: +SKIP
        """
        steps = _redeliver_steps(workload_slug, self._project(project), delivery_id)
        return await _http.run_steps_async(steps, self._call)

    async def close(self) -> None:
        """Release the connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> AsyncManagementClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
