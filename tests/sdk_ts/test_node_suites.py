"""The TypeScript SDK (sdk-ts/): built with its pinned compiler, its README example type-checked,
its unit suite on the shared wire fixtures, and its integration suite against a real Manager,
worker agent and llama.cpp engine started here.

Each suite is `node --test`; a failure shows node's output. `INFERENCEKEY_SKIP_NODE=1` skips
them where no Node.js >= 18 is installed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    AgentFactory,
    RunningManager,
    TestProject,
    create_live_key,
    create_project,
    create_sdk_token,
)

REPO = Path(__file__).resolve().parents[2]
SDK_TS = REPO / "sdk-ts"
EXAMPLE = SDK_TS / "examples" / "quickstart.ts"
# The README shows the example right after this marker, in a ```ts block.
README_MARKER = "<!-- sdk-ts/examples/quickstart.ts"
# Written into node_modules after `npm ci`: the lock file it was installed from.
LOCK_STAMP = SDK_TS / "node_modules" / ".inferencekey-lock-sha256"


def run(command: list[str], *, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run ``command`` in sdk-ts/; fail the test with its output if it fails."""
    try:
        done = subprocess.run(
            command,
            cwd=SDK_TS,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()
        pytest.fail(f"{' '.join(command)} took over {timeout:g}s:\n{output}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}",
            pytrace=False,
        )
    return done.stdout


def node_counts(output: str) -> tuple[int, int]:
    """How many tests ``node --test`` passed and failed, from its summary."""
    counts = dict(re.findall(r"^# (pass|fail) (\d+)$", output, re.MULTILINE))
    return int(counts.get("pass", 0)), int(counts.get("fail", 0))


def node_env(**extra: str) -> dict[str, str]:
    """The environment node runs in: ours without the SDK's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERENCEKEY_", "IK_TEST_"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def built_sdk() -> Iterator[Path]:
    """sdk-ts/ with its locked dependencies installed and dist/ freshly built (ESM, CJS, .d.ts)."""
    if os.environ.get("INFERENCEKEY_SKIP_NODE") == "1":
        pytest.skip("INFERENCEKEY_SKIP_NODE=1")
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js >= 18 and npm are needed (or set INFERENCEKEY_SKIP_NODE=1)")
    lock_hash = hashlib.sha256((SDK_TS / "package-lock.json").read_bytes()).hexdigest()
    # Two pytest workers may get here at once; one builds while the other waits.
    with open(SDK_TS / "package.json") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            if not LOCK_STAMP.is_file() or LOCK_STAMP.read_text() != lock_hash:
                run(["npm", "ci", "--no-audit", "--no-fund"], timeout=300)
                LOCK_STAMP.write_text(lock_hash)
            run(["npm", "run", "build"], timeout=300)
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)
    yield SDK_TS


def test_the_pinned_compiler_builds_esm_cjs_and_declarations(built_sdk: Path) -> None:
    for flavour in ("esm", "cjs"):
        assert (built_sdk / "dist" / flavour / "index.js").is_file()
        assert (built_sdk / "dist" / flavour / "index.d.ts").is_file()
    pinned = json.loads((built_sdk / "package.json").read_text())["devDependencies"]["typescript"]
    assert f"Version {pinned}" in run(["npx", "--no-install", "tsc", "--version"], timeout=60)


def test_the_readme_shows_the_example_that_is_type_checked(built_sdk: Path) -> None:
    readme = (REPO / "README.md").read_text()
    after_marker = readme[readme.index(README_MARKER) :]
    block = re.search(r"```ts\n(.*?)```", after_marker, re.DOTALL)
    assert block is not None, "no ```ts block after the marker in README.md"
    assert block.group(1) == EXAMPLE.read_text()
    run(["npm", "run", "typecheck"], timeout=300)


def test_unit_suite_on_the_shared_wire_fixtures(built_sdk: Path) -> None:
    command = ["node", "--test", "--test-reporter=tap", "test/unit/"]
    output = run(command, timeout=300, env=node_env())
    passed, failed = node_counts(output)
    assert (passed > 100, failed) == (True, 0), output


@pytest.fixture
def platform_env(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    start_agent: AgentFactory,
    gguf_model: Path,
) -> dict[str, str]:
    """A real Manager and agent serving the project, and the credentials of the 401/403 matrix."""
    start_agent()
    other = create_project(admin)["slug"]
    return node_env(
        INFERENCEKEY_BASE_URL=manager.url,
        INFERENCEKEY_PROJECT=project.slug,
        INFERENCEKEY_SDK_TOKEN=project.sdk_token,
        INFERENCEKEY_API_KEY=create_live_key(admin, project.slug),
        IK_TEST_GGUF=str(gguf_model),
        IK_TEST_OTHER_SDK_TOKEN=create_sdk_token(admin, other),
        IK_TEST_OTHER_API_KEY=create_live_key(admin, other),
        IK_TEST_READ_ONLY_SDK_TOKEN=create_sdk_token(admin, project.slug, read_only=True),
        IK_TEST_NARROW_API_KEY=create_live_key(admin, project.slug, workloads=["emb"]),
    )


def test_integration_suite_against_manager_agent_and_llamacpp(
    built_sdk: Path, platform_env: dict[str, str]
) -> None:
    command = ["node", "--test", "--test-reporter=tap", "--test-concurrency=1", "test/integration/"]
    output = run(command, timeout=540, env=platform_env)
    passed, failed = node_counts(output)
    assert (passed > 15, failed) == (True, 0), output
