"""``python -m inferencekey.backend.serve``: serve one custom backend, as the worker starts it.

    python -m inferencekey.backend.serve --port 41234 --backend my_backend:MyBackend \\
        --config-json '{"model": "small"}'

``--backend`` falls back to ``$IK_BACKEND_ENTRYPOINT``, ``--config-json`` to
``$IK_BACKEND_CONFIG``. Once ``setup()`` returns it prints ``model loaded``, then
``serving on http://127.0.0.1:<port>`` (stderr). SIGTERM or SIGINT stops it (exit 0).

Exit status: 0 stopped by a signal; 1 ``setup()`` (or the constructor) failed, or the port
could not be bound; 2 a bad entrypoint, config or argument.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from ..errors import BackendEntrypointError, BackendError, BackendSetupError, ConfigurationError
from .server import load_entrypoint, serve_backend

ENTRYPOINT_ENV = "IK_BACKEND_ENTRYPOINT"
CONFIG_ENV = "IK_BACKEND_CONFIG"
EXIT_SETUP_FAILED = 1
EXIT_BAD_ENTRYPOINT = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns its exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m inferencekey.backend.serve",
        description="Serve a custom backend on 127.0.0.1 (contract section 1d).",
    )
    parser.add_argument("--port", type=int, required=True, help="the loopback port to listen on")
    parser.add_argument(
        "--backend", help=f"the backend class as module:Class (default: ${ENTRYPOINT_ENV})"
    )
    parser.add_argument(
        "--config-json",
        help=f"the config setup() receives, a JSON object (default: ${CONFIG_ENV}, else {{}})",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    try:
        config = _config(args.config_json)
        target = load_entrypoint(_entrypoint(args.backend))
        serve_backend(target, args.port, config)
    except (BackendEntrypointError, ConfigurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_ENTRYPOINT
    except BackendSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.__cause__ is not None:
            traceback.print_exception(
                type(exc.__cause__), exc.__cause__, exc.__cause__.__traceback__, file=sys.stderr
            )
        return EXIT_SETUP_FAILED
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    return 0


def _entrypoint(argument: str | None) -> str:
    entrypoint = (argument or os.environ.get(ENTRYPOINT_ENV) or "").strip()
    if not entrypoint:
        raise BackendEntrypointError(
            f"no backend to serve: pass --backend module:Class or set {ENTRYPOINT_ENV}"
        )
    return entrypoint


def _config(argument: str | None) -> dict[str, Any]:
    source, text = "--config-json", argument
    if text is None:
        source, text = f"${CONFIG_ENV}", os.environ.get(CONFIG_ENV)
    if text is None or not text.strip():
        return {}
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigurationError(f"{source} must be a JSON object, got {type(config).__name__}")
    return config


if __name__ == "__main__":
    sys.exit(main())
