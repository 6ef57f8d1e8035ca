"""A tenant's custom backend: its package served by the SDK's runtime, from a venv of its own.

    <venv>/bin/python -m inferencekey.backend.serve --port <port> --backend <module:Class>

with ``PYTHONPATH`` naming the unpacked package, then the agent's copy of the SDK, and
``IK_BACKEND_CONFIG`` the workload's config as JSON. Readiness is ``/healthz`` (200 once
``setup()`` is done); the runtime always listens on 127.0.0.1, so it runs as a plain process on
the agent's host whatever runtime the agent uses for images. There is one instance per replica:
the recipe needs the replica's package (``CustomBackendRef``) and, to launch, where the agent
installed it (``BackendInstall``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import ClassVar

from ik_contracts.engines.base import Engine
from ik_contracts.protocol import CustomBackendRef

SERVE_MODULE = "inferencekey.backend.serve"


@dataclass(frozen=True)
class BackendInstall:
    """A package ready to serve: its venv's interpreter, the import path, the entrypoint."""

    python: str  # <venv>/bin/python
    pythonpath: tuple[str, ...]  # the unpacked package first, then the SDK
    entrypoint: str  # module:Class


class CustomBackendEngine(Engine):
    default_image = ""
    command_prefixes: ClassVar[tuple[tuple[str, ...], ...]] = ()
    port_flags = ("--port",)
    # Placed like llama.cpp (manager/placement.py): memory on one GPU, shared, or none at all
    # when its package says cpu_only.
    gpu_claim = "shared"
    health_path = "/healthz"
    stream_usage_on_request = False
    # The agent bridges these async-only kinds to the backend's /process (ik_contracts.bridging).
    job_routes: ClassVar[dict[str, str]] = {"classification": "classify", "reward": "pooling"}

    def __init__(self, ref: CustomBackendRef, install: BackendInstall | None = None) -> None:
        self.ref = ref
        self.install = install

    def with_install(self, install: BackendInstall) -> CustomBackendEngine:
        return CustomBackendEngine(self.ref, install)

    def image(self, vllm_version: str | None, overrides: dict[str, str]) -> str:
        raise NotImplementedError("a custom backend runs as a plain process, from no image")

    def build_argv(
        self, command: str | None, model_name: str, host: str, port: int
    ) -> tuple[list[str], list[str]]:
        """The runtime's command line; ``host`` is not used (it listens on 127.0.0.1 only)."""
        python = self.install.python if self.install else "python"
        entrypoint = self.install.entrypoint if self.install else self.ref.entrypoint
        argv = [python, "-m", SERVE_MODULE, "--port", str(port), "--backend", entrypoint]
        notices = []
        if command is not None and command.strip():
            notices.append("ignored the command: a custom backend serves its package's entrypoint")
        return argv, notices

    def env(self, host: str, port: int) -> dict[str, str]:
        env = {
            "IK_BACKEND_CONFIG": json.dumps(self.ref.config),
            "PYTHONUNBUFFERED": "1",
            # The venv and the package alone: nothing from the host user's site-packages.
            "PYTHONNOUSERSITE": "1",
        }
        if self.install is not None:
            env["PYTHONPATH"] = os.pathsep.join(self.install.pythonpath)
            env["IK_BACKEND_ENTRYPOINT"] = self.install.entrypoint
        return env
