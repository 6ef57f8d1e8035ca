"""vLLM-Omni: `vllm-omni serve <model> …` for image and audio models; otherwise vLLM's recipe."""

from __future__ import annotations

from inferencekey.enums import Backend

from ik_contracts.engines.vllm import VllmEngine


class VllmOmniEngine(VllmEngine):
    backend = Backend.VLLM_OMNI
    image_repository = "vllm/vllm-omni"
    default_image = "vllm/vllm-omni:latest"
    container_binary = None  # the image's entrypoint is the command's own first word
    # vllm-omni's own docs also start it as `vllm serve <model> --omni`.
    command_prefixes = (("vllm-omni", "serve"), ("vllm", "serve"))

    def default_command(self, model_name: str) -> list[str]:
        return ["vllm-omni", "serve", model_name]
