"""``python -m inferencekey.backend.serve`` as the worker runs it: a separate process, its log
lines, its exit status for each way it ends, and where it listens.

The backends live in a module written to a temporary directory and put on ``PYTHONPATH``, as
the worker puts an extracted package there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port

BACKENDS = '''
import pathlib
import time

from inferencekey.backend import BackendContext, CustomBackend, Job, Result


class Gated(CustomBackend):
    """setup() waits until the file named by config["gate"] exists."""

    name = "gated"
    version = "2.0.0"

    def setup(self, ctx: BackendContext) -> None:
        gate = pathlib.Path(ctx.config["gate"])
        while not gate.exists():
            time.sleep(0.02)
        self.config = ctx.config

    def process(self, job: Job) -> Result:
        return Result({"text": job.text(), "config": self.config})


class Quick(CustomBackend):
    def setup(self, ctx: BackendContext) -> None:
        self.config = ctx.config

    def process(self, job: Job) -> Result:
        return Result({"config": self.config})


class Broken(CustomBackend):
    def setup(self, ctx: BackendContext) -> None:
        raise RuntimeError("weights not found at /models/missing")

    def process(self, job: Job) -> Result:
        return Result({})


class FailsToConstruct(Quick):
    def __init__(self) -> None:
        raise ValueError("no GPU driver")


class NotABackend:
    pass
'''
IMPORT_FAILS = "import definitely_not_installed_package\n"
STOP_TIMEOUT_S = 15


@pytest.fixture
def backend_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pkg"
    directory.mkdir()
    (directory / "cli_backends.py").write_text(textwrap.dedent(BACKENDS))
    (directory / "import_fails.py").write_text(IMPORT_FAILS)
    return directory


@pytest.fixture
def start_serve(backend_dir: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts the serve command with the backends on PYTHONPATH; kills what is left at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        environment = {
            name: value
            for name, value in os.environ.items()
            if name not in ("IK_BACKEND_ENTRYPOINT", "IK_BACKEND_CONFIG")
        }
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(backend_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        environment.update(env or {})
        process = subprocess.Popen(
            [sys.executable, "-m", "inferencekey.backend.serve", *args],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=STOP_TIMEOUT_S)


def wait_for_healthz(port: int, status: int, process: subprocess.Popen[str]) -> httpx.Response:
    """Polls /healthz until it answers ``status``; fails if the process ends first."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        except httpx.TransportError:
            time.sleep(0.02)
            continue
        if answer.status_code == status:
            return answer
        time.sleep(0.02)
    raise AssertionError(f"/healthz never answered {status}")


def stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str]:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=STOP_TIMEOUT_S)
    return process.returncode, stderr


def test_serve_is_503_until_setup_returns_logs_two_lines_and_stops_on_sigterm(
    start_serve: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    port, gate = free_port(), tmp_path / "gate"
    config = {"gate": str(gate), "model": "small"}
    process = start_serve(
        "--port", str(port), "--backend", "cli_backends:Gated", "--config-json", json.dumps(config)
    )
    loading = wait_for_healthz(port, 503, process)
    assert loading.json() == {"status": "loading"}
    not_ready = httpx.post(f"http://127.0.0.1:{port}/process", json={"id": "j", "input": {}})
    assert (not_ready.status_code, not_ready.json()) == (503, {"error": "backend not ready"})
    assert httpx.get(f"http://127.0.0.1:{port}/meta").json()["name"] == "gated"

    gate.touch()
    assert wait_for_healthz(port, 200, process).json() == {"status": "ok"}
    answer = httpx.post(
        f"http://127.0.0.1:{port}/process", json={"id": "j1", "input": {"prompt": "hola"}}
    )
    assert answer.json() == {"output": {"text": "hola", "config": config}}

    returncode, stderr = stop(process)
    assert returncode == 0, stderr
    lines = stderr.splitlines()
    assert lines.count("model loaded") == 1
    serving = f"serving on http://127.0.0.1:{port}"
    assert lines.index("model loaded") < lines.index(serving)


def test_sigint_stops_the_server_cleanly(
    start_serve: Callable[..., subprocess.Popen[str]],
) -> None:
    port = free_port()
    process = start_serve("--port", str(port), "--backend", "cli_backends:Quick")
    wait_for_healthz(port, 200, process)
    returncode, stderr = stop(process, signal.SIGINT)
    assert returncode == 0, stderr
    assert "Traceback" not in stderr


def test_sigterm_while_setup_runs_exits_0(
    start_serve: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    port = free_port()
    config = json.dumps({"gate": str(tmp_path / "never")})
    process = start_serve(
        "--port", str(port), "--backend", "cli_backends:Gated", "--config-json", config
    )
    wait_for_healthz(port, 503, process)
    returncode, stderr = stop(process)
    assert returncode == 0, stderr
    assert "model loaded" not in stderr


def test_entrypoint_and_config_fall_back_to_the_environment(
    start_serve: Callable[..., subprocess.Popen[str]],
) -> None:
    port = free_port()
    process = start_serve(
        "--port",
        str(port),
        env={"IK_BACKEND_ENTRYPOINT": "cli_backends:Quick", "IK_BACKEND_CONFIG": '{"k": 1}'},
    )
    wait_for_healthz(port, 200, process)
    answer = httpx.post(f"http://127.0.0.1:{port}/process", json={"id": "j", "input": {}})
    assert answer.json() == {"output": {"config": {"k": 1}}}
    assert stop(process)[0] == 0


def test_the_flags_win_over_the_environment(
    start_serve: Callable[..., subprocess.Popen[str]],
) -> None:
    port = free_port()
    process = start_serve(
        "--port",
        str(port),
        "--backend",
        "cli_backends:Quick",
        "--config-json",
        '{"from": "flag"}',
        env={"IK_BACKEND_ENTRYPOINT": "cli_backends:Broken", "IK_BACKEND_CONFIG": "{}"},
    )
    wait_for_healthz(port, 200, process)
    answer = httpx.post(f"http://127.0.0.1:{port}/process", json={"id": "j", "input": {}})
    assert answer.json() == {"output": {"config": {"from": "flag"}}}
    assert stop(process)[0] == 0


def test_the_server_listens_on_127_0_0_1_only(
    start_serve: Callable[..., subprocess.Popen[str]],
) -> None:
    port = free_port()
    process = start_serve("--port", str(port), "--backend", "cli_backends:Quick")
    wait_for_healthz(port, 200, process)
    # 127.0.0.2 is loopback too: a server bound to every address would answer there.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.2:{port}/healthz")
    listening = Path("/proc/net/tcp")
    if listening.exists():
        rows = [line.split() for line in listening.read_text().splitlines()[1:]]
        # Listening sockets (state 0A) on our port: the address is 127.0.0.1 (little-endian hex).
        ours = [row[1] for row in rows if row[3] == "0A" and row[1].endswith(f":{port:04X}")]
        assert ours == [f"0100007F:{port:04X}"]
    assert stop(process)[0] == 0


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("cli_backends:Broken", "RuntimeError: weights not found at /models/missing"),
        ("cli_backends:FailsToConstruct", "ValueError: no GPU driver"),
    ],
)
def test_a_failing_setup_exits_1_with_the_exception(
    start_serve: Callable[..., subprocess.Popen[str]], backend: str, message: str
) -> None:
    process = start_serve("--port", str(free_port()), "--backend", backend)
    _, stderr = process.communicate(timeout=STOP_TIMEOUT_S)
    assert process.returncode == 1, stderr
    assert message in stderr
    assert "Traceback" in stderr
    assert "model loaded" not in stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--backend", "cli_backends"], {}, "must look like 'module:Class'"),
        (["--backend", "no_such_module:Backend"], {}, "could not import 'no_such_module'"),
        (["--backend", "import_fails:Backend"], {}, "could not import 'import_fails'"),
        (["--backend", "cli_backends:Missing"], {}, "has no attribute 'Missing'"),
        (["--backend", "cli_backends:NotABackend"], {}, "not a CustomBackend subclass"),
        ([], {}, "pass --backend module:Class or set IK_BACKEND_ENTRYPOINT"),
        (["--backend", "cli_backends:Quick", "--config-json", "[1]"], {}, "must be a JSON object"),
        (["--backend", "cli_backends:Quick", "--config-json", "{x"], {}, "is not valid JSON"),
        (["--backend", "cli_backends:Quick"], {"IK_BACKEND_CONFIG": "7"}, "$IK_BACKEND_CONFIG"),
    ],
)
def test_a_bad_entrypoint_or_config_exits_2_with_a_clear_message(
    start_serve: Callable[..., subprocess.Popen[str]],
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    process = start_serve("--port", str(free_port()), *args, env=env)
    _, stderr = process.communicate(timeout=STOP_TIMEOUT_S)
    assert process.returncode == 2, stderr
    assert stderr.startswith("error: ")
    assert message in stderr


def test_a_port_in_use_exits_1(start_serve: Callable[..., subprocess.Popen[str]]) -> None:
    port = free_port()
    first = start_serve("--port", str(port), "--backend", "cli_backends:Quick")
    wait_for_healthz(port, 200, first)
    second = start_serve("--port", str(port), "--backend", "cli_backends:Quick")
    _, stderr = second.communicate(timeout=STOP_TIMEOUT_S)
    assert second.returncode == 1
    assert f"could not listen on 127.0.0.1:{port}" in stderr
    assert stop(first)[0] == 0


def test_the_serve_path_imports_neither_httpx_nor_pydantic(backend_dir: Path) -> None:
    """A worker may serve with the SDK on PYTHONPATH alone, in an environment without them."""
    probe = (
        "import sys, inferencekey.backend.serve, cli_backends; "
        "print(sorted({'httpx', 'pydantic'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(backend_dir)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]"
