"""llama.cpp: `llama-server -m <file.gguf> …` (or `-hf <repo>`); shares GPUs by memory."""

from __future__ import annotations

from inferencekey.enums import Backend

from ik_contracts.engines.base import Engine, flag_value


class LlamaCppEngine(Engine):
    backend = Backend.LLAMACPP
    default_image = "ghcr.io/ggml-org/llama.cpp:server"
    container_binary = "/app/llama-server"
    gpu_claim = "shared"
    command_prefixes = (("llama-server",),)
    served_model_flags = ("--alias", "-a")
    health_path = "/health"
    metrics_path = "/metrics"
    metrics_flags = ("--metrics",)
    running_metrics = ("llamacpp:requests_processing",)
    waiting_metrics = ("llamacpp:requests_deferred",)
    kv_cache_metrics = ("llamacpp:kv_cache_usage_ratio",)

    def default_command(self, model_name: str) -> list[str]:
        if model_name.endswith(".gguf"):
            return ["llama-server", "-m", model_name]
        return ["llama-server", "-hf", model_name]

    def model_path(self, argv: list[str]) -> str | None:
        """The local GGUF the command loads, so memory can be estimated from its size."""
        return flag_value(argv, ("-m", "--model"))
