"""The custom-backend runtime: one backend served over loopback HTTP (contract section 1d).

Standard library only, so it runs in whatever environment the worker builds for a backend.

=======  ===========  =====================================================================
GET      /healthz     503 ``{"status": "loading"}`` until ``setup()`` is done, then 200 ``ok``
GET      /meta        200 ``{"name", "version", "task_type", "requirements", "requires_python"}``
POST     /process     ``{"id", "input"}`` → 200 ``{"output": {...}}``
POST     /forecast    a ``ForecastRequest`` → 200 ``{"forecast": {...}}``; 501 if unsupported
=======  ===========  =====================================================================

Before ``setup()`` is done both POST routes answer 503 ``{"error": "backend not ready"}``; a bad
body or ``InvalidInput`` is a 400, any other exception a 500 (the server stays up), any other
route a 404. Every error body is ``{"error": "<message>"}``.

>>> serve_backend(MyBackend, 8000)  # doctest: +SKIP
model loaded
serving on http://127.0.0.1:8000
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, cast, overload
from urllib.parse import urlsplit

from ..errors import (
    BackendEntrypointError,
    BackendError,
    BackendSetupError,
    ConfigurationError,
)
from .base import CustomBackend
from .forecast import ForecastRequest, ForecastResult, forecast_answer
from .job import BackendContext, InvalidInput, Job, Result
from .manifest import ENTRYPOINT_PATTERN

# The only address a backend listens on: the worker reaches it over loopback, nothing else may.
HOST = "127.0.0.1"
MAX_BODY_BYTES = 16 * 1024 * 1024
# How long a connection may sit between requests or mid-request before it is closed.
_SOCKET_TIMEOUT_S = 120.0
# How often a blocking serve checks for a stop signal, and the HTTP loop for a stop.
_SIGNAL_POLL_S = 0.1
_SHUTDOWN_POLL_S = 0.05
_DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)

if TYPE_CHECKING:
    # Only for the type checker: the runtime also serves backends on Python 3.9.
    from typing import TypeAlias

    BackendTarget: TypeAlias = type[CustomBackend] | CustomBackend


class BackendServer:
    """A backend being served: HTTP in one thread, ``setup()`` in another.

    ``serve_backend(..., block=False)`` returns one; ``stop()`` ends it.

    >>> server = serve_backend(MyBackend, 0, block=False)  # doctest: +SKIP
    >>> server.wait_ready(timeout=30)  # doctest: +SKIP
    True
    >>> server.stop()  # doctest: +SKIP
    """

    def __init__(
        self, backend: CustomBackend, port: int, config: Mapping[str, Any] | None = None
    ) -> None:
        if config is not None and not isinstance(config, Mapping):
            raise ConfigurationError(
                f"backend config must be a JSON object, got {type(config).__name__}"
            )
        self.backend = backend
        self.config: dict[str, Any] = dict(config or {})
        self.setup_error: BaseException | None = None
        self.jobs = threading.BoundedSemaphore(max(1, int(backend.max_concurrency)))
        self._ready = threading.Event()
        self._settled = threading.Event()  # setup() returned or raised, or the server stopped
        self._finished = threading.Event()  # the server stopped (or never will serve again)
        self._stop_lock = threading.Lock()
        self._stop_requested = False
        try:
            self._httpd = _HTTPServer((HOST, port), _Handler, runtime=self)
        except OSError as exc:
            raise BackendError(f"could not listen on {HOST}:{port}: {exc}") from exc
        self.port: int = self._httpd.server_address[1]
        self._serving = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_S},
            name="ik-backend-http",
            daemon=True,
        )
        self._setting_up = threading.Thread(
            target=self._run_setup, name="ik-backend-setup", daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    @property
    def ready(self) -> bool:
        """Whether ``setup()`` has finished, so jobs are served."""
        return self._ready.is_set()

    def start(self) -> None:
        """Serve (``/healthz`` answers 503 at once) and run ``setup()`` in the background."""
        self._serving.start()
        self._setting_up.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for ``setup()``: True once ready, False if ``timeout`` ran out or it stopped.

        Raises ``BackendSetupError`` if ``setup()`` failed.
        """
        self._settled.wait(timeout)
        self._raise_setup_error()
        return self.ready

    def wait(self) -> None:
        """Block until the server stops: ``stop()``, SIGTERM or SIGINT (when ``serve_backend``
        blocks), or a failed ``setup()``, which raises ``BackendSetupError``."""
        while not self._finished.wait(_SIGNAL_POLL_S):
            if self._stop_requested:
                self.stop()
        self._raise_setup_error()

    def request_stop(self) -> None:
        """Ask a blocking ``wait()`` to stop the server (safe from a signal handler)."""
        self._stop_requested = True

    def stop(self) -> None:
        """Stop serving and close the socket; calling it again does nothing."""
        with self._stop_lock:
            if self._finished.is_set():
                return
            self._stop_requested = True
            if self._serving.is_alive():
                self._httpd.shutdown()
            self._httpd.server_close()
            self._finished.set()
            self._settled.set()

    def _run_setup(self) -> None:
        try:
            self.backend.setup(BackendContext(config=dict(self.config), port=self.port))
        except BaseException as exc:  # SystemExit from setup() is a failed setup too
            self.setup_error = exc
            self.stop()
            return
        if self._stop_requested:
            return
        _log("model loaded")
        self._ready.set()
        _log(f"serving on {self.url}")
        self._settled.set()

    def _raise_setup_error(self) -> None:
        if self.setup_error is not None:
            error = self.setup_error
            raise BackendSetupError(
                f"setup() of {self.backend.display_name()} failed: {type(error).__name__}: {error}"
            ) from error


@overload
def serve_backend(
    cls_or_instance: BackendTarget,
    port: int,
    config: Mapping[str, Any] | None = None,
    *,
    block: Literal[True] = True,
) -> None: ...


@overload
def serve_backend(
    cls_or_instance: BackendTarget,
    port: int,
    config: Mapping[str, Any] | None = None,
    *,
    block: Literal[False],
) -> BackendServer: ...


def serve_backend(
    cls_or_instance: BackendTarget,
    port: int,
    config: Mapping[str, Any] | None = None,
    *,
    block: bool = True,
) -> BackendServer | None:
    """Serve a backend on ``127.0.0.1:<port>`` (``0`` picks a free port).

    A class is instantiated with no arguments. ``setup(BackendContext(config, port))`` runs in
    the background; once it returns, ``model loaded`` and then ``serving on <url>`` are printed
    to stderr. With ``block=True`` (the default) this returns when SIGTERM or SIGINT arrives and
    raises ``BackendSetupError`` if ``setup()`` fails; with ``block=False`` it returns the
    running ``BackendServer`` at once.

    >>> from inferencekey.backend import serve_backend
    >>> if __name__ == "__main__":  # doctest: +SKIP
    ...     serve_backend(MyBackend, 8000, {"model": "small"})
    """
    server = BackendServer(instantiate_backend(cls_or_instance), port, config)
    if not block:
        server.start()
        return server
    with _stop_on_signals(server):
        server.start()
        server.wait()
    return None


def instantiate_backend(cls_or_instance: Any) -> CustomBackend:
    """The backend instance to serve: ``cls_or_instance`` itself, or a new one of the class."""
    if isinstance(cls_or_instance, CustomBackend):
        return cls_or_instance
    if not (isinstance(cls_or_instance, type) and issubclass(cls_or_instance, CustomBackend)):
        raise BackendEntrypointError(
            f"{cls_or_instance!r} is not a CustomBackend subclass or instance"
        )
    if inspect.isabstract(cls_or_instance):
        missing = ", ".join(sorted(getattr(cls_or_instance, "__abstractmethods__", ())))
        raise BackendEntrypointError(f"{cls_or_instance.__qualname__} does not implement {missing}")
    try:
        return cls_or_instance()
    except Exception as exc:
        raise BackendSetupError(
            f"could not create {cls_or_instance.__qualname__}: {type(exc).__name__}: {exc}"
        ) from exc


def load_entrypoint(entrypoint: str) -> BackendTarget:
    """Import ``"module:Class"`` (or ``"module:instance"``); ``BackendEntrypointError`` if that
    fails or it is not a ``CustomBackend``."""
    match = ENTRYPOINT_PATTERN.fullmatch(entrypoint.strip())
    if match is None:
        raise BackendEntrypointError(f"entrypoint {entrypoint!r} must look like 'module:Class'")
    module_name, attribute_path = match.groups()
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise BackendEntrypointError(
            f"could not import {module_name!r} (entrypoint {entrypoint!r}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for attribute in attribute_path.split("."):
        try:
            target = getattr(target, attribute)
        except AttributeError as exc:
            raise BackendEntrypointError(
                f"{module_name!r} has no attribute {attribute_path!r} (entrypoint {entrypoint!r})"
            ) from exc
    is_class = isinstance(target, type) and issubclass(target, CustomBackend)
    if not is_class and not isinstance(target, CustomBackend):
        raise BackendEntrypointError(
            f"entrypoint {entrypoint!r} is {target!r}, not a CustomBackend subclass"
        )
    return cast("BackendTarget", target)


@contextmanager
def _stop_on_signals(server: BackendServer) -> Iterator[None]:
    """SIGTERM and SIGINT stop the server cleanly while it blocks (main thread only)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.request_stop()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        runtime: BackendServer,
    ) -> None:
        self.runtime = runtime
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer's own resolves the host's FQDN, a DNS lookup nothing here needs.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away; nothing to answer
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _SOCKET_TIMEOUT_S

    @property
    def runtime(self) -> BackendServer:
        return cast(_HTTPServer, self.server).runtime

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: the backend's own output is what the worker shows."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, too many headers) as JSON."""
        self.close_connection = True
        self._answer(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def do_GET(self) -> None:
        self._close_if_body_unread()
        path = self._route()
        if path == "/healthz":
            if self.runtime.ready:
                self._answer(200, {"status": "ok"})
            else:
                self._answer(503, {"status": "loading"})
        elif path == "/meta":
            self._answer(200, self.runtime.backend.meta())
        else:
            self._not_found()

    def do_POST(self) -> None:
        path = self._route()
        if path not in ("/process", "/forecast"):
            self._not_found()
            return
        raw = self._read_body()
        if raw is None:
            return
        if not self.runtime.ready:
            self._answer(503, {"error": "backend not ready"})
            return
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
        except ValueError as exc:
            self._answer(400, {"error": f"invalid JSON body: {exc}"})
            return
        if path == "/process":
            self._process(body)
        else:
            self._forecast(body)

    def do_HEAD(self) -> None:
        self._not_found(with_body=False)

    def do_PUT(self) -> None:
        self._not_found()

    def do_PATCH(self) -> None:
        self._not_found()

    def do_DELETE(self) -> None:
        self._not_found()

    def do_OPTIONS(self) -> None:
        self._not_found()

    def _process(self, body: Any) -> None:
        if not isinstance(body, dict):
            self._answer(400, {"error": "body must be a JSON object"})
            return
        job_id, job_input = body.get("id"), body.get("input")
        if not isinstance(job_id, str) or not job_id.strip():
            self._answer(400, {"error": "id must be a non-empty string"})
            return
        if not isinstance(job_input, dict):
            self._answer(400, {"error": "input must be an object"})
            return
        backend = self.runtime.backend
        try:
            with self.runtime.jobs:
                result = backend.process(Job(id=job_id, input=job_input))
        except InvalidInput as exc:
            self._answer(400, {"error": str(exc)})
            return
        except Exception as exc:
            self._answer_failure("process", job_id, exc)
            return
        if not isinstance(result, Result):
            self._answer(
                500, {"error": f"process() must return a Result, got {type(result).__name__}"}
            )
            return
        self._answer(200, {"output": result.output}, failing="process")

    def _forecast(self, body: Any) -> None:
        backend = self.runtime.backend
        if type(backend).forecast is CustomBackend.forecast:
            self._answer(501, {"error": "backend does not support forecast"})
            return
        try:
            req = ForecastRequest.from_dict(body)
        except InvalidInput as exc:
            self._answer(400, {"error": str(exc)})
            return
        try:
            with self.runtime.jobs:
                result = backend.forecast(req)
        except NotImplementedError:
            self._answer(501, {"error": "backend does not support forecast"})
            return
        except InvalidInput as exc:
            self._answer(400, {"error": str(exc)})
            return
        except Exception as exc:
            self._answer_failure("forecast", req.id, exc)
            return
        if not isinstance(result, ForecastResult):
            self._answer(
                500,
                {"error": f"forecast() must return a ForecastResult, got {type(result).__name__}"},
            )
            return
        try:
            answer = forecast_answer(result, req)
        except (TypeError, ValueError) as exc:
            self._answer(500, {"error": str(exc)})
            return
        self._answer(200, answer, failing="forecast")

    def _answer_failure(self, method: str, job_id: str, exc: Exception) -> None:
        # The worker shows the backend's stderr: the traceback is where a user looks first.
        print(f"{method}() failed for {job_id!r}:", file=sys.stderr)
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        self._answer(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _route(self) -> str:
        return urlsplit(self.path).path

    def handle_expect_100(self) -> bool:
        # A body that will be refused is not asked for: the 400 comes instead of a 100.
        return self._body_problem() is not None or super().handle_expect_100()

    def _body_problem(self) -> str | None:
        lengths = self.headers.get_all("Content-Length") or []
        if (
            self.headers.get("Transfer-Encoding")
            or len(set(lengths)) != 1
            or not _DIGITS.fullmatch(lengths[0].strip())
        ):
            return "invalid Content-Length"
        if int(lengths[0]) > MAX_BODY_BYTES:
            return "request body too large"
        return None

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 400 (then the connection closes)."""
        problem = self._body_problem()
        if problem is None:
            length = int(self.headers["Content-Length"])
            body = self.rfile.read(length)
            if len(body) == length:
                return body
            problem = "invalid Content-Length"
        self.close_connection = True
        self._answer(400, {"error": problem})
        return None

    def _close_if_body_unread(self) -> None:
        # A body this route does not read would be taken for the next request: close instead.
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0") != "0":
            self.close_connection = True

    def _not_found(self, *, with_body: bool = True) -> None:
        self._close_if_body_unread()
        self._answer(404, {"error": "not found"}, with_body=with_body)

    def _answer(
        self,
        status: int,
        payload: dict[str, Any],
        *,
        failing: str | None = None,
        with_body: bool = True,
    ) -> None:
        try:
            data = json.dumps(payload, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            status = 500
            data = json.dumps({"error": f"{failing}() returned something not JSON: {exc}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if with_body:
            self.wfile.write(data)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
