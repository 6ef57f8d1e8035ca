"""What the host has: GPUs (from NVML, a named simulation, or none), CPUs, memory, model files.

Every source answers `snapshot() -> Inventory`; the agent sends `Inventory.to_wire()` in each
heartbeat (the `inventory` object in docs/INTERFACES.md).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

InventorySourceName = Literal["nvml", "simulated", "none"]

MODEL_FILES_LIMIT = 500

# Memory as NVML reports it for cards people simulate most; others default to 24 GiB.
KNOWN_GPU_MEMORY_MB = {
    "NVIDIA A100-SXM4-80GB": 81920,
    "NVIDIA A100-SXM4-40GB": 40960,
    "NVIDIA A100 80GB PCIe": 81920,
    "NVIDIA H100 80GB HBM3": 81559,
    "NVIDIA H200": 143771,
    "NVIDIA L4": 23034,
    "NVIDIA L40S": 46068,
    "NVIDIA A10G": 23028,
    "Tesla T4": 15360,
    "NVIDIA GeForce RTX 4090": 24564,
    "NVIDIA GeForce RTX 3090": 24576,
}
DEFAULT_GPU_MEMORY_MB = 24576
SIMULATED_CUDA_VERSION = "12.4"

# Namespace for simulated GPU UUIDs; fixed so the same host seed gives the same UUIDs forever.
_SIMULATED_UUID_NAMESPACE = uuid.UUID("6f1c1d2e-52a4-4a43-9b0e-7e1b3c5a9d10")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: int


@dataclass(frozen=True)
class Inventory:
    source: InventorySourceName
    hostname: str
    driver_version: str | None
    cuda_version: str | None
    cpu_count: int
    memory_mb: int
    gpus: tuple[GpuInfo, ...] = ()
    model_files: dict[str, int] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        wire["gpus"] = [asdict(gpu) for gpu in self.gpus]
        return wire


class InventorySource(Protocol):
    def snapshot(self) -> Inventory: ...


def _host_inventory(
    source: InventorySourceName,
    gpus: tuple[GpuInfo, ...] = (),
    driver_version: str | None = None,
    cuda_version: str | None = None,
) -> Inventory:
    return Inventory(
        source=source,
        hostname=socket.gethostname(),
        driver_version=driver_version,
        cuda_version=cuda_version,
        cpu_count=os.cpu_count() or 1,
        memory_mb=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024),
        gpus=gpus,
    )


class NoGpuInventory:
    """A host without usable GPUs: CPU engines (llama.cpp) can still run here."""

    def snapshot(self) -> Inventory:
        return _host_inventory("none")


class NvmlInventory:
    """The real GPUs, read through NVML. The constructor raises when NVML cannot load or init."""

    def __init__(self) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        self._cuda_version = f"{cuda // 1000}.{(cuda % 1000) // 10}"

    def snapshot(self) -> Inventory:
        nvml = self._nvml
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_total_mb=int(memory.total) // (1024 * 1024),
                    memory_used_mb=int(memory.used) // (1024 * 1024),
                    utilization_pct=int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                )
            )
        return _host_inventory("nvml", tuple(gpus), self._driver_version, self._cuda_version)


class SimulatedInventory:
    """GPUs named by a spec string, for hosts without NVML (tests, demos), reported as simulated.

    >>> SimulatedInventory("1xNVIDIA L4,2xNVIDIA A100-SXM4-80GB:40960", seed="box-1")

    Each part is `[COUNT x]NAME[:MEMORY_MB]`; memory defaults from KNOWN_GPU_MEMORY_MB. UUIDs are
    derived from `seed` and the GPU index, so they survive agent restarts.
    """

    _PART = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\S.*?)(?::\s*(\d+))?\s*$")

    def __init__(self, spec: str, seed: str, cuda_version: str = SIMULATED_CUDA_VERSION) -> None:
        self.cuda_version = cuda_version
        self.gpus = tuple(self._parse(spec, seed))

    @classmethod
    def _parse(cls, spec: str, seed: str) -> list[GpuInfo]:
        gpus: list[GpuInfo] = []
        for part in spec.split(","):
            match = cls._PART.match(part)
            if match is None or re.fullmatch(r"\d+\s*x|0+", match[1] or match[2]):
                raise ValueError(
                    f"bad simulated GPU spec {part!r}: expected COUNTxNAME[:MEMORY_MB], "
                    "e.g. 2xNVIDIA A100-SXM4-80GB"
                )
            count, name, memory = match.groups()
            memory_mb = int(memory) if memory else KNOWN_GPU_MEMORY_MB.get(name, 0)
            for _ in range(int(count or 1)):
                index = len(gpus)
                gpu_uuid = uuid.uuid5(_SIMULATED_UUID_NAMESPACE, f"{seed}/{index}")
                gpus.append(
                    GpuInfo(
                        index=index,
                        uuid=f"GPU-{gpu_uuid}",
                        name=name,
                        memory_total_mb=memory_mb or DEFAULT_GPU_MEMORY_MB,
                        memory_used_mb=0,
                        utilization_pct=0,
                    )
                )
        if not gpus:
            raise ValueError("simulated GPU spec names no GPU")
        return gpus

    def snapshot(self) -> Inventory:
        return _host_inventory("simulated", self.gpus, cuda_version=self.cuda_version)


def detect_inventory(
    simulate: str | None,
    log: logging.Logger,
    seed: str | None = None,
    cuda_version: str | None = None,
) -> InventorySource:
    """The simulation when one is asked for, else NVML, else a source that reports no GPUs."""
    if simulate:
        return SimulatedInventory(
            simulate,
            seed=seed or socket.gethostname(),
            cuda_version=cuda_version or SIMULATED_CUDA_VERSION,
        )
    try:
        return NvmlInventory()
    except Exception as error:  # ImportError or any NVMLError: both mean "no NVIDIA GPUs here"
        log.warning("NVML unavailable (%s): reporting no GPUs", error)
        return NoGpuInventory()


def model_files(model_dir: str | Path | None) -> dict[str, int]:
    """Files under the agent's model dir with their sizes, for placement and the UI (capped)."""
    if model_dir is None:
        return {}
    found: dict[str, int] = {}
    for root, dirs, names in os.walk(model_dir):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                found[path] = os.stat(path).st_size
            except OSError:  # a dangling link or a file removed while walking
                continue
            if len(found) >= MODEL_FILES_LIMIT:
                return found
    return found


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
