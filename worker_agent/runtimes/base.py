"""How the agent launches engines: a Runtime runs one engine per replica and finds them again.

Every runtime keeps what it launched findable after an agent restart (a record file, container
labels), so `running()` after a restart reports the engines of the previous run (adoption).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

# What an engine may see of the agent's environment: an allow-list, never the whole of it, so
# the agent's own credential (INFERENCEKEY_AGENT_TOKEN) and anything else of the host's stays
# out of reach of the model server and of every process it runs.
PASSTHROUGH_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY")
# What a plain process needs to run at all (the docker runtime's image brings its own).
_PROCESS_ENV = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"}
)
_PROCESS_ENV_PREFIXES = (
    "LC_",
    "CUDA_",
    "NVIDIA_",
    "NCCL_",
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "VLLM_",
    "SGLANG_",
    "OLLAMA_",
    "LLAMA_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "XDG_",
)


# Variables a custom backend never gets even when an allowed prefix matches (HF_HUB_TOKEN, ...).
_CREDENTIAL_NAME = re.compile(r"TOKEN|API_KEY|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def process_engine_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of the agent's environment that an engine process inherits."""
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith("INFERENCEKEY_")
        and (
            name in _PROCESS_ENV
            or name in PASSTHROUGH_ENV
            or name.startswith(_PROCESS_ENV_PREFIXES)
        )
    }


def custom_backend_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What a custom backend's process (and uv building it) inherits: the engine allow-list
    without the model-download tokens or any other credential-named variable. Its code is a
    tenant's, run as the agent's OS user."""
    return {
        name: value
        for name, value in process_engine_env(environ).items()
        if name not in PASSTHROUGH_ENV and not _CREDENTIAL_NAME.search(name)
    }


@dataclass(frozen=True)
class LaunchSpec:
    replica_id: str
    workload_id: str
    worker_id: str
    argv: list[str]  # argv[0] is the engine binary name as the user wrote it
    env: dict[str, str]
    gpu_uuids: list[str]
    port: int
    image: str | None
    # Run on the host as a plain process whatever the agent's runtime, with custom_backend_env
    # (custom backends).
    plain_process: bool = False


@dataclass(frozen=True)
class RunningEngine:
    replica_id: str
    port: int
    alive: bool
    exit_code: int | None


class LogStream(Protocol):
    """An engine's log: the last lines, then (following) what it writes next. Blocking: iterate
    it in a thread; ``close()`` from any thread ends it."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class LaunchError(RuntimeError):
    """The engine could not be started at all (binary or image missing); the message says why."""


class Runtime(Protocol):
    name: str  # "docker" | "process"
    # The address the engine must listen on (pass it to Engine.build_argv); whatever it is, the
    # engine answers the agent at http://127.0.0.1:<port>.
    bind_host: str

    def start(self, spec: LaunchSpec) -> None: ...

    def stop(self, replica_id: str, timeout_s: float = 10) -> None: ...  # idempotent

    def running(self) -> dict[str, RunningEngine]: ...

    def log_tail(self, replica_id: str, lines: int = 40) -> str: ...

    def log_stream(self, replica_id: str, tail: int, follow: bool) -> LogStream: ...
