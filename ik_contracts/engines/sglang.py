"""SGLang: `python -m sglang.launch_server --model-path <model> …` (or `sglang serve …`)."""

from __future__ import annotations

from typing import ClassVar

from inferencekey.enums import Backend

from ik_contracts.engines.base import Engine


class SglangEngine(Engine):
    backend = Backend.SGLANG
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
    metrics_path = "/metrics"  # served when the command has --enable-metrics
    running_metrics = ("sglang:num_running_reqs",)
    waiting_metrics = ("sglang:num_queue_reqs",)
    kv_cache_metrics = ("sglang:token_usage",)
    job_routes: ClassVar[dict[str, str]] = {"classification": "classify"}

    def default_command(self, model_name: str) -> list[str]:
        return ["python3", "-m", "sglang.launch_server", "--model-path", model_name]
