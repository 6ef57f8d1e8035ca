"""Custom-backend packages on this worker: downloaded, verified, unpacked, and given a venv.

Everything lives under ``<state_dir>/custom-backends/``::

    <slug>/<version>-<sha256[:12]>/      one package version, built once, shared by its replicas
        src/                             the package's files (manifest.json, requirements.txt, code)
        venv/                            its own interpreter and requirements, built with uv
        build.log                        what uv said
        uv.pgid                          while uv runs: its process group (killed by a restarted
                                         agent before it rebuilds the directory)
        installed.json                   written last: the install is complete
    <slug>/<version>-<sha256[:12]>.lock  held while one is prepared (by any agent process)
    sdk/<digest>/inferencekey/           this agent's copy of the SDK package

A package directory without ``installed.json`` is half-built (an agent stopped mid-way) and is
wiped and built again; with it, a second replica and a restarted agent use it as it is.

How the venv imports ``inferencekey.backend``: the backend's ``PYTHONPATH`` names the unpacked
package, then ``sdk/<digest>``, a copy of the ``inferencekey`` package this agent itself imports
(the runtime half of the SDK uses the standard library alone). So it works the same for an
editable checkout and an installed wheel (whose SDK is no separate distribution to install),
needs no network or build step, keeps httpx and pydantic out of the backend's venv, and a backend
always runs the SDK of the agent that serves it; the digest of the copy's files names it, so an
upgraded agent gets a fresh copy next to the old one, which its older engines still use.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from urllib.parse import quote

import httpx
import inferencekey
from inferencekey.backend import archive_format, read_manifest_from_archive
from inferencekey.backend.manifest import BackendManifest
from inferencekey.errors import PackagingError

from ik_contracts.engines import BackendInstall
from ik_contracts.protocol import CustomBackendRef
from worker_agent.runtimes.base import custom_backend_env

log = logging.getLogger("inferencekey.agent")

# A package bigger than this is refused whatever the Manager says its size is.
MAX_PACKAGE_BYTES = 1024 * 1024 * 1024
INSTALLED_MARKER = "installed.json"
UV_MISSING = "uv is not installed on this worker (pip install uv)"
LOG_TAIL_LINES = 40
DEFAULT_BUILD_TIMEOUT_S = 30 * 60.0
UV_PGID_FILE = "uv.pgid"
# The download is hashed and written off the event loop, this much at a time.
_WRITE_BATCH_BYTES = 1024 * 1024
_LOCK_POLL_S = 0.2
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
# What uv may see of the agent's environment beyond what a backend sees: its own settings,
# proxies and certificates (never the agent's credential). The backend itself gets none of them.
_UV_ENV_PREFIXES = ("UV_", "PIP_")
_UV_ENV_NAMES = frozenset(
    {
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "NETRC",
    }
)

Progress = Callable[[str], None]


class PreparationError(RuntimeError):
    """A package could not be made ready; the message says why, ``log_tail`` shows uv's words."""

    def __init__(self, message: str, log_tail: str | None = None) -> None:
        super().__init__(message)
        self.log_tail = log_tail


def uv_command() -> list[str] | None:
    """How to run uv here: the ``uv`` on PATH, else ``python -m uv`` when the PyPI package is
    installed beside the agent; None when neither is."""
    found = shutil.which("uv")
    if found is not None:
        return [found]
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    return None


class PackageLayout:
    """Where one package version lives in the store."""

    def __init__(self, root: Path, ref: CustomBackendRef) -> None:
        self.ref = ref
        self.dir = root / ref.slug / f"{ref.version}-{ref.sha256[:12]}"
        self.lock = self.dir.with_name(self.dir.name + ".lock")
        self.src = self.dir / "src"
        self.venv = self.dir / "venv"
        self.archive = self.dir / "package.download"
        self.build_log = self.dir / "build.log"
        self.marker = self.dir / INSTALLED_MARKER

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def installed(self) -> dict[str, str] | None:
        """The marker's record when the install is complete (and its interpreter still there)."""
        try:
            record = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("sha256") != self.ref.sha256:
            return None
        if not self.python.exists():
            return None
        return record


class CustomBackendStore:
    """Makes custom-backend packages ready to serve, once per package version on this worker.

    ``client`` is the agent's client for its Manager (base URL and credential set).
    """

    def __init__(
        self,
        root: Path,
        client: httpx.AsyncClient,
        *,
        uv: list[str] | None = None,
        python: str = sys.executable,
        build_timeout_s: float = DEFAULT_BUILD_TIMEOUT_S,
    ) -> None:
        self.root = root
        self.client = client
        self.uv = uv
        self.python = python
        self.build_timeout_s = build_timeout_s  # for each uv run
        self.builds = 0  # venvs built by this store (a reused one is not counted)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._sdk_path: Path | None = None

    async def install(self, ref: CustomBackendRef, progress: Progress) -> BackendInstall:
        """The package of ``ref``, ready to serve: downloaded, verified, unpacked and its venv
        built, unless an earlier run (or replica) did so already. Raises PreparationError."""
        _check_ref(ref)
        layout = PackageLayout(self.root, ref)
        sdk = await asyncio.to_thread(self._sdk_copy)
        # One preparation of a package at a time: in this agent, then across processes.
        async with self._locks[str(layout.dir)], _file_lock(layout.lock):
            record = layout.installed()
            if record is None:
                await self._prepare(layout, progress)
                record = layout.installed()
                if record is None:
                    raise PreparationError(
                        f"building custom backend {ref.slug} {ref.version} finished without its "
                        f"{INSTALLED_MARKER} marker (or its venv's interpreter); it is built "
                        "again on the next try"
                    )
        return BackendInstall(
            python=str(layout.python),
            pythonpath=(str(layout.src), str(sdk)),
            entrypoint=record["entrypoint"],
        )

    async def _prepare(self, layout: PackageLayout, progress: Progress) -> None:
        ref = layout.ref
        about = f"custom backend {ref.slug} {ref.version}"
        uv = self.uv or uv_command()
        if uv is None:
            raise PreparationError(UV_MISSING)
        # A uv left running by an agent that stopped mid-build would write into the new venv.
        await asyncio.to_thread(_kill_orphan_uv, layout)
        await asyncio.to_thread(_fresh_dir, layout.dir)
        progress(f"downloading {about}")
        await self._download(layout)
        progress(f"unpacking {about}")
        manifest = await asyncio.to_thread(_unpack, layout)
        refused = await asyncio.to_thread(_refused_requirement, layout.src / "requirements.txt")
        if refused is not None:
            raise PreparationError(
                f"the requirements.txt of {about} has a line this worker refuses: {refused}"
            )
        requires_python = ref.requires_python or manifest.requires_python
        progress(f"building the venv of {about} with uv")
        await self._uv(
            layout,
            [*uv, "venv", "--python", requires_python or self.python, str(layout.venv)],
            f"building the venv of {about} failed",
        )
        if _has_requirements(layout.src / "requirements.txt"):
            progress(f"installing the requirements of {about} with uv")
            await self._uv(
                layout,
                [
                    *uv,
                    "pip",
                    "install",
                    "--python",
                    str(layout.python),
                    "-r",
                    str(layout.src / "requirements.txt"),
                ],
                f"installing the requirements of {about} failed",
            )
        record = {
            "slug": ref.slug,
            "version": ref.version,
            "sha256": ref.sha256,
            "entrypoint": ref.entrypoint or manifest.entrypoint,
            "requires_python": requires_python,
            "built_at": datetime.now(UTC).isoformat(),
        }
        await asyncio.to_thread(_write_marker, layout, record)
        self.builds += 1
        log.info("prepared %s in %s", about, layout.dir)

    async def _download(self, layout: PackageLayout) -> None:
        ref = layout.ref
        cap = min(ref.size_bytes, MAX_PACKAGE_BYTES) if ref.size_bytes > 0 else MAX_PACKAGE_BYTES
        digest = hashlib.sha256()
        size = 0
        url = f"/api/agent/custom-backends/{quote(ref.id, safe='')}/package"
        try:
            async with self.client.stream("GET", url) as response:
                if response.status_code != 200:
                    detail = (await response.aread())[:500].decode(errors="replace")
                    raise PreparationError(
                        f"the Manager answered HTTP {response.status_code} for the package of "
                        f"custom backend {ref.slug} {ref.version}: {_message(detail)}"
                    )
                with open(layout.archive, "wb") as archive:
                    batch: list[bytes] = []
                    batched = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > cap:
                            raise PreparationError(
                                f"the package of custom backend {ref.slug} {ref.version} is "
                                f"larger than {cap} bytes (its registered size is "
                                f"{ref.size_bytes}); refusing it"
                            )
                        batch.append(chunk)
                        batched += len(chunk)
                        if batched >= _WRITE_BATCH_BYTES:
                            await asyncio.to_thread(_hash_and_write, digest, archive, batch)
                            batch, batched = [], 0
                    await asyncio.to_thread(_hash_and_write, digest, archive, batch)
        except httpx.HTTPError as error:
            raise PreparationError(
                f"downloading custom backend {ref.slug} {ref.version} failed: "
                f"{type(error).__name__}: {error}"
            ) from None
        if digest.hexdigest() != ref.sha256:
            raise PreparationError(
                f"the package of custom backend {ref.slug} {ref.version} does not match its "
                f"sha256: the Manager registered {ref.sha256}, the download is "
                f"{digest.hexdigest()} ({size} bytes); refusing to run it"
            )

    async def _uv(self, layout: PackageLayout, argv: list[str], failure: str) -> None:
        try:
            child = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=_uv_env(os.environ, cpu_only=layout.ref.cpu_only),
                cwd=layout.src,
                # Its own process group: uv and every build script it runs are killed together.
                start_new_session=True,
            )
        except FileNotFoundError:
            raise PreparationError(UV_MISSING) from None
        pgid_file = layout.dir / UV_PGID_FILE
        pgid_file.write_text(f"{child.pid}\n")
        try:
            output, _ = await asyncio.wait_for(child.communicate(), self.build_timeout_s)
        except (TimeoutError, asyncio.CancelledError) as stopped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            await child.wait()
            pgid_file.unlink(missing_ok=True)
            if isinstance(stopped, asyncio.CancelledError):
                raise
            raise PreparationError(
                f"{failure}: uv ran past the build timeout of {self.build_timeout_s:g} s "
                "(INFERENCEKEY_AGENT_BACKEND_BUILD_TIMEOUT_S) and was killed"
            ) from None
        pgid_file.unlink(missing_ok=True)
        text = output.decode(errors="replace")
        with open(layout.build_log, "a", encoding="utf-8") as build_log:
            build_log.write(f"$ {' '.join(argv)}\n{text}\n")
        if child.returncode != 0:
            tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
            raise PreparationError(
                f"{failure}: uv exited with {child.returncode}: {_uv_error(text)}", log_tail=tail
            )

    def _sdk_copy(self) -> Path:
        """This agent's SDK package, copied under ``sdk/<digest>`` (once per agent version)."""
        if self._sdk_path is not None and self._sdk_path.is_dir():
            return self._sdk_path
        source = Path(inferencekey.__file__).parent
        files = sorted(_sdk_files(source))
        digest = hashlib.sha256()
        for relative in files:
            digest.update(relative.as_posix().encode() + b"\0")
            digest.update((source / relative).read_bytes())
        home = self.root / "sdk" / digest.hexdigest()[:16]
        if not (home / "inferencekey").is_dir():
            home.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=home.parent))
            for relative in files:
                target = staging / "inferencekey" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / relative, target)
            try:
                staging.rename(home)
            except OSError as error:  # another agent process put it there first
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                shutil.rmtree(staging, ignore_errors=True)
        self._sdk_path = home
        return home


def _check_ref(ref: CustomBackendRef) -> None:
    """The ref names paths on this host: only what the Manager's own rules allow gets there."""
    if not _SLUG.match(ref.slug) or len(ref.slug) > 100:
        raise PreparationError(f"refusing custom backend slug {ref.slug[:100]!r}: not a slug")
    if not _VERSION.match(ref.version):
        raise PreparationError(f"refusing custom backend version {ref.version[:64]!r}")
    if not _SHA256.match(ref.sha256):
        raise PreparationError(
            f"refusing custom backend {ref.slug} {ref.version}: its sha256 is not 64 lowercase "
            "hex digits"
        )


@contextlib.asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[bytes] = open(path, "ab")  # noqa: SIM115 (closed in the finally below)
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_LOCK_POLL_S)  # another agent process prepares it
        yield
    finally:
        handle.close()  # releases the lock


def _hash_and_write(digest: hashlib._Hash, archive: IO[bytes], chunks: list[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)
        archive.write(chunk)


def _kill_orphan_uv(layout: PackageLayout) -> None:
    """Kill the process group of a uv that an earlier agent started on this directory and that
    still runs (the file lock is ours, so no live agent owns it). The recorded id is trusted only
    when /proc shows a uv command line naming this directory (not a reused id)."""
    try:
        pgid = int((layout.dir / UV_PGID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    words = [word.decode(errors="replace") for word in cmdline.split(b"\0") if word]
    is_uv = any(Path(word).name == "uv" for word in words[:3])
    if pgid > 1 and is_uv and any(str(layout.dir) in word for word in words):
        log.warning("killing uv (process group %d) left building %s", pgid, layout.dir)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        # Gone (or a zombie) before the directory it wrote to is wiped.
        for _ in range(50):
            try:
                state = Path(f"/proc/{pgid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.05)


def _fresh_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def _unpack(layout: PackageLayout) -> BackendManifest:
    """Unpack the verified archive into ``src``, refusing what no package may hold."""
    ref = layout.ref
    try:
        # Every member checked first: no absolute paths, '..', links, devices, bombs.
        manifest = read_manifest_from_archive(layout.archive)
        layout.src.mkdir()
        if archive_format(layout.archive) == "tar.gz":
            with tarfile.open(layout.archive, "r:gz") as tar:
                tar.extractall(layout.src, filter="data")
        else:
            with zipfile.ZipFile(layout.archive) as bundle:
                bundle.extractall(layout.src)
    except (PackagingError, tarfile.TarError, zipfile.BadZipFile, OSError) as error:
        raise PreparationError(
            f"the package of custom backend {ref.slug} {ref.version} cannot be unpacked: {error}"
        ) from None
    layout.archive.unlink()
    if not (layout.src / "requirements.txt").exists():
        (layout.src / "requirements.txt").write_text("")
    return manifest


# Lines of requirements.txt that would make uv read more than the package's requirement
# specifiers: options (-r, -c, -e, --index-url, --find-links, ...), local paths, file URLs.
_COMMENT = re.compile(r"(?:^|\s)#.*")
_ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def refused_requirement_line(line: str) -> str | None:
    """Why a line of a package's requirements.txt is refused, or None when it is a plain
    requirement: ``name[extras] version ; markers``, an https URL, or ``name @ https://…``
    (``--hash=`` may follow one)."""
    text = _COMMENT.sub("", line).strip()
    if not text:
        return None
    shown = repr(text[:80])
    if text.startswith("-"):
        return f"{shown} is an option; only requirement specifiers are allowed"
    option = next((w for w in text.split()[1:] if w.startswith("-") and w[:6] != "--hash"), None)
    if option is not None:
        return f"{shown} holds the option {option[:40]!r}; only requirement specifiers are allowed"
    if "${" in text:  # uv would fill in a variable of its environment (an index credential)
        return f"{shown} names an environment variable"
    requirement = text.split(";", 1)[0].strip()
    _, at, url = requirement.partition("@")
    if at or "://" in requirement:
        target = url.strip() if at else requirement
        if not target.lower().startswith("https://"):
            return f"{shown} is not an https URL (local paths and file URLs are refused)"
        return None
    lowered = requirement.lower()
    if (
        lowered.startswith(("file:", "~", "."))
        or "/" in requirement
        or "\\" in requirement
        or lowered.endswith(_ARCHIVE_SUFFIXES)
    ):
        return f"{shown} names a local path or file"
    return None


def _refused_requirement(path: Path) -> str | None:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    # A trailing backslash joins lines, as pip reads them.
    joined = "\n".join(lines).replace("\\\n", " ")
    for line in joined.splitlines():
        why = refused_requirement_line(line)
        if why is not None:
            return why
    return None


def _has_requirements(path: Path) -> bool:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return any(line.strip() and not line.lstrip().startswith("#") for line in lines)


def _write_marker(layout: PackageLayout, record: dict[str, str]) -> None:
    staging = layout.marker.with_suffix(".tmp")
    staging.write_text(json.dumps(record, indent=2) + "\n")
    staging.replace(layout.marker)


def _sdk_files(source: Path) -> Iterator[Path]:
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if "__pycache__" in relative.parts or path.suffix in (".pyc", ".pyo"):
            continue
        if path.is_file():
            yield relative


def _uv_env(environ: Mapping[str, str], *, cpu_only: bool) -> dict[str, str]:
    env = custom_backend_env(environ)
    # PyTorch and its kin from the index that fits this host's GPUs (uv reads the driver), or
    # CPU builds for a backend that needs no GPU; an operator's UV_TORCH_BACKEND wins.
    env["UV_TORCH_BACKEND"] = "cpu" if cpu_only else "auto"
    env.update(
        {
            name: value
            for name, value in environ.items()
            if (name.startswith(_UV_ENV_PREFIXES) or name in _UV_ENV_NAMES)
            and not name.startswith("INFERENCEKEY_")
        }
    )
    env["NO_COLOR"] = "1"
    return env


def _uv_error(output: str) -> str:
    """uv's own words: from its first ``error:`` line on, on one line (at most 600 characters)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith("error:")), None)
    chosen = lines[start:] if start is not None else lines[-3:]
    return " ".join(chosen)[:600] or "no output"


def _message(detail: str) -> str:
    try:
        body = json.loads(detail)
    except ValueError:
        return detail.strip() or "no message"
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or detail)
    return detail
