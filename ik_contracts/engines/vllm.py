"""vLLM: `vllm serve <model> …`, whole GPUs, image tag pinned by `vllm_version`."""

from __future__ import annotations

from typing import ClassVar

from inferencekey.enums import Backend

from ik_contracts.engines.base import Engine


class VllmEngine(Engine):
    backend = Backend.VLLM
    image_repository: ClassVar[str] = "vllm/vllm-openai"
    default_image = "vllm/vllm-openai:latest"
    container_binary: ClassVar[str | None] = "vllm"
    gpu_claim = "whole"
    command_prefixes: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("vllm", "serve"),
        ("python", "-m", "vllm.entrypoints.openai.api_server"),
    )
    tensor_parallel_flags = ("--tensor-parallel-size", "-tp")
    served_model_flags = ("--served-model-name",)
    health_path = "/health"
    metrics_path = "/metrics"
    running_metrics = ("vllm:num_requests_running",)
    waiting_metrics = ("vllm:num_requests_waiting",)
    kv_cache_metrics = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    # vLLM's pooling server: /classify for sequence classifiers, /pooling for reward models.
    job_routes: ClassVar[dict[str, str]] = {"classification": "classify", "reward": "pooling"}

    def default_command(self, model_name: str) -> list[str]:
        return ["vllm", "serve", model_name]

    def image(self, vllm_version: str | None, overrides: dict[str, str]) -> str:
        return pinned_image(self.backend.value, self.image_repository, vllm_version, overrides)


def pinned_image(
    backend: str, repository: str, vllm_version: str | None, overrides: dict[str, str]
) -> str:
    """The operator's override, else `repository:v<version>` when pinned, else `:latest`."""
    if backend in overrides:
        return overrides[backend]
    if vllm_version:
        return f"{repository}:v{vllm_version.removeprefix('v')}"
    return f"{repository}:latest"
