"""Write, serve and package a custom backend: your own Python model server on InferenceKey.

Standard library only at run time: the worker serves a backend in an environment of its own.

>>> from inferencekey.backend import BackendContext, CustomBackend, Job, Result, pick_device
>>> class Reverse(CustomBackend):
...     name = "reverse"
...     version = "1.0.0"
...     task_type = "text2text"
...
...     def setup(self, ctx: BackendContext) -> None:
...         self.device = pick_device(ctx.config.get("device", "auto"))
...
...     def process(self, job: Job) -> Result:
...         return Result({"text": job.text()[::-1]})

Serve it locally with ``python -m inferencekey.backend.serve --port 8000 --backend
reverse:Reverse``, package it with ``python -m inferencekey.backend.package`` (or
``package_backend``), and publish it with ``inferencekey.publish_custom_backend``.
"""

from .base import CustomBackend
from .device import pick_device
from .forecast import DEFAULT_QUANTILE_LEVELS, ForecastRequest, ForecastResult, quantile_key
from .job import BackendContext, InvalidInput, Job, Result
from .manifest import SDK_PROTOCOL, TASK_TYPES, BackendManifest
from .packaging import (
    MAX_ARCHIVE_MEMBERS,
    MAX_MANIFEST_BYTES,
    MAX_UNPACKED_BYTES,
    BackendPackage,
    archive_format,
    package_backend,
    read_manifest_from_archive,
)
from .server import MAX_BODY_BYTES, BackendServer, load_entrypoint, serve_backend

__all__ = [
    "DEFAULT_QUANTILE_LEVELS",
    "MAX_ARCHIVE_MEMBERS",
    "MAX_BODY_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_UNPACKED_BYTES",
    "SDK_PROTOCOL",
    "TASK_TYPES",
    "BackendContext",
    "BackendManifest",
    "BackendPackage",
    "BackendServer",
    "CustomBackend",
    "ForecastRequest",
    "ForecastResult",
    "InvalidInput",
    "Job",
    "Result",
    "archive_format",
    "load_entrypoint",
    "package_backend",
    "pick_device",
    "quantile_key",
    "read_manifest_from_archive",
    "serve_backend",
]
