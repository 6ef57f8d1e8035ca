"""vLLM-Omni: `vllm-omni serve <model> …` for image and audio models; pinned like vLLM."""

from __future__ import annotations

from worker_agent.engines.base import Engine
from worker_agent.engines.vllm import pinned_image


class VllmOmniEngine(Engine):
    backend = "vllm-omni"
    default_image = "vllm/vllm-omni:latest"
    gpu_claim = "whole"
    # vllm-omni's own docs also start it as `vllm serve <model> --omni`.
    command_prefixes = (("vllm-omni", "serve"), ("vllm", "serve"))
    tensor_parallel_flags = ("--tensor-parallel-size", "-tp")
    served_model_flags = ("--served-model-name",)
    health_path = "/health"
    openai_routes = (
        "/v1/models",
        "/v1/chat/completions",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
    )

    def default_command(self, model_name: str) -> list[str]:
        return ["vllm-omni", "serve", model_name]

    def image(self, vllm_version: str | None, overrides: dict[str, str]) -> str:
        return pinned_image(self.backend, "vllm/vllm-omni", vllm_version, overrides)
