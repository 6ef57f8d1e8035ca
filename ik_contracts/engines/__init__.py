"""One recipe per backend; `engine_for("vllm")` gives the engine for a workload's backend, and
`engine_for(slug, custom_backend=ref)` the recipe of a tenant's custom backend."""

from __future__ import annotations

from inferencekey.enums import Backend

from ik_contracts.engines.base import Engine, EngineCommandError, flag_value
from ik_contracts.engines.custom import BackendInstall, CustomBackendEngine
from ik_contracts.engines.llamacpp import LlamaCppEngine
from ik_contracts.engines.ollama import OllamaEngine
from ik_contracts.engines.sdcpp import StableDiffusionCppEngine
from ik_contracts.engines.sglang import SglangEngine
from ik_contracts.engines.vllm import VllmEngine
from ik_contracts.engines.vllm_omni import VllmOmniEngine
from ik_contracts.protocol import CustomBackendRef

ENGINES: dict[str, Engine] = {
    engine.backend.value: engine
    for engine in (
        VllmEngine(),
        VllmOmniEngine(),
        SglangEngine(),
        OllamaEngine(),
        LlamaCppEngine(),
        StableDiffusionCppEngine(),
    )
}

# The SDK's backends that have a recipe here, in the SDK's order: what a Manager accepts and an
# agent runs.
BUILTIN_BACKENDS: tuple[str, ...] = tuple(
    dict.fromkeys(backend.value for backend in Backend if backend.value in ENGINES)
)


def engine_for(backend: str, custom_backend: CustomBackendRef | None = None) -> Engine:
    """The built-in engine named ``backend``, else, when the replica comes with a custom
    backend's package, that package's recipe; ValueError for any other backend."""
    engine = ENGINES.get(backend)
    if engine is not None:
        return engine
    if custom_backend is not None:
        return CustomBackendEngine(custom_backend)
    raise ValueError(
        f"unknown backend {backend!r}: this agent runs {', '.join(sorted(ENGINES))} "
        "and the custom backends its Manager sends"
    )


def container_entrypoints() -> dict[str, str]:
    """argv[0] as users write it -> the engine binary inside the engine's image."""
    return {
        engine.default_command("model")[0]: engine.container_binary
        for engine in ENGINES.values()
        if engine.container_binary
    }


__all__ = [
    "BUILTIN_BACKENDS",
    "ENGINES",
    "BackendInstall",
    "CustomBackendEngine",
    "Engine",
    "EngineCommandError",
    "container_entrypoints",
    "engine_for",
    "flag_value",
]
