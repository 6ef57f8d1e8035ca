"""A custom backend for the agent's tests: it answers every route the platform bridges to it.

Packaged with `package_backend` and served from a venv the agent builds, or served in-process
with `serve_backend`. What it answers tells a test what reached it: the text it echoes, the
SHA-256 of the raw body it was handed, a real PNG and a real WAV.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct
import sys
import wave
import zlib
from typing import Any

from inferencekey.backend import (
    BackendContext,
    CustomBackend,
    ForecastRequest,
    ForecastResult,
    InvalidInput,
    Job,
    Result,
)


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def wav(frames: int, rate: int = 8000) -> bytes:
    """A real WAV of silence, ``frames`` samples long."""
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(rate)
        sound.writeframes(b"\x00\x00" * frames)
    return out.getvalue()


class Sample(CustomBackend):
    name = "sample"
    version = "1.0.0"

    def setup(self, ctx: BackendContext) -> None:
        if ctx.config.get("fail_setup"):
            raise RuntimeError("the weights are missing")
        self.greeting = ctx.config.get("greeting", "echo")
        # Which interpreter serves it, for tests of the venv the agent builds.
        self.python = sys.executable
        self.extra = _import_extra(ctx.config.get("import"))

    def process(self, job: Job) -> Result:
        given = job.input
        if given.get("list_voices"):
            return Result({"voices": [{"id": "alloy", "name": "Alloy"}]})
        if "raw_body_b64" in given:
            return Result(self._raw_body(job))
        if "passthrough_body" in given:
            return Result(self._passthrough(given["passthrough_body"]))
        if "input" in given:
            texts = given["input"] if isinstance(given["input"], list) else [given["input"]]
            return Result({"embeddings": [[float(len(t)), 1.0] for t in texts]})
        text = job.text()
        if text == "invalid":
            raise InvalidInput("the prompt says invalid")
        if text == "crash":
            raise RuntimeError("the model fell over")
        if text == "whoami":
            return Result({"text": f"{self.python} {os.environ.get('IK_BACKEND_CONFIG')}"})
        if text == "extra":
            return Result({"text": self.extra})
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": 2, "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + 2
        return Result({"text": f"{self.greeting}: {text}", "usage": usage})

    def forecast(self, req: ForecastRequest) -> ForecastResult:
        return ForecastResult(median=[req.target[-1]] * req.horizon)

    def _raw_body(self, job: Job) -> dict[str, Any]:
        raw = base64.b64decode(job.input["raw_body_b64"])
        fields = job.form_fields()
        if "prompt" in fields:  # an image edit or variation
            picture = base64.b64encode(png(3, 2, (0, 128, 255))).decode()
            return {"b64_json": picture}
        return {
            "text": f"heard {len(job.audio_bytes())} bytes",
            "body_sha256": hashlib.sha256(raw).hexdigest(),
            "audio_sha256": hashlib.sha256(job.audio_bytes()).hexdigest(),
            "content_type": job.input["raw_body_content_type"],
            "fields": fields,
        }

    def _passthrough(self, body: dict[str, Any]) -> dict[str, Any]:
        if "voice" in body:
            audio = base64.b64encode(wav(frames=len(body.get("input", "")) * 100)).decode()
            return {"audio_b64": audio, "content_type": "audio/wav"}
        if "prompt" in body:
            picture = base64.b64encode(png(2, 2, (255, 0, 0))).decode()
            return {"created": 1700000000, "data": [{"b64_json": picture}] * body.get("n", 1)}
        return {"label": "positive", "score": 0.75, "seen": body}


def _import_extra(module: str | None) -> str:
    """Import a module the package's requirements installed into the venv (``import`` in the
    config), and say what it says of itself."""
    if not module:
        return ""
    imported = __import__(module)
    return str(imported.describe())
