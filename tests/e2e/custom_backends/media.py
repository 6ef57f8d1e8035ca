"""A media backend with no task type of its own, so one package serves workloads of several:
what a workload wants of it is its config's ``modality``.

- ``image`` (text2image): ``images/generations`` draws real PNGs of the asked ``size``;
  ``images/edits`` and ``images/variations`` (the caller's multipart body) answer a PNG whose
  ``tEXt`` chunk, and the item's metadata, tell the size and SHA-256 of the uploaded image;
- ``audio`` (text2audio): ``audio/speech`` and ``audio/generate`` synthesise real WAVs (a tone,
  ``frames_per_char`` frames per character of the input, or ``duration_s`` seconds), and
  ``audio/voices`` lists its voices;
- ``transcription`` (audio2text): ``audio/transcriptions`` answers the uploaded file's byte count
  and first bytes as its text;
- ``chat`` (text2text): echoes the last user message.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import struct
import time
import wave
import zlib
from typing import Any

from inferencekey.backend import BackendContext, CustomBackend, InvalidInput, Job, Result

SAMPLE_RATE = 8000
# voice id -> (name, pitch in Hz)
VOICES = {"alto": ("Alto", 440.0), "bass": ("Bass", 110.0)}


def png(width: int, height: int, seed: bytes, text: dict[str, str] | None = None) -> bytes:
    """A real RGB PNG: a gradient tinted by ``seed``, with ``text`` as tEXt chunks."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    tint = hashlib.sha256(seed).digest()
    rows = b"".join(
        b"\x00"
        + b"".join(
            bytes(((x * 255) // max(width - 1, 1), (y * 255) // max(height - 1, 1), tint[0]))
            for x in range(width)
        )
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    texts = b"".join(
        chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))
        for key, value in (text or {}).items()
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + texts
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def tone(frames: int, hz: float) -> bytes:
    """A real 16-bit mono WAV of a sine tone, ``frames`` samples at SAMPLE_RATE."""
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(SAMPLE_RATE)
        sound.writeframes(
            b"".join(
                struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * i / SAMPLE_RATE)))
                for i in range(frames)
            )
        )
    return out.getvalue()


def size_of(body: dict[str, Any], default: str) -> tuple[int, int]:
    size = body.get("size") or default
    try:
        width, height = (int(side) for side in str(size).lower().split("x"))
    except ValueError:
        raise InvalidInput(f"size must be WIDTHxHEIGHT, got {size!r}") from None
    if not (0 < width <= 256 and 0 < height <= 256):
        raise InvalidInput("this backend draws at most 256x256")
    return width, height


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Media(CustomBackend):
    name = "media"
    version = "1.0.0"
    cpu_only = True

    def setup(self, ctx: BackendContext) -> None:
        self.modality = ctx.config.get("modality", "chat")
        self.default_size = ctx.config.get("default_size", "8x8")
        self.frames_per_char = int(ctx.config.get("frames_per_char", 200))

    def process(self, job: Job) -> Result:
        given = job.input
        if self.modality == "image":
            if "raw_body_b64" in given:
                return Result(self._changed_image(job))
            return Result(self._generated_images(self._passthrough(job)))
        if self.modality == "audio":
            if given.get("list_voices"):
                voices = [{"voice_id": v, "name": name} for v, (name, _) in VOICES.items()]
                return Result({"voices": voices})
            return Result(self._audio(self._passthrough(job)))
        if self.modality == "transcription":
            return Result(self._transcription(job))
        text = job.text()
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": 1 + len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return Result({"text": f"echo: {text}", "usage": usage})

    def _passthrough(self, job: Job) -> dict[str, Any]:
        body = job.input.get("passthrough_body")
        if not isinstance(body, dict):
            raise InvalidInput(f"a {self.modality} workload takes a JSON body")
        return body

    def _generated_images(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidInput("prompt is required")
        width, height = size_of(body, self.default_size)
        count = int(body.get("n") or 1)
        pictures = [png(width, height, f"{prompt}#{i}".encode()) for i in range(count)]
        return {
            "created": int(time.time()),
            "data": [{"b64_json": b64(p), "revised_prompt": prompt} for p in pictures],
        }

    def _changed_image(self, job: Job) -> dict[str, Any]:
        upload = job.audio_bytes()  # the multipart body's file part, whatever its media
        fields = job.form_fields()
        action = "edit" if "prompt" in fields else "variation"
        digest = hashlib.sha256(upload).hexdigest()
        width, height = size_of(fields, self.default_size)
        text = {"action": action, "upload-bytes": str(len(upload)), "upload-sha256": digest}
        picture = png(width, height, upload, text)
        item = {
            "b64_json": b64(picture),
            "revised_prompt": f"{action} of {len(upload)} bytes: {fields.get('prompt', '')}",
            "upload_bytes": len(upload),
            "upload_sha256": digest,
        }
        return {"created": int(time.time()), "data": [item] * int(fields.get("n") or 1)}

    def _audio(self, body: dict[str, Any]) -> dict[str, Any]:
        if "voice" in body:  # audio/speech
            voice = VOICES.get(str(body["voice"]))
            if voice is None:
                raise InvalidInput(f"no voice {body['voice']!r}; see GET audio/voices")
            text = body.get("input")
            if not isinstance(text, str) or not text:
                raise InvalidInput("input is required")
            return {
                "audio_b64": b64(tone(len(text) * self.frames_per_char, voice[1])),
                "content_type": "audio/wav",
            }
        duration = float(body.get("duration_s", 0.25))  # audio/generate
        if not 0 < duration <= 10:
            raise InvalidInput("duration_s must be in (0, 10]")
        return {
            "audio_b64": b64(tone(int(duration * SAMPLE_RATE), 220.0)),
            "content_type": "audio/wav",
        }

    def _transcription(self, job: Job) -> dict[str, Any]:
        heard = job.audio_bytes()
        return {
            "text": f"{len(heard)} bytes starting {heard[:8].hex()}",
            "sha256": hashlib.sha256(heard).hexdigest(),
            "fields": job.form_fields(),
        }
