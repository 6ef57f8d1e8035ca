"""``inferencekey agent``: its options (flag, else environment variable, else default) and the
run."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ik_contracts.engines import BUILTIN_BACKENDS
from ik_contracts.logs import add_log_format_option, log_format
from worker_agent.config import AgentConfig

AGENT_TOKEN_PREFIX = "ik_agent_"
AGENT_RUNTIMES = ("docker", "process")
DOCKER_NETWORK_MODES = ("bridge", "host")

# Flag (the argparse dest) -> environment variable; a flag wins over its variable, which wins
# over AgentConfig's default. Empty variables count as unset.
AGENT_ENV = {
    "manager_url": "INFERENCEKEY_MANAGER_URL",
    "token": "INFERENCEKEY_AGENT_TOKEN",
    "runtime": "INFERENCEKEY_AGENT_RUNTIME",
    "listen": "INFERENCEKEY_AGENT_LISTEN",
    "advertise_url": "INFERENCEKEY_AGENT_ADVERTISE_URL",
    "state_dir": "INFERENCEKEY_AGENT_STATE_DIR",
    "model_dir": "INFERENCEKEY_MODEL_DIR",
    "port_range": "INFERENCEKEY_AGENT_PORT_RANGE",
    "simulate_gpus": "INFERENCEKEY_SIMULATE_GPUS",
    "simulate_cuda_version": "INFERENCEKEY_SIMULATE_CUDA_VERSION",
    "images": "INFERENCEKEY_ENGINE_IMAGES",
    "binaries": "INFERENCEKEY_ENGINE_BINARIES",
    "docker_network": "INFERENCEKEY_AGENT_DOCKER_NETWORK",
    "metrics_listen": "INFERENCEKEY_AGENT_METRICS_LISTEN",
    "stop_engines_on_exit": "INFERENCEKEY_AGENT_STOP_ENGINES_ON_EXIT",
    "backend_build_timeout_s": "INFERENCEKEY_AGENT_BACKEND_BUILD_TIMEOUT_S",
}
AGENT_FLAGS = {
    "manager_url": "--manager",
    "token": "--token",
    "runtime": "--runtime",
    "listen": "--listen",
    "advertise_url": "--advertise-url",
    "state_dir": "--state-dir",
    "model_dir": "--model-dir",
    "port_range": "--port-range",
    "simulate_gpus": "--simulate-gpus",
    "simulate_cuda_version": "--simulate-cuda-version",
    "images": "--image",
    "binaries": "--binary",
    "docker_network": "--docker-network",
    "metrics_listen": "--metrics-listen",
    "stop_engines_on_exit": "--stop-engines-on-exit",
    "backend_build_timeout_s": "--backend-build-timeout",
}
BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "on": True}
BOOLEAN_WORDS.update({"0": False, "false": False, "no": False, "off": False})


class AgentConfigError(ValueError):
    """A setting of ``inferencekey agent`` is missing or malformed; the message says which."""


def run_agent(args: argparse.Namespace) -> int:
    try:
        config = agent_config_from_args(args, os.environ)
    except AgentConfigError as error:
        print(f"inferencekey agent: error: {error}", file=sys.stderr)
        return 2
    # Imported here so that the Manager and `inferencekey admin` do not load the agent stack.
    from worker_agent.agent import run

    try:
        run(config)
    except KeyboardInterrupt:
        return 130
    return 0


def agent_config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> AgentConfig:
    """The agent's settings: each flag, else its environment variable, else AgentConfig's default.

    ``--image`` and ``--binary`` merge with their variables entry by entry, the flag winning for
    a backend or binary both name. Raises AgentConfigError, whose message never holds the token.
    """

    def setting(dest: str) -> tuple[str | None, str]:
        """(value, where it came from) of a single-valued setting."""
        flagged = getattr(args, dest, None)
        if flagged is not None:
            return str(flagged), AGENT_FLAGS[dest]
        variable = AGENT_ENV[dest]
        return (environ.get(variable) or None), variable

    def either(dest: str) -> str:
        return f"{AGENT_FLAGS[dest]} or {AGENT_ENV[dest]}"

    manager_url, source = setting("manager_url")
    if manager_url is None:
        raise AgentConfigError(f"no Manager URL: pass {either('manager_url')}")
    manager_url = _http_url(manager_url.strip(), source)

    token, source = setting("token")
    if token is None:
        raise AgentConfigError(
            f"no agent token: set {AGENT_ENV['token']} (or pass {AGENT_FLAGS['token']}); "
            "create one with `inferencekey admin worker create` on the Manager host"
        )
    token = _agent_token(token.strip(), source)

    options: dict[str, Any] = {"manager_url": manager_url, "token": token}

    runtime, source = setting("runtime")
    if runtime is not None:
        options["runtime"] = _one_of(runtime.strip(), AGENT_RUNTIMES, source)

    listen, source = setting("listen")
    if listen is not None:
        options["listen_host"], options["listen_port"] = _host_port(listen.strip(), source)

    try:
        options["log_format"] = log_format(getattr(args, "log_format", None))
    except ValueError as error:
        raise AgentConfigError(str(error)) from None

    metrics_listen, source = setting("metrics_listen")
    if metrics_listen is not None:
        options["metrics_listen"] = _host_port(metrics_listen.strip(), source)

    advertise_url, source = setting("advertise_url")
    if advertise_url is not None:
        options["advertise_url"] = _http_url(advertise_url.strip(), source)

    for dest in ("state_dir", "model_dir"):
        directory, _ = setting(dest)
        if directory is not None:
            options[dest] = Path(directory).expanduser().absolute()

    port_range, source = setting("port_range")
    if port_range is not None:
        options["port_range"] = _port_range(port_range.strip(), source)

    simulate_gpus, source = setting("simulate_gpus")
    if simulate_gpus is not None and simulate_gpus.strip():
        options["simulate_gpus"] = _gpu_spec(simulate_gpus.strip(), source)

    cuda_version, source = setting("simulate_cuda_version")
    if cuda_version is not None and cuda_version.strip():
        if not re.fullmatch(r"\d+\.\d+", cuda_version.strip()):
            raise AgentConfigError(
                f"{source}: expected a CUDA version like 12.4, got {cuda_version!r}"
            )
        options["simulate_cuda_version"] = cuda_version.strip()

    stop_engines_on_exit, source = setting("stop_engines_on_exit")
    if stop_engines_on_exit is not None:
        options["stop_engines_on_exit"] = _boolean(stop_engines_on_exit.strip(), source)

    build_timeout, source = setting("backend_build_timeout_s")
    if build_timeout is not None:
        options["backend_build_timeout_s"] = _seconds(build_timeout.strip(), source)

    docker_network, source = setting("docker_network")
    if docker_network is not None:
        options["docker_network_mode"] = _one_of(
            docker_network.strip(), DOCKER_NETWORK_MODES, source
        )

    images = _pairs(environ.get(AGENT_ENV["images"]), AGENT_ENV["images"], "BACKEND=IMAGE")
    images.update(_pairs(args.images, AGENT_FLAGS["images"], "BACKEND=IMAGE"))
    for backend in images:
        if backend not in BUILTIN_BACKENDS:
            raise AgentConfigError(
                f"unknown backend {backend!r} in an engine image: expected one of "
                f"{', '.join(BUILTIN_BACKENDS)}"
            )
    options["images"] = images

    binaries = _pairs(environ.get(AGENT_ENV["binaries"]), AGENT_ENV["binaries"], "NAME=PATH")
    binaries.update(_pairs(args.binaries, AGENT_FLAGS["binaries"], "NAME=PATH"))
    for name, path in binaries.items():
        if "/" in name:
            raise AgentConfigError(
                f"engine binary name {name!r} must be a program name as commands start with "
                "it (e.g. vllm=/opt/vllm/bin/vllm), not a path"
            )
        # Engines start in the state dir, so a relative path would not mean what it says.
        binaries[name] = str(Path(path).expanduser().absolute())
    options["binaries"] = binaries

    config = AgentConfig(**options)
    low, high = config.port_range
    if low <= config.listen_port <= high:
        raise AgentConfigError(
            f"the agent's listen port {config.listen_port} lies inside the engine port range "
            f"{low}-{high}: choose a --listen port or --port-range that do not overlap"
        )
    return config


def _agent_token(token: str, source: str) -> str:
    if token.startswith(AGENT_TOKEN_PREFIX) and len(token) > len(AGENT_TOKEN_PREFIX):
        return token
    # Name the kind of credential it is, when it is one, and nothing more of it.
    kind = re.match(r"ik_(sdk|live|admin)_", token)
    got = f"an {kind.group(0)} token" if kind else "something else"
    raise AgentConfigError(
        f"the agent token ({source}) must start with {AGENT_TOKEN_PREFIX}, got {got}; "
        "create a worker credential with `inferencekey admin worker create` on the Manager host"
    )


def _http_url(url: str, source: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AgentConfigError(f"{source} must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


def _one_of(value: str, choices: tuple[str, ...], source: str) -> str:
    if value not in choices:
        raise AgentConfigError(f"{source} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _host_port(value: str, source: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (all interfaces)."""
    match = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\s:\[\]]*)):(\d{1,5})", value)
    if match is None or not 1 <= int(match.group(3)) <= 65535:
        raise AgentConfigError(
            f"{source} must be HOST:PORT (e.g. 0.0.0.0:8090 or [::]:8090), got {value!r}"
        )
    return match.group(1) or match.group(2) or "0.0.0.0", int(match.group(3))


def _boolean(value: str, source: str) -> bool:
    try:
        return BOOLEAN_WORDS[value.lower()]
    except KeyError:
        raise AgentConfigError(
            f"{source} must be 1, true, yes or on (or 0, false, no, off), got {value!r}"
        ) from None


def _seconds(value: str, source: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise AgentConfigError(f"{source} must be a number of seconds above 0, got {value!r}")
    return seconds


def _port_range(value: str, source: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", value)
    low, high = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not (match and 1 <= low < high <= 65535):
        raise AgentConfigError(
            f"{source} must be LOW-HIGH with 1 <= LOW < HIGH <= 65535 "
            f"(e.g. 28000-28999), got {value!r}"
        )
    return low, high


def _gpu_spec(spec: str, source: str) -> str:
    from worker_agent.gpus import SimulatedInventory

    try:
        SimulatedInventory(spec, seed="validation")
    except ValueError as error:
        raise AgentConfigError(f"{source}: {error}") from None
    return spec


def _pairs(values: str | list[str] | None, source: str, form: str) -> dict[str, str]:
    """``KEY=VALUE`` items from repeated flags (a list) or a comma-separated variable (a str)."""
    if not values:
        return {}
    items = values.split(",") if isinstance(values, str) else values
    pairs: dict[str, str] = {}
    for item in items:
        if not item.strip() and isinstance(values, str):
            continue  # a trailing comma
        key, equals, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not (equals and key and value):
            raise AgentConfigError(f"{source} takes {form}, got {item!r}")
        pairs[key] = value
    return pairs


def add_agent_command(commands: Any) -> None:
    agent = commands.add_parser(
        "agent",
        help="run a worker agent on a GPU host",
        description="Run a worker agent: it joins the Manager with its ik_agent_ credential, "
        "reports this host's GPUs and runs the engines the Manager assigns it. Every option "
        "can also come from the environment variable named in its help; a flag wins.",
    )

    def option(dest: str, help_text: str, **kwargs: Any) -> None:
        agent.add_argument(
            AGENT_FLAGS[dest], dest=dest, help=f"{help_text} [{AGENT_ENV[dest]}]", **kwargs
        )

    option("manager_url", "the Manager's URL, e.g. http://manager.internal:8080", metavar="URL")
    option(
        "token",
        "the worker's ik_agent_ credential; prefer the variable, as every user on the host can "
        "read a command line",
        metavar="TOKEN",
    )
    option("runtime", "how engines run (default docker)", choices=AGENT_RUNTIMES)
    option(
        "listen",
        "where the agent's endpoint proxy listens (default 0.0.0.0:8090)",
        metavar="HOST:PORT",
    )
    option(
        "advertise_url",
        "the URL the Manager reaches this agent's endpoint proxy at "
        "(default http://<this host's name>:<listen port>)",
        metavar="URL",
    )
    option(
        "metrics_listen",
        "serve Prometheus metrics without a credential here (default: not at all); keep it on "
        "loopback or a network only Prometheus reaches",
        metavar="HOST:PORT",
    )
    option("state_dir", "where the agent keeps its state and engine logs", metavar="DIR")
    option("model_dir", "model files, reported to the Manager (default /models)", metavar="DIR")
    option("port_range", "ports for engines (default 28000-28999)", metavar="LOW-HIGH")
    option(
        "simulate_gpus",
        "report these GPUs instead of NVML's, e.g. '2xNVIDIA A100-SXM4-80GB' (tests, demos)",
        metavar="SPEC",
    )
    option(
        "simulate_cuda_version",
        "the CUDA version the simulated GPUs report (default 12.4), for allowed_cuda_versions",
        metavar="X.Y",
    )
    option(
        "images",
        "engine image for a backend (docker runtime), repeatable; the variable takes a "
        "comma-separated list",
        action="append",
        metavar="BACKEND=IMAGE",
    )
    option(
        "binaries",
        "engine binary path for a program name (process runtime), repeatable; the variable "
        "takes a comma-separated list",
        action="append",
        metavar="NAME=PATH",
    )
    option(
        "docker_network",
        "engine containers' network (default bridge, published on 127.0.0.1 only)",
        choices=DOCKER_NETWORK_MODES,
    )
    option(
        "stop_engines_on_exit",
        "when the agent stops (SIGTERM, Ctrl-C), stop every engine it runs too, logging each: "
        "for taking the agent off this host. Without it engines keep serving through a restart "
        "or upgrade of the agent, which adopts them when it starts again (default off)",
        action=argparse.BooleanOptionalAction,
    )
    option(
        "backend_build_timeout_s",
        "the longest one uv run of a custom backend's build may take; past it uv and its "
        "build scripts are killed and the replica fails (default 1800)",
        metavar="SECONDS",
    )
    add_log_format_option(agent)
    agent.set_defaults(command=run_agent)
