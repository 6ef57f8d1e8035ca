"""Ollama: no user command; `ollama serve` listens where OLLAMA_HOST says, then pulls the model."""

from __future__ import annotations

import httpx
from inferencekey.enums import Backend

from ik_contracts.engines.base import Engine


class OllamaEngine(Engine):
    backend = Backend.OLLAMA
    default_image = "ollama/ollama:latest"
    container_binary = "/bin/ollama"
    gpu_claim = "shared"
    command_prefixes = ()
    health_path = "/api/version"

    def default_command(self, model_name: str) -> list[str]:
        return ["ollama", "serve"]

    def build_argv(
        self, command: str | None, model_name: str, host: str, port: int
    ) -> tuple[list[str], list[str]]:
        notices = []
        if command and command.strip():
            notices.append(
                f"ignored the command {command.strip()!r}: ollama runs `ollama serve` and "
                "loads the workload's model"
            )
        return self.default_command(model_name), notices

    def env(self, host: str, port: int) -> dict[str, str]:
        return {"OLLAMA_HOST": f"{host}:{port}"}

    async def prepare(self, base_url: str, model_name: str, client: httpx.AsyncClient) -> None:
        # A pull can take many minutes; readiness waits on it, so no read timeout here.
        response = await client.post(
            base_url.rstrip("/") + "/api/pull",
            json={"model": model_name, "stream": False},
            timeout=httpx.Timeout(10.0, read=None),
        )
        if response.status_code != 200:
            raise RuntimeError(f"ollama could not pull {model_name}: {response.text[:500]}")
