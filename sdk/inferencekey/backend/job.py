"""What a backend is handed and returns: a job, its result, the setup context, a 400.

>>> Job(id="job-1", input={"prompt": "hola"}).text()
'hola'
"""

from __future__ import annotations

import base64
import binascii
import email.message
import email.utils
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class InvalidInput(ValueError):
    """The job's input cannot be served; raise it in ``process()`` to answer 400 with its text.

    >>> raise InvalidInput("input.prompt must not be empty")
    Traceback (most recent call last):
    ...
    inferencekey.backend.job.InvalidInput: input.prompt must not be empty
    """


@dataclass(frozen=True)
class BackendContext:
    """What ``setup()`` is handed: the workload's backend config and the port being served."""

    config: dict[str, Any] = field(default_factory=dict)
    port: int = 0


@dataclass(frozen=True)
class Result:
    """What ``process()`` returns: ``output`` is answered as ``{"output": output}``.

    The platform's conventions: text → ``{"text": ...}``; classification →
    ``{"label": ..., "score": ...}``; images → OpenAI's ``{"created": ..., "data": [{"b64_json":
    ...}]}`` (the Manager bills one unit per item of ``data``).
    """

    output: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.output, dict):
            raise TypeError(f"Result.output must be a dict, got {type(self.output).__name__}")


@dataclass(frozen=True)
class Job:
    """One request to ``process()``: its id and the ``input`` object the Manager built.

    What the Manager puts in ``input``: ``prompt`` or ``messages`` for chat and text;
    ``audio_b64`` for native audio jobs; ``raw_body_b64`` + ``raw_body_content_type`` for
    ``/v1/audio/transcriptions`` (the caller's multipart body, verbatim); ``passthrough_body``
    for ``/v1/images/generations`` (the caller's OpenAI JSON, verbatim).
    """

    id: str
    input: dict[str, Any]

    def text(self) -> str:
        """``input.prompt``, or else the text of the last ``user`` message.

        A message's ``content`` is a string or OpenAI's list of parts (text parts are joined
        with newlines). Raises ``InvalidInput`` (400) when there is neither.

        >>> Job("j", {"messages": [{"role": "user", "content": "hi"},
        ...                        {"role": "assistant", "content": "hello"}]}).text()
        'hi'
        """
        prompt = self.input.get("prompt")
        if isinstance(prompt, str) and prompt:
            return prompt
        for message in reversed(self._messages_field() or []):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        raise InvalidInput("input has no prompt and no user message")

    def messages(self) -> list[dict[str, Any]]:
        """``input.messages`` (``role``/``content`` objects); a bare ``prompt`` becomes one
        ``user`` turn. Raises ``InvalidInput`` (400) when there is neither."""
        messages = self._messages_field()
        if messages is not None:
            return messages
        prompt = self.input.get("prompt")
        if isinstance(prompt, str) and prompt:
            return [{"role": "user", "content": prompt}]
        raise InvalidInput("input has no messages and no prompt")

    def audio_bytes(self) -> bytes:
        """The audio to work on, decoded.

        From ``input.audio_b64`` (native jobs) or, for ``/v1/audio/transcriptions``, from
        ``input.raw_body_b64``: a ``multipart/form-data`` body gives its ``file`` part (or its
        first part with a filename), any other content type the body itself. Raises
        ``InvalidInput`` (400) when there is no audio or it does not decode.
        """
        if "audio_b64" in self.input:
            return _decode_b64(self.input["audio_b64"], "audio_b64")
        if "raw_body_b64" not in self.input:
            raise InvalidInput("input has no audio_b64 and no raw_body_b64")
        body = _decode_b64(self.input["raw_body_b64"], "raw_body_b64")
        boundary = self._multipart_boundary()
        if boundary is None:
            return body
        parts = _multipart_parts(body, boundary)
        for name, _filename, content in parts:
            if name == "file":
                return content
        for _, filename, content in parts:
            if filename is not None:
                return content
        raise InvalidInput("the multipart body has no file part")

    def form_fields(self) -> dict[str, str]:
        """The text fields of a multipart ``raw_body_b64`` (``model``, ``language``, ...).

        Empty when the body is not ``multipart/form-data``; file parts are left out.
        """
        boundary = self._multipart_boundary()
        if boundary is None or "raw_body_b64" not in self.input:
            return {}
        body = _decode_b64(self.input["raw_body_b64"], "raw_body_b64")
        return {
            name: content.decode("utf-8", errors="replace")
            for name, filename, content in _multipart_parts(body, boundary)
            if name is not None and filename is None
        }

    def _messages_field(self) -> list[dict[str, Any]] | None:
        messages = self.input.get("messages")
        if messages is None:
            return None
        if not isinstance(messages, list) or not all(
            isinstance(message, dict) and isinstance(message.get("role"), str)
            for message in messages
        ):
            raise InvalidInput("input.messages must be a list of {role, content} objects")
        return messages

    def _multipart_boundary(self) -> bytes | None:
        content_type = self.input.get("raw_body_content_type")
        if not isinstance(content_type, str):
            return None
        header = email.message.Message()
        header["content-type"] = content_type
        if header.get_content_type() != "multipart/form-data":
            return None
        boundary = header.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            raise InvalidInput("raw_body_content_type is multipart/form-data without a boundary")
        return boundary.encode("latin-1")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ]
        if texts:
            return "\n".join(texts)
    raise InvalidInput("the last user message has no text content")


def _decode_b64(value: Any, key: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"input.{key} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"input.{key} is not valid base64: {exc}") from exc


def _multipart_parts(body: bytes, boundary: bytes) -> list[tuple[str | None, str | None, bytes]]:
    """The ``(name, filename, content)`` of each part of a ``multipart/form-data`` body."""
    delimiter = b"--" + boundary
    sections = body.split(delimiter)
    if len(sections) < 3:
        raise InvalidInput("the multipart body has no parts")
    parts = []
    # sections[0] is the preamble; a section starting with "--" closes the body.
    for section in sections[1:]:
        if section.startswith(b"--"):
            break
        if section.startswith(b"\r\n"):
            section = section[2:]
        if section.endswith(b"\r\n"):
            section = section[:-2]
        head, separator, content = section.partition(b"\r\n\r\n")
        if not separator:
            raise InvalidInput("a multipart part has no header end")
        headers = email.message.Message()
        for line in head.decode("latin-1").split("\r\n"):
            key, colon, value = line.partition(":")
            if colon:
                headers[key.strip()] = value.strip()
        name = headers.get_param("name", header="content-disposition")
        filename = headers.get_param("filename", header="content-disposition")
        parts.append(
            (
                email.utils.collapse_rfc2231_value(name) if name else None,
                email.utils.collapse_rfc2231_value(filename) if filename is not None else None,
                content,
            )
        )
    return parts
