"""Which accelerator a backend should load its model on, decided without requiring torch.

>>> pick_device()  # on a machine without torch, or without a GPU  # doctest: +SKIP
'cpu'
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

DEVICES = ("cuda", "mps", "cpu")


def pick_device(preferred: str = "auto") -> str:
    """``"cuda"``, ``"mps"`` or ``"cpu"``: the best available with ``"auto"``, else ``preferred``.

    ``preferred`` is ``"auto"``, ``"cuda"`` (or ``"cuda:N"``), ``"mps"`` or ``"cpu"``. A choice
    this machine cannot honour (no torch, no such device, an unknown name) falls back to
    ``"cpu"`` with a warning on stderr. torch is imported only if installed.
    """
    choice = preferred.strip().lower()
    torch = _torch()
    if choice == "auto":
        if _cuda_devices(torch) > 0:
            return "cuda"
        if _mps_available(torch):
            return "mps"
        return "cpu"
    if choice == "cpu":
        return "cpu"
    if choice == "mps" and _mps_available(torch):
        return "mps"
    if choice == "cuda" or choice.startswith("cuda:"):
        index = choice.partition(":")[2] or "0"
        if index.isdigit() and int(index) < _cuda_devices(torch):
            return choice
    reason = "torch is not installed" if torch is None else "it is not available on this machine"
    if choice.partition(":")[0] not in DEVICES:
        reason = f"it is not one of auto, {', '.join(DEVICES)}"
    print(f"warning: device {preferred!r} cannot be used ({reason}); using 'cpu'", file=sys.stderr)
    return "cpu"


def _torch() -> Any:
    try:
        return importlib.import_module("torch")
    except Exception:  # a missing or broken torch: both mean the CPU
        return None


def _cuda_devices(torch: Any) -> int:
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # torch is None, or its CUDA runtime failed to initialise
        return 0


def _mps_available(torch: Any) -> bool:
    try:
        return bool(torch.backends.mps.is_available())
    except Exception:  # torch is None, or a build without MPS
        return False
