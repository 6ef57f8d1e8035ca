"""Fixtures: one freshly migrated database and one live Manager per test run.

Also the run's lanes and its clean-up check:
- a test that uses the real engine (`llama_server`, `gguf_model`, so `start_agent` too) is marked
  `engine`, one that needs a Docker engine `docker`, one that builds or installs the wheel
  `install`, from the fixtures it uses: `pytest -m "not engine"` is the fast lane;
- at the end of the run, a process, engine container or in-process server this run started and
  left running fails the run, named (tests/leftovers.py), after it is stopped.
"""

from __future__ import annotations

import functools
import itertools
import os
import secrets
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from inferencekey import ManagementClient

from tests import engine_setup
from tests.leftovers import TestRun, find_leftovers
from tests.support import (
    AgentFactory,
    RunningAgent,
    RunningManager,
    TestProject,
    bearer,
    create_database,
    create_project,
    create_sdk_token,
    drop_database,
    free_port,
    own_manager,
)
from worker_agent.config import DEFAULT_PORT_RANGE, AgentConfig
from worker_agent.runtimes.base import LaunchSpec
from worker_agent.runtimes.docker import DockerRuntime, container_name

# A test using any of these fixtures (directly or through another fixture) gets the marker.
MARKED_BY_FIXTURE = {
    "engine": {"llama_server", "gguf_model"},
    "docker": {"docker_host"},
    "install": {"built_wheel"},
}
TEST_RUN = pytest.StashKey[TestRun]()


def pytest_configure(config: pytest.Config) -> None:
    run = TestRun()
    run.mark_environment()  # before any test starts a process, so every one inherits it
    config.stash[TEST_RUN] = run


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in MARKED_BY_FIXTURE.items():
            if used & fixtures:
                item.add_marker(marker)


_agents_started = itertools.count()


def next_engine_ports() -> tuple[int, int]:
    """A block of the agents' default engine range of its own for each agent a test starts (and
    for each pytest-xdist worker): two agents on this one host must not both hand out a port
    whose engine has not bound it yet."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    low, high = DEFAULT_PORT_RANGE
    block = (worker * 7 + next(_agents_started)) % ((high - low + 1) // 50)
    return low + 50 * block, low + 50 * block + 49


@pytest.fixture(scope="session", autouse=True)
def this_run(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestRun]:
    """The run's record for the leftover check: its temporary root and the engine containers
    started through the docker runtime (the runtime finds its containers by worker label only,
    and other runs may share the daemon)."""
    run = pytestconfig.stash[TEST_RUN]
    run.temp_root = tmp_path_factory.getbasetemp()
    start = DockerRuntime.start

    def recorded_start(self: DockerRuntime, spec: LaunchSpec) -> None:
        run.containers.add(container_name(spec.replica_id))
        start(self, spec)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DockerRuntime, "start", recorded_start)
        yield run


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run if it left anything running (after every fixture's teardown)."""
    config = session.config
    run = config.stash.get(TEST_RUN, None)
    if config.option.collectonly or run is None:
        return
    if not config.pluginmanager.hasplugin("dsession"):  # not the pytest-xdist controller
        for leftover in find_leftovers(run):
            leftover.clean_up()
            run.leftovers_found.append(leftover.description)
        worker_output = getattr(config, "workeroutput", None)
        if worker_output is not None:  # a pytest-xdist worker: the controller reports them
            worker_output["leftovers"] = run.leftovers_found
    if run.leftovers_found:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist: a worker's leftovers fail the whole run."""
    run = node.config.stash.get(TEST_RUN, None)
    found = getattr(node, "workeroutput", {}).get("leftovers", [])
    if run is not None:
        run.leftovers_found.extend(f"{description} [{node.gateway.id}]" for description in found)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    run = terminalreporter.config.stash.get(TEST_RUN, None)
    if run is None or not run.leftovers_found:
        return
    terminalreporter.section("leftovers", red=True)
    terminalreporter.write_line(
        f"FAILED: {len(run.leftovers_found)} thing(s) this run started were still running at "
        "its end (stopped now); stop each in the fixture that starts it:"
    )
    for description in run.leftovers_found:
        terminalreporter.write_line(f"  {description}")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture
def database() -> Iterator[str]:
    """A new, empty database of the tests' server for one test, dropped after it."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(scope="session")
def manager(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningManager]:
    with own_manager(tmp_path_factory.mktemp("manager-data"), database_url) as running:
        yield running


@pytest.fixture(scope="session")
def admin(manager: RunningManager) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token)) as client:
        yield client


@pytest.fixture
def project(admin: httpx.Client) -> TestProject:
    created = create_project(admin)
    return TestProject(
        id=created["id"], slug=created["slug"], sdk_token=create_sdk_token(admin, created["slug"])
    )


@pytest.fixture
def api(manager: RunningManager, project: TestProject) -> Iterator[httpx.Client]:
    """A raw HTTP client holding the project's full-scope SDK token."""
    with httpx.Client(base_url=manager.url, headers=bearer(project.sdk_token)) as client:
        yield client


@pytest.fixture
def mgmt(manager: RunningManager, project: TestProject) -> Iterator[ManagementClient]:
    with ManagementClient(
        base_url=manager.url, sdk_token=project.sdk_token, project=project.slug
    ) as client:
        yield client


@pytest.fixture
def start_bare_agent(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AgentFactory]:
    """Registers a worker private to the test's project and runs an agent for it, with no
    engine: for tests of workers, inventory and placement that never serve (the fast lane). An
    engine it is asked to start fails to launch, unless the test names one in `binaries`.

    When the test ends, each agent stops for good, and takes its engines with it."""
    running: list[RunningAgent] = []

    def start(
        *,
        runtime: str = "process",
        token: str | None = None,
        state_dir: Path | None = None,
        **extra: Any,
    ) -> RunningAgent:
        if token is None:
            created = admin.post(
                "/api/admin/workers",
                json={"project": project.slug, "name": f"cpu-{secrets.token_hex(2)}"},
            )
            assert created.status_code == 201, created.text
            token = created.json()["token"]
        state_dir = state_dir or tmp_path_factory.mktemp("agent")
        options: dict[str, Any] = {
            "model_dir": state_dir / "models",
            "port_range": next_engine_ports(),
            **extra,
        }
        config = AgentConfig(
            manager_url=manager.url,
            token=token,
            runtime=runtime,
            state_dir=state_dir,
            listen_host="127.0.0.1",
            listen_port=(port := free_port()),
            advertise_url=f"http://127.0.0.1:{port}",
            restart_backoff_initial_s=0.5,
            **options,
        )
        agent = RunningAgent(config)
        running.append(agent)
        return agent

    yield start
    # Running agents first, so that none restarts an engine another's clean-up stops.
    for agent in sorted(running, key=lambda agent: not agent.thread.is_alive()):
        agent.stop_for_good()


@pytest.fixture
def start_agent(
    start_bare_agent: AgentFactory, llama_server: str, gguf_model: Path
) -> AgentFactory:
    """Like `start_bare_agent`, with the real llama.cpp: `llama-server` and the GGUF's folder as
    the model dir."""
    return functools.partial(
        start_bare_agent, model_dir=gguf_model.parent, binaries={"llama-server": llama_server}
    )


@pytest.fixture(scope="session")
def fake_llama_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An executable `llama-server` stand-in (tests/fake_engine.py): answers /health in a blink
    and loads no model, for agents whose engines only need to start, be ready and stop."""
    path = tmp_path_factory.mktemp("fake-engine") / "llama-server"
    program = Path(__file__).with_name("fake_engine.py")
    exec_line = f'exec {shlex.quote(sys.executable)} {shlex.quote(str(program))} "$@"'
    path.write_text(f"#!/bin/sh\n{exec_line}\n")
    path.chmod(0o755)
    return str(path)


# The real engine parts (see tests/engine_setup.py for where each comes from).


@pytest.fixture(scope="session")
def llama_server() -> str:
    return engine_setup.llama_server_path()


@pytest.fixture(scope="session")
def gguf_model() -> Path:
    return engine_setup.gguf_model_path()


@pytest.fixture(scope="session")
def docker_host(this_run: TestRun) -> str:
    # CI must run Docker for real: no daemon fails these tests unless skipped on purpose.
    if os.environ.get("INFERENCEKEY_SKIP_DOCKER") == "1":
        pytest.skip("INFERENCEKEY_SKIP_DOCKER=1")
    host = engine_setup.ensure_dockerd()
    if host is None:
        pytest.fail(engine_setup.dockerd_failure())
    this_run.docker_hosts.add(host)
    return host


@pytest.fixture(scope="session")
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_host)
    yield client
    client.close()


@pytest.fixture(scope="session")
def llamacpp_image(docker_host: str, llama_server: str) -> str:
    return engine_setup.ensure_llamacpp_image(docker_host, llama_server)
