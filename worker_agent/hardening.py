"""The agent process keeps its credential to itself.

Custom-backend code runs as the agent's OS user, and a process of the same user may read another's
``/proc/<pid>/environ`` and ``/proc/<pid>/mem`` (where ``INFERENCEKEY_AGENT_TOKEN`` lives) or
attach a debugger to it. A process that is not dumpable is exempt: the kernel makes those files
root's and refuses ptrace to the same user. Children start dumpable again at ``exec``, so engines
and uv are unaffected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("inferencekey.agent")

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def forbid_dumping() -> bool:
    """Make this process not dumpable (Linux); True when it is so now. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    except OSError as error:
        log.warning(
            "could not make the agent process undumpable (%s): processes of its user, custom "
            "backends included, may read its environment",
            error,
        )
        return False
    return bool(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
