"""vLLM-Omni: `vllm-omni serve <model> …` for image and audio models; otherwise vLLM's recipe."""

from __future__ import annotations

from worker_agent.engines.vllm import VllmEngine


class VllmOmniEngine(VllmEngine):
    backend = "vllm-omni"
    image_repository = "vllm/vllm-omni"
    default_image = "vllm/vllm-omni:latest"
    container_binary = None  # the image's entrypoint is the command's own first word
    # vllm-omni's own docs also start it as `vllm serve <model> --omni`.
    command_prefixes = (("vllm-omni", "serve"), ("vllm", "serve"))
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
