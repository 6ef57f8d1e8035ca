"""stable-diffusion.cpp: `sd-server -m <model.gguf> …` (never `sd-cli`); shares GPUs by memory.

Upstream's server (examples/server in leejet/stable-diffusion.cpp) takes `--listen-ip`/`-l` and
`--listen-port`, loads the model before it listens, and serves OpenAI's `/v1/images/generations`
(and `/v1/images/edits`) with `{"created", "data": [{"b64_json"}]}`, plus `GET /v1/models`, which
is what the agent asks for readiness: it has no `/health`. Its `/metrics` is JSON, not
Prometheus, so no load figures are read. The CUDA image puts the binary at
`/sd.cpp/bin/sd-server`.
"""

from __future__ import annotations

from typing import ClassVar

from inferencekey.enums import Backend

from ik_contracts.engines.base import Engine, flag_value


class StableDiffusionCppEngine(Engine):
    backend = Backend.STABLE_DIFFUSION_CPP
    default_image = "ghcr.io/leejet/stable-diffusion.cpp:master-cuda"
    container_binary = "/sd.cpp/bin/sd-server"
    gpu_claim = "shared"
    command_prefixes: ClassVar[tuple[tuple[str, ...], ...]] = (("sd-server",),)
    host_flags = ("--listen-ip", "-l")
    port_flags = ("--listen-port",)
    health_path = "/v1/models"
    # Images are never streamed, and no answer carries token usage.
    stream_usage_on_request = False

    def default_command(self, model_name: str) -> list[str]:
        return ["sd-server", "-m", model_name]

    def model_path(self, argv: list[str]) -> str | None:
        """The local model file the command loads (a full model, or a standalone diffusion
        model), so memory can be estimated from its size."""
        return flag_value(argv, ("-m", "--model")) or flag_value(argv, ("--diffusion-model",))
