"""Preparing a custom backend on a worker: a real package from a real HTTP server, a real venv
built by uv, a real backend process started from it.

The packages are built with the SDK's `package_backend` from tests/agent/sample_backend; the
Manager's package route is tests/agent/scripted_manager.py. Requirements install from a local
directory of wheels (the `local_index` fixture: uv with no index), so nothing needs the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from ik_contracts.engines import BackendInstall, CustomBackendEngine
from tests.agent.sample_packages import SAMPLE_SRC, build_package, ref_of
from tests.agent.scripted_manager import ScriptedManager
from worker_agent.custom_backends import (
    UV_MISSING,
    UV_PGID_FILE,
    CustomBackendStore,
    PreparationError,
    refused_requirement_line,
    uv_command,
)
from worker_agent.ports import PortAllocator
from worker_agent.runtimes.base import LaunchSpec
from worker_agent.runtimes.process import ProcessRuntime

TOKEN = "ik_agent_0123abcd_" + "ab" * 32
PORTS = PortAllocator(44000, 44999)


@pytest.fixture
def manager() -> Iterator[ScriptedManager]:
    running = ScriptedManager(TOKEN)
    yield running
    running.stop()


@pytest.fixture
async def manager_client(manager: ScriptedManager) -> AsyncIterator[httpx.AsyncClient]:
    """The agent's client for its Manager: base URL and credential set."""
    async with httpx.AsyncClient(
        base_url=manager.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "agent-state" / "custom-backends"


class Steps(list[str]):
    """The reasons a preparation reports, in order."""

    def __call__(self, reason: str) -> None:
        self.append(reason)


async def test_a_package_is_downloaded_verified_unpacked_and_given_its_own_venv(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    store = CustomBackendStore(store_root, manager_client)
    steps = Steps()

    install = await store.install(ref_of(package), steps)

    assert steps == [
        "downloading custom backend sample 1.0.0",
        "unpacking custom backend sample 1.0.0",
        "building the venv of custom backend sample 1.0.0 with uv",
    ]
    home = store_root / "sample" / f"1.0.0-{package.sha256[:12]}"
    assert install.python == str(home / "venv" / "bin" / "python")
    assert install.pythonpath[0] == str(home / "src")
    assert (home / "src" / "sample_backend.py").read_bytes() == (
        SAMPLE_SRC / "sample_backend.py"
    ).read_bytes()
    assert json.loads((home / "src" / "manifest.json").read_text())["entrypoint"] == (
        "sample_backend:Sample"
    )
    assert (Path(install.pythonpath[1]) / "inferencekey" / "backend" / "serve.py").is_file()
    assert install.entrypoint == "sample_backend:Sample"
    assert json.loads((home / "installed.json").read_text())["sha256"] == package.sha256
    assert not (home / "package.download").exists()
    assert (store.builds, manager.downloads["cbv_sample"]) == (1, 1)


async def test_the_backend_serves_from_its_venv_with_the_workloads_config(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    ref = ref_of(package)
    install = await CustomBackendStore(store_root, manager_client).install(ref, Steps())
    engine = CustomBackendEngine(ref, install)
    port = PORTS.allocate()
    argv, _ = engine.build_argv(None, "sample-model", "0.0.0.0", port)
    runtime = ProcessRuntime(tmp_path / "agent-state" / "process")
    env = engine.env("0.0.0.0", port)
    runtime.start(LaunchSpec("rep_cb", "wl", "wrk", argv, env, [], port, None, plain_process=True))
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while not await engine.ready_check(base, client):
                assert runtime.running()["rep_cb"].alive, runtime.log_tail("rep_cb")
                assert time.monotonic() < deadline, "the backend never became ready"
                await asyncio.sleep(0.1)
            answer = await client.post(
                f"{base}/process", json={"id": "j1", "input": {"prompt": "whoami"}}
            )
            greeting = await client.post(
                f"{base}/process", json={"id": "j2", "input": {"prompt": "hi"}}
            )
    finally:
        runtime.stop("rep_cb", timeout_s=5)
    python, config = answer.json()["output"]["text"].split(" ", 1)
    assert python == install.python  # the venv's interpreter, not the agent's
    assert json.loads(config) == {"greeting": "hola"}
    assert greeting.json()["output"]["text"] == "hola: hi"
    assert "model loaded" in runtime.log_tail("rep_cb")


async def test_two_replicas_preparing_one_package_at_once_build_it_once(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    store = CustomBackendStore(store_root, manager_client)

    first, second = await asyncio.gather(
        store.install(ref_of(package), Steps()), store.install(ref_of(package), Steps())
    )

    assert first == second
    assert (store.builds, manager.downloads["cbv_sample"]) == (1, 1)


async def test_a_restarted_agent_uses_the_venv_already_built(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    first = await CustomBackendStore(store_root, manager_client).install(ref_of(package), Steps())
    marker = store_root / "sample" / f"1.0.0-{package.sha256[:12]}" / "installed.json"
    built_at = marker.stat().st_mtime_ns

    restarted = CustomBackendStore(store_root, manager_client)
    steps = Steps()
    again = await restarted.install(ref_of(package), steps)

    assert again == first
    assert (restarted.builds, steps, manager.downloads["cbv_sample"]) == (0, [], 1)
    assert marker.stat().st_mtime_ns == built_at


async def test_a_half_built_package_is_built_again(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    await CustomBackendStore(store_root, manager_client).install(ref_of(package), Steps())
    home = store_root / "sample" / f"1.0.0-{package.sha256[:12]}"
    # An agent stopped after the venv but before the marker; a stray file from that run.
    (home / "installed.json").unlink()
    (home / "src" / "stray.txt").write_text("left over")

    restarted = CustomBackendStore(store_root, manager_client)
    await restarted.install(ref_of(package), Steps())

    assert (restarted.builds, manager.downloads["cbv_sample"]) == (1, 2)
    assert (home / "installed.json").exists()
    assert not (home / "src" / "stray.txt").exists()


async def test_a_package_that_does_not_match_its_sha256_is_refused(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    ref = ref_of(package, sha256=hashlib.sha256(b"another package").hexdigest())

    with pytest.raises(PreparationError, match="does not match its sha256") as refused:
        await CustomBackendStore(store_root, manager_client).install(ref, Steps())

    assert package.sha256 in str(refused.value)
    home = store_root / "sample" / f"1.0.0-{ref.sha256[:12]}"
    assert not (home / "src").exists()
    assert not (home / "installed.json").exists()


async def test_a_download_longer_than_the_registered_size_is_refused(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    ref = ref_of(package, size_bytes=package.size_bytes // 2)

    with pytest.raises(PreparationError, match=f"larger than {package.size_bytes // 2} bytes"):
        await CustomBackendStore(store_root, manager_client).install(ref, Steps())


async def test_a_package_the_manager_does_not_have_fails_naming_its_answer(
    tmp_path: Path, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    with pytest.raises(PreparationError, match=r"HTTP 404 .*no such package"):
        await CustomBackendStore(store_root, manager_client).install(ref_of(package), Steps())


async def test_a_package_holding_a_link_is_refused_even_with_the_right_sha256(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(package.path) as original, tarfile.open(evil, "w:gz") as tar:
        for member in original.getmembers():
            tar.addfile(member, original.extractfile(member))
        link = tarfile.TarInfo("passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    manager.add_package("cbv_evil", evil)
    data = evil.read_bytes()
    ref = ref_of(package, "cbv_evil", sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))

    with pytest.raises(PreparationError, match=r"cannot be unpacked: .*link"):
        await CustomBackendStore(store_root, manager_client).install(ref, Steps())
    assert not list(store_root.rglob("passwd"))


async def test_a_ref_whose_slug_is_a_path_is_refused(
    tmp_path: Path, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    with pytest.raises(PreparationError, match="not a slug"):
        await CustomBackendStore(store_root, manager_client).install(
            ref_of(package, slug="../../etc"), Steps()
        )


async def test_requirements_are_installed_into_the_venv_only(
    tmp_path: Path,
    manager: ScriptedManager,
    manager_client: httpx.AsyncClient,
    store_root: Path,
    local_index: Path,
) -> None:
    package = build_package(tmp_path / "dist", requirements=["ik-sample-extra==1.0"])
    manager.add_package("cbv_sample", package.path)
    steps = Steps()

    install = await CustomBackendStore(store_root, manager_client).install(ref_of(package), steps)

    assert steps[-1] == "installing the requirements of custom backend sample 1.0.0 with uv"
    probe = "import ik_sample_extra; print(ik_sample_extra.describe())"
    in_venv = await asyncio.create_subprocess_exec(
        install.python, "-c", probe, stdout=asyncio.subprocess.PIPE
    )
    assert (await in_venv.communicate())[0].decode().strip() == "extra module 1.0"
    in_agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, stderr=asyncio.subprocess.DEVNULL
    )
    assert await in_agent.wait() != 0


async def test_a_requirement_that_does_not_exist_fails_with_uvs_reason(
    tmp_path: Path,
    manager: ScriptedManager,
    manager_client: httpx.AsyncClient,
    store_root: Path,
    local_index: Path,
) -> None:
    package = build_package(tmp_path / "dist", requirements=["ik-no-such-package-anywhere"])
    manager.add_package("cbv_sample", package.path)
    store = CustomBackendStore(store_root, manager_client)

    with pytest.raises(PreparationError) as failed:
        await store.install(ref_of(package), Steps())

    message = str(failed.value)
    assert message.startswith(
        "installing the requirements of custom backend sample 1.0.0 failed: uv exited with 1: "
        "error:"
    )
    assert "ik-no-such-package-anywhere" in message
    assert failed.value.log_tail is not None and "No solution found" in failed.value.log_tail
    home = store_root / "sample" / f"1.0.0-{package.sha256[:12]}"
    assert "ik-no-such-package-anywhere" in (home / "build.log").read_text()
    assert not (home / "installed.json").exists()
    assert store.builds == 0


@pytest.mark.parametrize(
    "line",
    [
        "-r /etc/passwd",
        "--requirement=other.txt",
        "-c constraints.txt",
        "-e .",
        "--index-url https://mirror.example/simple",
        "--extra-index-url=https://evil.example/simple",
        "-f /home",
        "--find-links https://evil.example/wheels",
        "--trusted-host evil.example",
        "  -i https://evil.example/simple",
        "numpy --index-url https://evil.example/simple",
        "/etc/passwd",
        "./vendor/pkg",
        "../other-package",
        "~/wheels/pkg.whl",
        "vendor/pkg-1.0-py3-none-any.whl",
        "pkg-1.0.tar.gz",
        "file:///etc/passwd",
        "pkg @ file:///home/agent/pkg",
        "pkg @ http://plain.example/pkg.whl",
        "git+ssh://git@example.com/pkg.git",
        "pkg @ https://example.com/${UV_INDEX_PASSWORD}.whl",
    ],
)
def test_requirement_lines_that_reach_beyond_plain_specifiers_are_refused(line: str) -> None:
    assert refused_requirement_line(line) is not None


@pytest.mark.parametrize(
    "line",
    [
        "",
        "# a comment, even -r other.txt",
        "numpy",
        "numpy>=1.26,<3",
        "torch==2.4.0 ; platform_machine == 'x86_64'",
        "uvicorn[standard]~=0.30",
        "requests >= 2  # pinned loosely",
        "pkg @ https://example.com/pkg-1.0-py3-none-any.whl",
        "https://example.com/pkg-1.0-py3-none-any.whl",
        "numpy==2.0.0 --hash=sha256:" + "0" * 64,
    ],
)
def test_plain_requirement_specifiers_are_allowed(line: str) -> None:
    assert refused_requirement_line(line) is None


async def test_a_requirements_option_fails_the_package_before_uv_runs(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist", requirements=["numpy", "-r /etc/passwd"])
    manager.add_package("cbv_sample", package.path)

    with pytest.raises(PreparationError) as refused:
        await CustomBackendStore(store_root, manager_client).install(ref_of(package), Steps())

    assert str(refused.value) == (
        "the requirements.txt of custom backend sample 1.0.0 has a line this worker refuses: "
        "'-r /etc/passwd' is an option; only requirement specifiers are allowed"
    )
    home = store_root / "sample" / f"1.0.0-{package.sha256[:12]}"
    assert not (home / "venv").exists()
    assert not (home / "build.log").exists()


def _slow_uv(tmp_path: Path) -> Path:
    """A stand-in for uv that starts a build script (a grandchild) and hangs. A shell script: it
    has its grandchild within milliseconds even on a loaded machine (a Python one took over the
    2 s build timeout there, and was killed before it wrote the grandchild's id)."""
    script = tmp_path / "bin" / "uv"
    script.parent.mkdir(parents=True, exist_ok=True)
    pid_file = tmp_path / "grandchild.pid"
    script.write_text(
        "#!/bin/sh\n"
        "sleep 600 &\n"
        f"echo $! > '{pid_file}.tmp'\n"
        f"mv '{pid_file}.tmp' '{pid_file}'\n"
        "wait\n"
    )
    script.chmod(0o755)
    return script


def _grandchild(tmp_path: Path) -> int:
    """The stand-in uv's build script, once it has started (within seconds)."""
    pid_file = tmp_path / "grandchild.pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_file.exists(), "the stand-in uv never started its build script"
    return int(pid_file.read_text())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A killed child of this test process stays a zombie until reaped: that is gone too.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


async def test_a_uv_run_past_the_build_timeout_is_killed_with_its_build_scripts(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    store = CustomBackendStore(
        store_root, manager_client, uv=[str(_slow_uv(tmp_path))], build_timeout_s=2
    )

    with pytest.raises(PreparationError) as failed:
        await store.install(ref_of(package), Steps())

    assert str(failed.value) == (
        "building the venv of custom backend sample 1.0.0 failed: uv ran past the build timeout "
        "of 2 s (INFERENCEKEY_AGENT_BACKEND_BUILD_TIMEOUT_S) and was killed"
    )
    grandchild = _grandchild(tmp_path)
    deadline = time.monotonic() + 10
    while not _gone(grandchild) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _gone(grandchild)
    home = store_root / "sample" / f"1.0.0-{package.sha256[:12]}"
    assert not (home / UV_PGID_FILE).exists()


async def test_a_uv_left_running_by_a_stopped_agent_is_killed_before_the_rebuild(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    home = store_root / "sample" / f"1.0.0-{package.sha256[:12]}"
    home.mkdir(parents=True)
    # A recorded id that is no uv of this package now (the id was reused) is left alone.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    # What an agent killed mid-build leaves: its uv (and a build script) still writing.
    orphan = subprocess.Popen(
        [str(_slow_uv(tmp_path)), "venv", str(home / "venv")], start_new_session=True
    )
    try:
        # The orphan has started its build script before the agent comes back.
        grandchild = _grandchild(tmp_path)
        (home / UV_PGID_FILE).write_text(f"{bystander.pid}\n")
        await CustomBackendStore(store_root, manager_client).install(ref_of(package), Steps())
        assert bystander.poll() is None

        (home / "installed.json").unlink()
        (home / UV_PGID_FILE).write_text(f"{orphan.pid}\n")
        await CustomBackendStore(store_root, manager_client).install(ref_of(package), Steps())
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while not _gone(grandchild) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert _gone(grandchild)
        assert (home / "installed.json").exists()
        assert not (home / UV_PGID_FILE).exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(orphan.pid, signal.SIGKILL)  # its build script too, if the test failed
        for process in (orphan, bystander):
            process.kill()
            process.wait()


async def test_without_uv_the_reason_says_how_to_install_it(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    store = CustomBackendStore(store_root, manager_client, uv=[str(tmp_path / "no-uv-here")])

    with pytest.raises(PreparationError) as failed:
        await store.install(ref_of(package), Steps())
    assert str(failed.value) == UV_MISSING == "uv is not installed on this worker (pip install uv)"


async def test_a_zip_package_is_unpacked_as_well(
    tmp_path: Path, manager: ScriptedManager, manager_client: httpx.AsyncClient, store_root: Path
) -> None:
    package = build_package(tmp_path / "dist")
    zipped = tmp_path / "sample-1.0.0.zip"
    with tarfile.open(package.path) as tar, zipfile.ZipFile(zipped, "w") as bundle:
        for member in tar.getmembers():
            source = tar.extractfile(member)
            assert source is not None
            bundle.writestr(member.name, source.read())
    manager.add_package("cbv_zip", zipped)
    data = zipped.read_bytes()
    ref = ref_of(package, "cbv_zip", sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))

    install = await CustomBackendStore(store_root, manager_client).install(ref, Steps())

    assert (Path(install.pythonpath[0]) / "sample_backend.py").is_file()
    assert isinstance(install, BackendInstall)


def test_without_uv_on_path_the_agent_runs_the_uv_package_with_its_own_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    command = uv_command()
    assert command == [sys.executable, "-m", "uv"]
    version = subprocess.run([*command, "--version"], capture_output=True, check=True)
    assert version.stdout.startswith(b"uv ")
