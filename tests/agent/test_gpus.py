"""Inventory: real GPUs through NVML, a named simulation for hosts without them, or none."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from worker_agent.gpus import (
    NoGpuInventory,
    SimulatedInventory,
    detect_inventory,
    model_files,
)


def test_simulated_spec_with_count_and_known_cards() -> None:
    inventory = SimulatedInventory("2xNVIDIA A100-SXM4-80GB", seed="box-1").snapshot()
    assert inventory.source == "simulated"
    assert [(g.index, g.name, g.memory_total_mb) for g in inventory.gpus] == [
        (0, "NVIDIA A100-SXM4-80GB", 81920),
        (1, "NVIDIA A100-SXM4-80GB", 81920),
    ]
    assert inventory.cuda_version == "12.4"
    assert inventory.cpu_count >= 1 and inventory.memory_mb > 0


def test_simulated_spec_mixes_cards_and_overrides_memory() -> None:
    gpus = SimulatedInventory(
        "1xNVIDIA L4, 1xNVIDIA H100 80GB HBM3,2xMystery GPU:12000,Other GPU", seed="s"
    ).gpus
    assert [(g.index, g.name, g.memory_total_mb) for g in gpus] == [
        (0, "NVIDIA L4", 23034),
        (1, "NVIDIA H100 80GB HBM3", 81559),
        (2, "Mystery GPU", 12000),
        (3, "Mystery GPU", 12000),
        (4, "Other GPU", 24576),
    ]


@pytest.mark.parametrize("spec", ["", " ", "2x", "0xNVIDIA L4", "1xNVIDIA L4,,1xNVIDIA L4"])
def test_bad_simulated_spec_says_what_is_expected(spec: str) -> None:
    with pytest.raises(ValueError, match="simulated GPU spec"):
        SimulatedInventory(spec, seed="s")


def test_simulated_uuids_are_stable_per_host_seed() -> None:
    first = [g.uuid for g in SimulatedInventory("2xNVIDIA L4", seed="box-1").gpus]
    again = [g.uuid for g in SimulatedInventory("2xNVIDIA L4", seed="box-1").gpus]
    other = [g.uuid for g in SimulatedInventory("2xNVIDIA L4", seed="box-2").gpus]
    assert first == again
    assert len(set(first)) == 2 and not set(first) & set(other)
    assert all(uuid.startswith("GPU-") for uuid in first)


def test_inventory_wire_shape() -> None:
    wire = SimulatedInventory("1xNVIDIA L4", seed="s").snapshot().to_wire()
    assert set(wire) == {
        "source", "hostname", "driver_version", "cuda_version", "cpu_count", "memory_mb",
        "gpus", "model_files",
    }  # fmt: skip
    assert set(wire["gpus"][0]) == {
        "index", "uuid", "name", "memory_total_mb", "memory_used_mb", "utilization_pct",
    }  # fmt: skip


def test_detect_prefers_the_simulation() -> None:
    source = detect_inventory("1xNVIDIA L4", logging.getLogger("test"), seed="s")
    assert source.snapshot().source == "simulated"


def test_simulated_gpus_report_the_cuda_version_they_are_given() -> None:
    source = detect_inventory(
        "1xNVIDIA L4", logging.getLogger("test"), seed="s", cuda_version="13.0"
    )
    assert source.snapshot().cuda_version == "13.0"


def test_without_nvml_the_host_reports_no_gpus_and_logs_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this host has NVML; the test is for hosts without it")
    except ImportError:
        pass
    except Exception:  # NVMLError: no driver here, which is what the test needs
        pass
    with caplog.at_level(logging.INFO, logger="agent-test"):
        source = detect_inventory(None, logging.getLogger("agent-test"))
    inventory = source.snapshot()
    assert isinstance(source, NoGpuInventory)
    assert (inventory.source, inventory.gpus, inventory.cuda_version) == ("none", (), None)
    assert len(caplog.records) == 1
    assert "NVML unavailable" in caplog.records[0].getMessage()


def test_model_files_lists_files_with_sizes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.gguf").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "b.gguf").write_bytes(b"y" * 3)
    os.symlink(tmp_path / "missing", tmp_path / "dangling")
    assert model_files(tmp_path) == {
        str(tmp_path / "a.gguf"): 10,
        str(tmp_path / "sub" / "b.gguf"): 3,
    }
    assert model_files(tmp_path / "absent") == {}
    assert model_files(None) == {}


def test_model_files_are_capped(tmp_path: Path) -> None:
    for index in range(505):
        (tmp_path / f"f{index:03}").write_bytes(b"")
    assert len(model_files(tmp_path)) == 500
