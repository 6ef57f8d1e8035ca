"""SGLang: `python -m sglang.launch_server --model-path <model> …` (or `sglang serve …`)."""

from __future__ import annotations

from worker_agent.engines.base import Engine


class SglangEngine(Engine):
    backend = "sglang"
    default_image = "lmsysorg/sglang:latest"
    gpu_claim = "whole"
    command_prefixes = (
        ("sglang", "serve"),
        ("python", "-m", "sglang.launch_server"),
        ("python3", "-m", "sglang.launch_server"),
    )
    tensor_parallel_flags = ("--tp-size", "--tp")
    served_model_flags = ("--served-model-name",)
    health_path = "/health"
    openai_routes = (
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/rerank",
        "/v1/audio/transcriptions",
    )

    def default_command(self, model_name: str) -> list[str]:
        return ["python3", "-m", "sglang.launch_server", "--model-path", model_name]
