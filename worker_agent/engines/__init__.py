"""One recipe per backend; `engine_for("vllm")` gives the engine for a workload's backend."""

from __future__ import annotations

from worker_agent.engines.base import Engine, EngineCommandError, flag_value
from worker_agent.engines.llamacpp import LlamaCppEngine
from worker_agent.engines.ollama import OllamaEngine
from worker_agent.engines.sglang import SglangEngine
from worker_agent.engines.vllm import VllmEngine
from worker_agent.engines.vllm_omni import VllmOmniEngine

ENGINES: dict[str, Engine] = {
    engine.backend: engine
    for engine in (
        VllmEngine(),
        VllmOmniEngine(),
        SglangEngine(),
        OllamaEngine(),
        LlamaCppEngine(),
    )
}


def engine_for(backend: str) -> Engine:
    try:
        return ENGINES[backend]
    except KeyError:
        raise ValueError(
            f"unknown backend {backend!r}: this agent runs {', '.join(sorted(ENGINES))}"
        ) from None


def container_entrypoints() -> dict[str, str]:
    """argv[0] as users write it -> the engine binary inside the engine's image."""
    return {
        engine.default_command("model")[0]: engine.container_binary
        for engine in ENGINES.values()
        if engine.container_binary
    }


__all__ = [
    "ENGINES",
    "Engine",
    "EngineCommandError",
    "container_entrypoints",
    "engine_for",
    "flag_value",
]
