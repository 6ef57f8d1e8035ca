"""Reading a publish request: ``multipart/form-data`` streamed to a temporary file.

The package is written to disk as it arrives, hashed on the way, and never held whole in memory;
its size is capped (``custom_backend_max_bytes``), and so are the text parts and their count. A
body that is not well-formed multipart is a 400 naming what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from manager.errors import InvalidRequest, PackageTooLarge, ValidationFailed

# The text parts a publish request may carry, beside the one file part.
TEXT_PARTS = ("name", "slug", "version", "task_type", "entrypoint")
FILE_PART = "file"
MAX_TEXT_PART_BYTES = 4096
MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 8 * 1024  # one header of one form part
# Room for the text parts and the part headers around the package.
FORM_OVERHEAD_BYTES = 64 * 1024
# The package is written to disk (in a thread) in pieces of about this size.
WRITE_BATCH_BYTES = 1024 * 1024
_FORM_HELP = (
    f"send multipart/form-data with the text parts {', '.join(TEXT_PARTS)} and the package "
    f"as the file part {FILE_PART!r}"
)


@dataclass
class Upload:
    """What a publish request sent: its text parts, and the package on disk with its digest."""

    fields: dict[str, str]
    path: Path
    sha256: str
    size_bytes: int


def too_large(limit: int) -> PackageTooLarge:
    return PackageTooLarge(
        f"the package is larger than {limit} bytes, this Manager's limit "
        "(INFERENCEKEY_CUSTOM_BACKEND_MAX_BYTES)",
        limit_bytes=limit,
    )


def check_declared_length(content_length: str | None, limit: int) -> None:
    """Refuse a body whose declared length cannot hold a package within ``limit``, unread."""
    declared = content_length or ""
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD_BYTES:
        raise too_large(limit)


def boundary_of(content_type: str | None) -> bytes:
    media_type, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest(f"the request is not multipart/form-data: {_FORM_HELP}")
    return boundary


@dataclass
class _Form:
    """The parser's callbacks' state: the part being read and what has been read so far."""

    limit: int
    sink: _PackageSink
    fields: dict[str, str] = field(default_factory=dict)
    parts: int = 0
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    disposition: bytes | None = None
    name: str | None = None
    is_file: bool = False
    text: bytearray = field(default_factory=bytearray)
    seen_file: bool = False
    finished: bool = False

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise ValidationFailed(f"the form has more than {MAX_PARTS} parts; {_FORM_HELP}")
        self.disposition, self.name, self.is_file = None, None, False
        self.text.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]
        self._bounded(self.header_field)

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]
        self._bounded(self.header_value)

    @staticmethod
    def _bounded(header: bytearray) -> None:
        # A part's header line is a name and a filename: never megabytes held in memory.
        if len(header) > MAX_PART_HEADER_BYTES:
            raise ValidationFailed(
                f"a form part's header is longer than {MAX_PART_HEADER_BYTES} bytes; {_FORM_HELP}"
            )

    def on_header_end(self) -> None:
        if bytes(self.header_field).strip().lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        kind, options = parse_options_header(self.disposition or b"")
        raw_name = options.get(b"name")
        if kind != b"form-data" or raw_name is None:
            raise ValidationFailed(f"a form part has no Content-Disposition name; {_FORM_HELP}")
        name = raw_name.decode("utf-8", "replace")
        self.is_file = b"filename" in options
        if self.is_file:
            if name != FILE_PART:
                raise ValidationFailed(
                    f"the package must be the file part {FILE_PART!r}, not {name!r}", field=name
                )
            if self.seen_file:
                raise ValidationFailed("the form holds more than one package", field=FILE_PART)
            self.seen_file = True
        elif name not in TEXT_PARTS:
            raise ValidationFailed(
                f"unknown form part {name!r}; the text parts are {', '.join(TEXT_PARTS)}",
                field=name,
            )
        elif name in self.fields:
            raise ValidationFailed(f"the form part {name!r} is given twice", field=name)
        self.name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.is_file:
            self.sink.add(data[start:end], self.limit)
            return
        self.text += data[start:end]
        if len(self.text) > MAX_TEXT_PART_BYTES:
            raise ValidationFailed(
                f"the form part {self.name!r} is longer than {MAX_TEXT_PART_BYTES} bytes",
                field=self.name,
            )

    def on_part_end(self) -> None:
        if self.is_file or self.name is None:
            return
        try:
            self.fields[self.name] = self.text.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ValidationFailed(
                f"the form part {self.name!r} is not UTF-8 text", field=self.name
            ) from None

    def on_end(self) -> None:
        self.finished = True


class _PackageSink:
    """The package's bytes on their way to a temporary file, hashed as they go."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.size_bytes = 0
        self.pending = bytearray()

    def add(self, data: bytes, limit: int) -> None:
        self.size_bytes += len(data)
        if self.size_bytes > limit:
            raise too_large(limit)
        self.pending += data

    def flush(self) -> None:
        """Write what is pending (called in a thread: disk I/O stays off the event loop)."""
        with self.path.open("ab") as stream:
            stream.write(self.pending)
        self.digest.update(self.pending)
        self.pending.clear()


async def read_upload(
    body: AsyncIterable[bytes], content_type: str | None, limit: int, directory: Path | None
) -> Upload:
    """The text parts and the package of a publish request; the package is written to a new
    file (in ``directory``, or the system's temporary directory) that the caller removes."""
    boundary = boundary_of(content_type)
    handle, name = tempfile.mkstemp(prefix="ik-package-", dir=directory)
    os.close(handle)
    path = Path(name)
    try:
        sink = _PackageSink(path)
        form = _Form(limit=limit, sink=sink)
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": form.on_part_begin,
                "on_header_field": form.on_header_field,
                "on_header_value": form.on_header_value,
                "on_header_end": form.on_header_end,
                "on_headers_finished": form.on_headers_finished,
                "on_part_data": form.on_part_data,
                "on_part_end": form.on_part_end,
                "on_end": form.on_end,
            },
        )
        received = 0
        try:
            async for chunk in body:
                received += len(chunk)
                if received > limit + FORM_OVERHEAD_BYTES:
                    raise too_large(limit)
                parser.write(chunk)
                if len(sink.pending) >= WRITE_BATCH_BYTES:
                    await asyncio.to_thread(sink.flush)
        except MultipartParseError as error:
            raise InvalidRequest(
                f"the request is not well-formed multipart/form-data: {error}"
            ) from None
        except ClientDisconnect:
            raise InvalidRequest("the client went away before the upload ended") from None
        if not form.finished:
            raise InvalidRequest(
                "the multipart/form-data body ends before its closing boundary; " + _FORM_HELP
            )
        if not form.seen_file:
            raise ValidationFailed(
                f"the package is missing: send it as the file part {FILE_PART!r}", field=FILE_PART
            )
        await asyncio.to_thread(sink.flush)
        return Upload(form.fields, path, sink.digest.hexdigest(), sink.size_bytes)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
