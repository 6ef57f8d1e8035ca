"""Which heartbeat reports change only figures (manager/services/workers.py ``figures_only``):
those take the quick path, everything ``record_heartbeat`` acts on goes the long way."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ik_contracts.protocol import Heartbeat
from manager.services.workers import figures_only

LASTING = {
    "source": "simulated",
    "hostname": "gpu-host-0",
    "driver_version": "550.54.15",
    "cuda_version": "12.4",
    "cpu_count": None,
    "memory_mb": None,
    "model_files": {"gemma.gguf": 1700000000},
}
GPUS = [
    # uuid, index, name, memory_total_mb, memory_used_mb, utilization_pct, simulated, present
    ["GPU-0", 0, "NVIDIA L4", 23034, 1000, 10, True, True],
    ["GPU-1", 1, "NVIDIA L4", 23034, 0, 0, True, True],
    ["GPU-gone", 2, "NVIDIA L4", 23034, 0, 0, True, False],
]
REPLICAS = [
    # id, state, reason, log_tail, port, restarts, engine_running, engine_waiting,
    # kv_cache_usage, desired_state, ready_at is set
    ["rep_a", "ready", None, "loaded", 41000, 0, 2, 0, 0.25, "run", True],
    ["rep_b", "starting", "loading", None, 41001, 1, None, None, None, "run", False],
]


def stored(**changes: Any) -> dict[str, Any]:
    """What RENEW_LEASE_REPORTING returns of the worker's rows."""
    row = {
        "inventory": json.dumps(LASTING),
        "simulated": True,
        "gpus": json.dumps(GPUS),
        "replicas": json.dumps(REPLICAS),
    }
    return {**row, **changes}


def report(
    gpus: list[dict[str, Any]] | None = None,
    replicas: list[dict[str, Any]] | None = None,
    **inventory: Any,
) -> dict[str, Any]:
    """A report as the route hands it on (validated, then dumped)."""
    if gpus is None:
        gpus = [gpu() for gpu in (gpu_0, gpu_1)]
    if replicas is None:
        replicas = [ready_a(), starting_b()]
    body = {
        "address": "http://10.0.0.1:8400",
        "inventory": {**LASTING, **inventory, "gpus": gpus},
        "replicas": replicas,
    }
    return Heartbeat.model_validate(body).model_dump()


def gpu_0(**changes: Any) -> dict[str, Any]:
    return {
        "index": 0,
        "uuid": "GPU-0",
        "name": "NVIDIA L4",
        "memory_total_mb": 23034,
        "memory_used_mb": 1000,
        "utilization_pct": 10,
        **changes,
    }


def gpu_1(**changes: Any) -> dict[str, Any]:
    return {**gpu_0(), "index": 1, "uuid": "GPU-1", "memory_used_mb": 0, "utilization_pct": 0,
            **changes}  # fmt: skip


def ready_a(**changes: Any) -> dict[str, Any]:
    load = {"running": 2, "waiting": 0, "kv_cache_usage": 0.25}
    return {"id": "rep_a", "state": "ready", "log_tail": "loaded", "port": 41000,
            "engine_load": load, **changes}  # fmt: skip


def starting_b(**changes: Any) -> dict[str, Any]:
    return {"id": "rep_b", "state": "starting", "reason": "loading", "port": 41001, "restarts": 1,
            **changes}  # fmt: skip


def test_a_report_of_what_is_stored_changes_nothing() -> None:
    figures = figures_only(stored(), report())
    assert figures is not None
    assert (figures.gpus, figures.replicas) == ([], [])


def test_inventory_only_and_replicas_only_reports_are_compared_by_what_they_carry() -> None:
    inventory_only = {**report(), "replicas": None}
    replicas_only = {**report(), "inventory": None}
    for body in (inventory_only, replicas_only):
        figures = figures_only(stored(), body)
        assert figures is not None and (figures.gpus, figures.replicas) == ([], [])
    # What is not carried is not compared: a replica's state that differs, unsent.
    changed = stored(replicas=json.dumps([[*REPLICAS[0][:1], "failed", *REPLICAS[0][2:]]]))
    assert figures_only(changed, inventory_only) is not None


def test_figures_are_what_a_quick_report_writes() -> None:
    busier = report(
        gpus=[gpu_0(memory_used_mb=9000, utilization_pct=87), gpu_1()],
        replicas=[
            ready_a(log_tail="served", engine_load={"running": 5, "waiting": 3}),
            starting_b(restarts=2),
        ],
    )
    figures = figures_only(stored(), busier)
    assert figures is not None
    assert figures.gpus == [("GPU-0", 9000, 87)]
    a, b = figures.replicas
    assert a == {
        "id": "rep_a",
        "state": "ready",
        "reason": None,
        "log_tail": "served",
        "port": 41000,
        "restarts": 0,
        "engine_running": 5,
        "engine_waiting": 3,
        "kv_cache_usage": None,
    }
    assert (b["id"], b["restarts"], b["reason"]) == ("rep_b", 2, "loading")


def test_a_replica_not_of_this_worker_or_in_no_storable_state_is_ignored_as_the_long_way_does() -> (
    None
):
    body = report(replicas=[ready_a(), starting_b(), {"id": "rep_elsewhere", "state": "ready"}])
    figures = figures_only(stored(), body)
    assert figures is not None and figures.replicas == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(report(cuda_version="12.8"), id="inventory changed"),
        pytest.param(report(source="nvml"), id="no longer simulated"),
        pytest.param(report(model_files={"other.gguf": 1}), id="model files changed"),
        pytest.param(report(gpus=[gpu_0()]), id="a GPU went"),
        pytest.param(report(gpus=[gpu_0(), gpu_1(), gpu_0(uuid="GPU-new")]), id="a GPU came"),
        pytest.param(report(gpus=[gpu_0(), gpu_1(), gpu_0(uuid="GPU-gone")]), id="a GPU back"),
        pytest.param(report(gpus=[gpu_0(memory_total_mb=11000), gpu_1()]), id="GPU memory"),
        pytest.param(report(gpus=[gpu_0(name="NVIDIA H100"), gpu_1()]), id="GPU name"),
        pytest.param(report(gpus=[gpu_0(index=5), gpu_1()]), id="GPU index"),
        pytest.param(report(gpus=[gpu_0(), gpu_1(), gpu_1()]), id="a GPU twice"),
        pytest.param(report(replicas=[ready_a(state="failed"), starting_b()]), id="state"),
        pytest.param(report(replicas=[ready_a(), starting_b(reason="pulling")]), id="reason"),
        pytest.param(report(replicas=[ready_a(), starting_b(state="ready")]), id="ready at last"),
        pytest.param(report(replicas=[ready_a(), ready_a(), starting_b()]), id="a replica twice"),
    ],
)
def test_anything_the_long_way_acts_on_goes_the_long_way(body: dict[str, Any]) -> None:
    assert figures_only(stored(), body) is None


def test_a_replica_first_reported_ready_goes_the_long_way_whose_ready_at_it_is() -> None:
    not_yet = stored(replicas=json.dumps([[*REPLICAS[0][:10], False], REPLICAS[1]]))
    assert figures_only(not_yet, report()) is None


def test_a_stopped_replica_is_finished_the_long_way() -> None:
    stopping = [[*REPLICAS[0][:9], "stop", True], REPLICAS[1]]
    # Still running it: nothing finished yet, figures only.
    assert figures_only(stored(replicas=json.dumps(stopping)), report()) is not None
    # No longer reported, or reported stopped: its row goes, the long way.
    gone = report(replicas=[starting_b()])
    assert figures_only(stored(replicas=json.dumps(stopping)), gone) is None
    stopped_row = [[*REPLICAS[0][:1], "stopped", *REPLICAS[0][2:9], "stop", True], REPLICAS[1]]
    still = report(replicas=[ready_a(state="stopped"), starting_b()])
    assert figures_only(stored(replicas=json.dumps(stopped_row)), still) is None


def test_a_worker_with_no_rows_yet_goes_the_long_way() -> None:
    fresh = stored(inventory=None, gpus=None, replicas=None)
    assert figures_only(fresh, report()) is None
    assert figures_only(fresh, {**report(gpus=[]), "replicas": []}) is None  # inventory unknown
    figures = figures_only(fresh, {**report(), "inventory": None, "replicas": []})
    assert figures is not None  # no replica stored, none reported: nothing to write
