"""What every inference engine has in common: one small subclass per backend says the rest.

An engine turns the user's verbatim `command` into the argv the agent launches. The agent owns the
listen address, so any host/port flags the user wrote are removed (each removal becomes a notice
for the Manager's events) and the agent's are appended.
"""

from __future__ import annotations

import os
import shlex
from typing import ClassVar, Literal

import httpx
from inferencekey.enums import Backend
from prometheus_client.parser import text_string_to_metric_families

from ik_contracts.protocol import EngineLoad

GpuClaim = Literal["whole", "shared"]


class EngineCommandError(ValueError):
    """The user's command cannot be run by this engine (wrong program, unparsable quoting)."""


class Engine:
    backend: ClassVar[Backend]
    default_image: ClassVar[str]
    # The engine binary inside its image, used as the container entrypoint; None: argv[0] as is.
    container_binary: ClassVar[str | None] = None
    gpu_claim: ClassVar[GpuClaim] = "whole"
    # How a user's command may begin (argv[0] compared by file name), e.g. ("vllm", "serve").
    command_prefixes: ClassVar[tuple[tuple[str, ...], ...]]
    host_flags: ClassVar[tuple[str, ...]] = ("--host",)
    port_flags: ClassVar[tuple[str, ...]] = ("--port",)
    tensor_parallel_flags: ClassVar[tuple[str, ...]] = ()
    # Flags naming the model the engine answers to; without one it is the workload's model_name.
    served_model_flags: ClassVar[tuple[str, ...]] = ()
    health_path: ClassVar[str] = "/health"
    # The engine reports a stream's token usage when the request sets OpenAI's
    # `stream_options.include_usage` (the gateway then asks on behalf of a client that did not,
    # and keeps the extra usage-only chunk from it). Every built-in engine does.
    stream_usage_on_request: ClassVar[bool] = True
    # Where the engine serves Prometheus figures of its load (None: it has none), flags the agent
    # adds so that it does, and the metric names of each figure (samples are summed).
    metrics_path: ClassVar[str | None] = None
    # The route serving jobs of the async-only kinds (classification, reward), where it has one.
    job_routes: ClassVar[dict[str, str]] = {}
    metrics_flags: ClassVar[tuple[str, ...]] = ()
    running_metrics: ClassVar[tuple[str, ...]] = ()
    waiting_metrics: ClassVar[tuple[str, ...]] = ()
    kv_cache_metrics: ClassVar[tuple[str, ...]] = ()

    def default_command(self, model_name: str) -> list[str]:
        raise NotImplementedError

    def image(self, vllm_version: str | None, overrides: dict[str, str]) -> str:
        """The image to run: the operator's override for this backend, else the engine's own."""
        return overrides.get(self.backend.value) or self.default_image

    def tensor_parallel_size(self, argv: list[str]) -> int:
        """How many whole GPUs the command asks for (1 unless a tensor-parallel flag says more)."""
        value = flag_value(argv, self.tensor_parallel_flags)
        if value is None:
            return 1
        if not value.isdigit() or int(value) < 1:
            raise EngineCommandError(f"{self.tensor_parallel_flags[0]} must be a positive integer")
        return int(value)

    def build_argv(
        self, command: str | None, model_name: str, host: str, port: int
    ) -> tuple[list[str], list[str]]:
        """(argv, notices): the user's command with the agent's host and port in place of theirs."""
        if command is None or not command.strip():
            argv = self.default_command(model_name)
        else:
            argv = self._parse_command(command)
        reasons = dict.fromkeys(self.host_flags, "the agent sets the listen address")
        reasons.update(dict.fromkeys(self.port_flags, "the agent assigns the port"))
        argv, notices = _remove_flags(argv, reasons)
        extra = [flag for flag in self.metrics_flags if flag not in argv]
        return [*argv, *extra, self.host_flags[0], host, self.port_flags[0], str(port)], notices

    def served_model_name(self, argv: list[str], model_name: str) -> str:
        """The `model` the engine expects in a request (the gateway rewrites the slug to it)."""
        return flag_value(argv, self.served_model_flags) or model_name

    def model_path(self, argv: list[str]) -> str | None:
        """The local model file the command loads, when it names one (for memory estimates)."""
        return None

    def env(self, host: str, port: int) -> dict[str, str]:
        """Environment the engine needs beyond argv (most engines take everything as flags)."""
        return {}

    async def prepare(self, base_url: str, model_name: str, client: httpx.AsyncClient) -> None:
        """Work between the engine's start and its readiness (Ollama pulls the model here)."""

    async def ready_check(self, base_url: str, client: httpx.AsyncClient) -> bool:
        try:
            response = await client.get(base_url.rstrip("/") + self.health_path)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def load(self, base_url: str, client: httpx.AsyncClient) -> EngineLoad | None:
        """The engine's own load figures, or None where it serves none (or did not answer)."""
        if self.metrics_path is None:
            return None
        try:
            response = await client.get(base_url.rstrip("/") + self.metrics_path, timeout=1.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return self.read_load(response.text)

    def read_load(self, text: str) -> EngineLoad | None:
        """The figures named by ``*_metrics`` in a Prometheus text page (None if it has none)."""
        totals: dict[str, float] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        except ValueError:
            return None

        def first(names: tuple[str, ...]) -> float | None:
            return next((totals[name] for name in names if name in totals), None)

        running, waiting, kv_cache = (
            first(self.running_metrics),
            first(self.waiting_metrics),
            first(self.kv_cache_metrics),
        )
        if running is None and waiting is None and kv_cache is None:
            return None
        return EngineLoad(
            running=None if running is None else max(0, round(running)),
            waiting=None if waiting is None else max(0, round(waiting)),
            kv_cache_usage=None if kv_cache is None else min(1.0, max(0.0, kv_cache)),
        )

    def _parse_command(self, command: str) -> list[str]:
        try:
            argv = shlex.split(command)
        except ValueError as error:
            raise EngineCommandError(f"cannot parse the command: {error}") from error
        for prefix in self.command_prefixes:
            head = [os.path.basename(argv[0]), *argv[1 : len(prefix)]] if argv else []
            if head == list(prefix):
                return argv
        expected = " or ".join(f"`{' '.join(prefix)}`" for prefix in self.command_prefixes)
        raise EngineCommandError(f"a {self.backend.value} command must start with {expected}")


def flag_value(argv: list[str], flags: tuple[str, ...]) -> str | None:
    """The value of the last of `flags` in argv, in `--flag VALUE` or `--flag=VALUE` form."""
    value = None
    for position, token in enumerate(argv):
        name, equals, inline = token.partition("=")
        if name not in flags:
            continue
        if equals:
            value = inline
        elif position + 1 < len(argv):
            value = argv[position + 1]
    return value


def _remove_flags(argv: list[str], reasons: dict[str, str]) -> tuple[list[str], list[str]]:
    """argv without the flags in `reasons` (and their values), and a notice per removal."""
    kept: list[str] = []
    notices: list[str] = []
    position = 0
    while position < len(argv):
        token = argv[position]
        name, equals, _ = token.partition("=")
        if name in reasons and equals:
            removed = [token]
        elif token in reasons:
            has_value = position + 1 < len(argv) and not argv[position + 1].startswith("-")
            removed = argv[position : position + (2 if has_value else 1)]
        else:
            kept.append(token)
            position += 1
            continue
        notices.append(f"removed {' '.join(removed)} from the command: {reasons[name]}")
        position += len(removed)
    return kept, notices
