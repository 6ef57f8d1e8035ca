"""Agent settings: flags override environment variables, which override defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ik_contracts.http_server import ServerLimits


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "inferencekey-agent"


# Engine ports: below Linux's ephemeral ports (32768-60999), from which the kernel picks the local
# port of every outgoing connection (a port found free there could be taken by one before the
# engine binds it), and below Kubernetes' node ports (30000-32767).
DEFAULT_PORT_RANGE = (28000, 28999)


@dataclass
class AgentConfig:
    """Everything one agent process is configured with."""

    manager_url: str
    token: str
    runtime: str = "docker"  # "docker" or "process"
    listen_host: str = "0.0.0.0"
    listen_port: int = 8090
    # The address the Manager uses to reach this agent's /endpoint proxy.
    advertise_url: str | None = None
    state_dir: Path = field(default_factory=default_state_dir)
    model_dir: Path = Path("/models")
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    simulate_gpus: str | None = None
    simulate_cuda_version: str | None = None  # default: gpus.SIMULATED_CUDA_VERSION
    # Operator overrides: backend -> image, and engine binary name -> path (process runtime).
    images: dict[str, str] = field(default_factory=dict)
    binaries: dict[str, str] = field(default_factory=dict)
    docker_network_mode: str = "bridge"
    health_interval_s: float = 1.0
    restart_backoff_initial_s: float = 1.0
    restart_backoff_max_s: float = 60.0
    # Proxying: generous waits for the first token; a request body cap.
    engine_first_byte_timeout_s: float = 600.0
    engine_idle_timeout_s: float = 300.0
    max_request_bytes: int = 64 * 1024 * 1024
    server_limits: ServerLimits = field(default_factory=ServerLimits.from_env)
    log_format: str = "text"  # or "json" (ik_contracts/logs.py)
    # Where to serve Prometheus metrics without a credential; None: not at all.
    metrics_listen: tuple[str, int] | None = None
    # Stop every engine when the agent exits (the host is being cleared). Off, engines outlive
    # the agent and a restarted agent adopts them.
    stop_engines_on_exit: bool = False
    # The longest one uv run of a custom backend's build may take before it is killed.
    backend_build_timeout_s: float = 30 * 60.0
