"""The agent process is not dumpable, so a custom backend running as the same OS user cannot
read its environment or memory (worker_agent/hardening.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_agent_process_is_made_undumpable_and_its_children_are_not() -> None:
    probe = (
        "import subprocess, sys\n"
        "from worker_agent.hardening import forbid_dumping\n"
        "assert forbid_dumping()\n"
        "print(open('/proc/self/status').read().count('\\n') > 0)\n"
        "child = 'import ctypes; print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))'\n"
        "print(subprocess.run([sys.executable, '-c', child], capture_output=True, text=True)"
        ".stdout.strip())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # The agent still reads its own /proc files; an exec'd child (uv, a backend) is dumpable.
    assert done.stdout.split() == ["True", "1"]
