"""The base class a custom backend is written against: load in setup(), answer in process().

>>> from inferencekey.backend import BackendContext, CustomBackend, Job, Result
>>> class Shout(CustomBackend):
...     name = "shout"
...     version = "1.0.0"
...     task_type = "text2text"
...
...     def setup(self, ctx: BackendContext) -> None:
...         self.suffix = ctx.config.get("suffix", "!")
...
...     def process(self, job: Job) -> Result:
...         return Result({"text": job.text().upper() + self.suffix})
>>> backend = Shout()
>>> backend.setup(BackendContext(config={}, port=0))
>>> backend.process(Job(id="job-1", input={"prompt": "hola"})).output
{'text': 'HOLA!'}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from .forecast import ForecastRequest, ForecastResult
from .job import BackendContext, Job, Result
from .manifest import BackendManifest


class CustomBackend(ABC):
    """Base class of a custom backend: load the model in ``setup()``, answer in ``process()``.

    Class attributes describe it (``/meta`` and ``manifest()`` read them): ``name`` (defaults
    to the class name), ``version``, ``task_type`` (one of ``TASK_TYPES`` or empty),
    ``requirements`` (pip lines), ``requires_python`` (a PEP 440 specifier or empty), and,
    for the manifest, ``description`` and ``cpu_only``.

    At most ``max_concurrency`` (default 1) calls of ``process()`` and ``forecast()`` run at
    once, each in its request's thread; ``/healthz`` and ``/meta`` answer meanwhile.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.1.0"
    task_type: ClassVar[str] = ""
    requirements: ClassVar[Sequence[str]] = ()
    requires_python: ClassVar[str] = ""
    description: ClassVar[str | None] = None
    cpu_only: ClassVar[bool] = False
    max_concurrency: ClassVar[int] = 1

    @abstractmethod
    def setup(self, ctx: BackendContext) -> None:
        """Load the model. Runs once, in the background, before any job; raising fails the
        backend (it never becomes ready, and the serve command exits 1)."""

    @abstractmethod
    def process(self, job: Job) -> Result:
        """Answer one job. Raise ``InvalidInput`` for a 400; any other exception is a 500."""

    def forecast(self, req: ForecastRequest) -> ForecastResult:
        """Answer one forecast (``POST /forecast``). Not overriding it answers 501."""
        raise NotImplementedError("backend does not support forecast")

    @classmethod
    def display_name(cls) -> str:
        """``name``, or the class name when it is empty."""
        return cls.name or cls.__name__

    @classmethod
    def meta(cls) -> dict[str, Any]:
        """What ``GET /meta`` answers."""
        return {
            "name": cls.display_name(),
            "version": cls.version,
            "task_type": cls.task_type,
            "requirements": list(cls.requirements),
            "requires_python": cls.requires_python,
        }

    @classmethod
    def manifest(cls) -> BackendManifest:
        """The manifest describing this class (its entrypoint is ``module:QualifiedName``)."""
        return BackendManifest(
            name=cls.display_name(),
            version=cls.version,
            entrypoint=f"{cls.__module__}:{cls.__qualname__}",
            task_type=cls.task_type,
            requires_python=cls.requires_python,
            description=cls.description,
            cpu_only=cls.cpu_only,
        )
