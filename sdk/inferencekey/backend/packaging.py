"""Custom-backend packages: build one (``package_backend``), read one's manifest safely.

A package is ``<name>-<version>.tar.gz`` holding, at its root, ``manifest.json``,
``requirements.txt`` (empty when there are none) and the code: a single ``.py`` file, or the
contents of a directory. The same source always gives the same bytes (sorted members, fixed
times and owners), so the same SHA-256.

>>> pkg = package_backend("my_backend/", entrypoint="my_backend_main:MyBackend",
...                       name="my-backend", version="1.0.0", out="dist",
...                       task_type="text2text", requirements=["numpy>=1.26"])  # doctest: +SKIP
>>> pkg.path, pkg.sha256  # doctest: +SKIP
(PosixPath('dist/my-backend-1.0.0.tar.gz'), '3f2a…')
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..enums import TaskType
from ..errors import PackagingError
from .manifest import BackendManifest

MANIFEST_NAME = "manifest.json"
REQUIREMENTS_NAME = "requirements.txt"
# Bounds on reading an archive someone uploaded.
MAX_MANIFEST_BYTES = 64 * 1024
MAX_ARCHIVE_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
# Every member's time: 1980-01-01, the earliest a zip can carry too.
_FIXED_MTIME = 315_532_800
_SKIPPED_DIRS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")
_GZIP_MAGIC = b"\x1f\x8b"
_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BackendPackage:
    """A built package: where it is, its SHA-256 (hex) and size, and its manifest."""

    path: Path
    sha256: str
    size_bytes: int
    manifest: BackendManifest


def package_backend(
    src: str | os.PathLike[str],
    *,
    entrypoint: str,
    name: str,
    version: str,
    out: str | os.PathLike[str],
    slug: str | None = None,
    task_type: str | TaskType = "",
    requirements: str | os.PathLike[str] | Sequence[str] | None = None,
    requires_python: str = "",
    description: str | None = None,
    cpu_only: bool = False,
) -> BackendPackage:
    """Write ``<out>/<name>-<version>.tar.gz`` from ``src`` and return what was written.

    ``src`` is a single ``.py`` file or a directory (its contents become the archive's root;
    ``__pycache__``, ``*.pyc`` and the ``out`` directory, if inside it, are left out).
    ``entrypoint`` is ``"module:Class"`` and the module must be in ``src`` (``module.py`` or
    ``module/__init__.py``). ``requirements`` is a list of requirement lines, or the path of a
    requirements file; without it a ``requirements.txt`` at the root of ``src`` is used, else an
    empty one is written. ``slug`` defaults to ``name``, canonicalised.

    Raises ``PackagingError`` naming the fault: a missing ``src``, a bad name, version, slug,
    task type or entrypoint, an entrypoint module not in ``src``, a link in ``src``.
    """
    source = Path(src)
    if not source.exists():
        raise PackagingError(f"src {str(source)!r} does not exist")
    manifest = BackendManifest.from_dict(
        {
            "name": name,
            "slug": slug,
            "version": version,
            "task_type": task_type.value if isinstance(task_type, TaskType) else task_type,
            "requires_python": requires_python,
            "entrypoint": entrypoint,
            "description": description,
            "cpu_only": cpu_only,
        }
    )
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise PackagingError(f"out {str(out_dir)!r} is not a directory")
    target = out_dir / f"{manifest.name}-{manifest.version}.tar.gz"
    files = _source_files(source, skip_dir=out_dir, skip_file=target)
    if not any(path in files for path in _module_paths(manifest.entrypoint_module)):
        raise PackagingError(
            f"entrypoint module {manifest.entrypoint_module!r} is not in src "
            f"(expected {' or '.join(_module_paths(manifest.entrypoint_module))})"
        )
    if MANIFEST_NAME in files:
        raise PackagingError(f"src must not hold a {MANIFEST_NAME}: package_backend writes it")
    if requirements is not None and REQUIREMENTS_NAME in files:
        raise PackagingError(
            f"src holds a {REQUIREMENTS_NAME} and requirements= was given: keep one of them"
        )
    contents: dict[str, Path | bytes] = dict(files)
    contents[MANIFEST_NAME] = (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()
    if REQUIREMENTS_NAME not in files:
        contents[REQUIREMENTS_NAME] = _requirements_text(requirements).encode()

    out_dir.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=out_dir)
    try:
        with os.fdopen(handle, "wb") as raw:
            _write_archive(raw, contents)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return BackendPackage(
        path=target,
        sha256=_sha256(target),
        size_bytes=target.stat().st_size,
        manifest=manifest,
    )


def read_manifest_from_archive(
    path: str | os.PathLike[str] | IO[bytes],
    *,
    max_members: int = MAX_ARCHIVE_MEMBERS,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
) -> BackendManifest:
    """The checked manifest of a ``.tar.gz`` or ``.zip`` package, read without extracting or
    importing anything (the kind is told by content, not by file name).

    ``path`` is a file path or a seekable binary file (e.g. an upload's spooled file; it is read
    from its start and left open). Every member is checked: the archive is refused
    (``PackagingError`` naming the member or the fault) if a member's path is absolute or climbs
    out with ``..``, if it holds a link (tar symlinks or hard links, zip entries with the symlink
    mode), a device, a fifo or a duplicate, if it has more than ``max_members`` members or
    unpacks to more than ``max_unpacked_bytes``, if there is no ``manifest.json`` at its root,
    if that is over 64 KiB, not a JSON object or not a valid manifest, or if the entrypoint's
    module is not in the archive.

    >>> read_manifest_from_archive("dist/my-backend-1.0.0.tar.gz").entrypoint  # doctest: +SKIP
    'my_backend_main:MyBackend'
    """
    scanned = _Scan(max_members=max_members, max_unpacked_bytes=max_unpacked_bytes)
    with _opened(path) as (stream, label):
        if _format(stream, label) == "tar.gz":
            _scan_tar_gz(stream, label, scanned)
        else:
            _scan_zip(stream, label, scanned)
    if scanned.manifest is None:
        raise PackagingError(f"{label} has no {MANIFEST_NAME} at its root")
    try:
        data = json.loads(scanned.manifest)
    except ValueError as exc:
        raise PackagingError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    manifest = BackendManifest.from_dict(data)
    expected = _module_paths(manifest.entrypoint_module)
    if not any(member in scanned.files for member in expected):
        raise PackagingError(
            f"entrypoint module {manifest.entrypoint_module!r} is not in the archive "
            f"(expected {' or '.join(expected)})"
        )
    return manifest


def archive_format(path: str | os.PathLike[str] | IO[bytes]) -> str:
    """``"tar.gz"`` or ``"zip"``, told by the content (a gzip stream is a tar.gz).

    Raises ``PackagingError`` for a missing file or any other content.
    """
    with _opened(path) as (stream, label):
        return _format(stream, label)


@contextlib.contextmanager
def _opened(source: str | os.PathLike[str] | IO[bytes]) -> Iterator[tuple[IO[bytes], str]]:
    """A binary stream at the package's start, and how messages name the package."""
    if not isinstance(source, (str, os.PathLike)):
        source.seek(0)
        yield source, "the package"
        return
    path = Path(source)
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise PackagingError(f"cannot read package {str(path)!r}: {exc}") from exc
    with stream:
        yield stream, path.name


def _format(stream: IO[bytes], label: str) -> str:
    magic = stream.read(len(_GZIP_MAGIC))
    stream.seek(0)
    if magic == _GZIP_MAGIC:
        return "tar.gz"
    is_zip = zipfile.is_zipfile(stream)
    stream.seek(0)
    if is_zip:
        return "zip"
    raise PackagingError(f"{label} is not a .tar.gz or .zip archive")


def _module_paths(module: str) -> tuple[str, str]:
    base = module.replace(".", "/")
    return f"{base}.py", f"{base}/__init__.py"


def _source_files(source: Path, *, skip_dir: Path, skip_file: Path) -> dict[str, Path]:
    """The files to pack, by their path in the archive (never the archive being written)."""
    if source.is_file():
        if source.suffix != ".py":
            raise PackagingError(f"src {str(source)!r} must be a directory or a single .py file")
        return {source.name: source}
    skipped, skipped_file = skip_dir.resolve(), skip_file.resolve()
    files: dict[str, Path] = {}
    for directory, dirnames, filenames in os.walk(source):
        here = Path(directory)
        kept_dirs = []
        for dirname in dirnames:
            child = here / dirname
            if child.is_symlink():
                raise PackagingError(f"src holds a link, which packages cannot: {child}")
            if dirname not in _SKIPPED_DIRS and child.resolve() != skipped:
                kept_dirs.append(dirname)
        dirnames[:] = kept_dirs
        for filename in filenames:
            child = here / filename
            if filename.endswith(_SKIPPED_SUFFIXES) or child.resolve() == skipped_file:
                continue
            if child.is_symlink() or not child.is_file():
                raise PackagingError(
                    f"src holds a link or special file, which packages cannot: {child}"
                )
            arcname = child.relative_to(source).as_posix()
            # A name the reading side would refuse (a backslash, say) is refused here already.
            files[_checked_member_name(arcname)] = child
    return files


def _requirements_text(requirements: str | os.PathLike[str] | Sequence[str] | None) -> str:
    if requirements is None:
        return ""
    if isinstance(requirements, (str, os.PathLike)):
        try:
            return Path(requirements).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PackagingError(
                f"cannot read requirements file {str(requirements)!r}: {exc}"
            ) from exc
    lines = [str(line).strip() for line in requirements]
    if any("\n" in line or "\r" in line for line in lines):
        raise PackagingError("each requirement must be a single line")
    kept = [line for line in lines if line]
    return "".join(f"{line}\n" for line in kept)


def _write_archive(raw: IO[bytes], contents: dict[str, Path | bytes]) -> None:
    # No file name and a zero time in the gzip header: the bytes depend on the contents alone.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for arcname in sorted(contents):
            source = contents[arcname]
            info = tarfile.TarInfo(arcname)
            info.mtime = _FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if isinstance(source, bytes):
                info.size, info.mode = len(source), 0o644
                tar.addfile(info, io.BytesIO(source))
                continue
            status = source.stat()
            info.size = status.st_size
            info.mode = 0o755 if status.st_mode & stat.S_IXUSR else 0o644
            with source.open("rb") as stream:
                tar.addfile(info, stream)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(_COPY_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Scan:
    """What reading an archive has seen so far, and the checks every member goes through."""

    def __init__(self, *, max_members: int, max_unpacked_bytes: int) -> None:
        self.max_members = max_members
        self.max_unpacked_bytes = max_unpacked_bytes
        self.members = 0
        self.unpacked_bytes = 0
        self.seen: set[str] = set()
        self.files: set[str] = set()
        self.manifest: bytes | None = None

    def member(self, raw_name: str, *, is_dir: bool, size: int) -> str:
        """Check one member; returns its path in the archive (no ``./``, no trailing ``/``)."""
        self.members += 1
        if self.members > self.max_members:
            raise PackagingError(f"the archive has more than {self.max_members} members")
        self.unpacked_bytes += max(size, 0)
        if self.unpacked_bytes > self.max_unpacked_bytes:
            raise PackagingError(
                f"the archive unpacks to more than {self.max_unpacked_bytes} bytes"
            )
        name = _checked_member_name(raw_name)
        if not name and not is_dir:
            raise PackagingError(f"the archive has a file with an invalid name: {raw_name!r}")
        if name in self.seen and not is_dir:
            raise PackagingError(f"the archive holds {name!r} twice")
        self.seen.add(name)
        if not is_dir:
            self.files.add(name)
        return name

    def manifest_member(self, name: str, size: int, read: Any) -> None:
        """Keep ``manifest.json``'s bytes when ``name`` is it (``read(n)`` reads at most n)."""
        if name != MANIFEST_NAME:
            return
        if size > MAX_MANIFEST_BYTES:
            raise PackagingError(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
        data = read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise PackagingError(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
        self.manifest = data


def _checked_member_name(raw_name: str) -> str:
    if not raw_name or "\x00" in raw_name:
        raise PackagingError(f"the archive has a member with an invalid name: {raw_name!r}")
    if "\\" in raw_name:
        raise PackagingError(f"member {raw_name!r} has a backslash in its path")
    if raw_name.startswith("/") or (len(raw_name) > 1 and raw_name[1] == ":"):
        raise PackagingError(f"member {raw_name!r} has an absolute path")
    parts = raw_name.split("/")
    if ".." in parts:
        raise PackagingError(f"member {raw_name!r} climbs out of the archive with '..'")
    return "/".join(part for part in parts if part not in ("", "."))


def _scan_tar_gz(stream: IO[bytes], label: str, scanned: _Scan) -> None:
    try:
        with (
            gzip.GzipFile(fileobj=stream, mode="rb") as unzipped,
            tarfile.open(
                fileobj=_BoundedReader(unzipped, scanned.max_unpacked_bytes), mode="r:"
            ) as tar,
        ):
            for info in tar:
                if info.issym() or info.islnk():
                    raise PackagingError(
                        f"member {info.name!r} is a link (to {info.linkname!r}); "
                        "packages cannot hold links"
                    )
                if not (info.isreg() or info.isdir()):
                    raise PackagingError(f"member {info.name!r} is not a regular file or directory")
                name = scanned.member(info.name, is_dir=info.isdir(), size=info.size)
                if info.isreg():
                    scanned.manifest_member(name, info.size, _tar_reader(tar, info))
    except PackagingError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise PackagingError(f"{label} is not a valid .tar.gz archive: {exc}") from exc


def _tar_reader(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Any:
    def read(limit: int) -> bytes:
        stream = tar.extractfile(info)
        return b"" if stream is None else stream.read(limit)

    return read


def _scan_zip(stream: IO[bytes], label: str, scanned: _Scan) -> None:
    try:
        with zipfile.ZipFile(stream) as bundle:
            infos = bundle.infolist()
            if len(infos) > scanned.max_members:
                raise PackagingError(f"the archive has more than {scanned.max_members} members")
            for info in infos:
                mode = (info.external_attr >> 16) & 0o170000
                if mode == stat.S_IFLNK:
                    raise PackagingError(
                        f"member {info.filename!r} is a link; packages cannot hold links"
                    )
                if mode not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise PackagingError(
                        f"member {info.filename!r} is not a regular file or directory"
                    )
                name = scanned.member(info.filename, is_dir=info.is_dir(), size=info.file_size)
                if not info.is_dir():
                    scanned.manifest_member(name, info.file_size, _zip_reader(bundle, info))
    except PackagingError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, RuntimeError, ValueError, EOFError) as exc:
        raise PackagingError(f"{label} is not a valid .zip archive: {exc}") from exc


def _zip_reader(bundle: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    def read(limit: int) -> bytes:
        with bundle.open(info) as stream:
            return stream.read(limit)

    return read


class _BoundedReader(io.RawIOBase):
    """A seekable view of a decompressing stream that refuses to go past ``limit`` bytes.

    tarfile seeks over member data and reads header blocks (a pax header as large as it
    claims) through it, so neither can make a small upload decompress without end.
    """

    def __init__(self, stream: gzip.GzipFile, limit: int) -> None:
        super().__init__()
        self._stream = stream
        # Header blocks past the data's own bytes: a little room, never unbounded.
        self._limit = limit + 1024 * 1024

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._stream.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self.tell() + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target > self._limit:
            raise PackagingError(f"the archive unpacks to more than {self._limit} bytes")
        return self._stream.seek(target)

    def read(self, size: int = -1) -> bytes:
        room = self._limit - self.tell()
        if size < 0:
            size = room
        if size > room:
            raise PackagingError(f"the archive unpacks to more than {self._limit} bytes")
        return self._stream.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
