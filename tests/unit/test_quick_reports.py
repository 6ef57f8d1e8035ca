"""Which heartbeat reports one statement can write (manager/services/workers.py
``quick_changes``): figures and replicas' transitions take the quick path; a changed inventory
or GPU, a finished stop, anything said twice go ``record_heartbeat``'s long way."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ik_contracts.protocol import Heartbeat
from manager.services.workers import quick_changes

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
    # id, workload_id, worker_id, state, reason, log_tail, port, restarts, engine_running,
    # engine_waiting, kv_cache_usage, desired_state, ready_at is set
    ["rep_a", "wl_a", "wrk_1", "ready", None, "loaded", 41000, 0, 2, 0, 0.25, "run", True],
    ["rep_b", "wl_b", "wrk_1", "starting", "loading", None, 41001, 1, None, None, None, "run",
     False],
]  # fmt: skip


def row(replica: list[Any], **changes: Any) -> list[Any]:
    """A stored replica row with some columns changed."""
    columns = ["id", "workload_id", "worker_id", "state", "reason", "log_tail", "port",
               "restarts", "engine_running", "engine_waiting", "kv_cache_usage",
               "desired_state", "ready"]  # fmt: skip
    return [changes.get(name, value) for name, value in zip(columns, replica, strict=True)]


def stored(**changes: Any) -> dict[str, Any]:
    """What RENEW_LEASE_REPORTING returns of the worker's rows."""
    row = {
        "same_inventory": True,  # compared in the statement, as JSONB
        "simulated": True,
        "name": "gpu-host-0",
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
    figures = quick_changes(stored(), report())
    assert figures is not None
    assert (figures.gpus, figures.replicas) == ([], [])


def test_inventory_only_and_replicas_only_reports_are_compared_by_what_they_carry() -> None:
    inventory_only = {**report(), "replicas": None}
    replicas_only = {**report(), "inventory": None}
    for body in (inventory_only, replicas_only):
        figures = quick_changes(stored(), body)
        assert figures is not None and (figures.gpus, figures.replicas) == ([], [])
    # What is not carried is not compared: a replica's state that differs, unsent.
    changed = stored(replicas=json.dumps([row(REPLICAS[0], state="failed")]))
    assert quick_changes(changed, inventory_only) is not None


def test_figures_are_what_a_quick_report_writes() -> None:
    busier = report(
        gpus=[gpu_0(memory_used_mb=9000, utilization_pct=87), gpu_1()],
        replicas=[
            ready_a(log_tail="served", engine_load={"running": 5, "waiting": 3}),
            starting_b(restarts=2),
        ],
    )
    figures = quick_changes(stored(), busier)
    assert figures is not None
    assert figures.gpus == [("GPU-0", 9000, 87)]
    a, b = figures.replicas
    assert a == {
        "id": "rep_a",
        "was_state": "ready",
        "was_reason": None,
        "news": True,
        "event": None,
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
    figures = quick_changes(stored(), body)
    assert figures is not None and figures.replicas == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(report(source="nvml"), id="no longer simulated"),
        pytest.param(report(gpus=[gpu_0()]), id="a GPU went"),
        pytest.param(report(gpus=[gpu_0(), gpu_1(), gpu_0(uuid="GPU-new")]), id="a GPU came"),
        pytest.param(report(gpus=[gpu_0(), gpu_1(), gpu_0(uuid="GPU-gone")]), id="a GPU back"),
        pytest.param(report(gpus=[gpu_0(memory_total_mb=11000), gpu_1()]), id="GPU memory"),
        pytest.param(report(gpus=[gpu_0(name="NVIDIA H100"), gpu_1()]), id="GPU name"),
        pytest.param(report(gpus=[gpu_0(index=5), gpu_1()]), id="GPU index"),
        pytest.param(report(gpus=[gpu_0(), gpu_1(), gpu_1()]), id="a GPU twice"),
        pytest.param(report(replicas=[ready_a(), ready_a(), starting_b()]), id="a replica twice"),
    ],
)
def test_anything_else_the_long_way_acts_on_goes_the_long_way(body: dict[str, Any]) -> None:
    assert quick_changes(stored(), body) is None


def test_a_transition_is_written_quickly_with_its_event() -> None:
    failed = ready_a(state="failed", reason="engine exited", log_tail="a\nb\nCUDA error")
    changes = quick_changes(stored(), report(replicas=[failed, starting_b(reason="pulling")]))
    assert changes is not None and changes.transitions == 2
    a, b = changes.replicas
    assert (a["was_state"], a["state"], a["reason"]) == ("ready", "failed", "engine exited")
    assert a["event"] == (
        "replica rep_a on gpu-host-0 (wrk_1) failed: engine exited\na\nb\nCUDA error"
    )
    assert (b["was_reason"], b["reason"]) == ("loading", "pulling")
    assert b["event"] == "replica rep_b on gpu-host-0 (wrk_1) is starting: pulling"
    ready = quick_changes(stored(), report(replicas=[ready_a(), starting_b(state="ready")]))
    assert ready is not None
    [b] = ready.replicas
    assert b["event"] == "replica rep_b on gpu-host-0 (wrk_1) is ready on port 41001"


def test_a_replica_first_reported_ready_is_written_for_its_ready_at() -> None:
    not_yet = stored(replicas=json.dumps([row(REPLICAS[0], ready=False), REPLICAS[1]]))
    changes = quick_changes(not_yet, report())
    assert changes is not None
    [a] = changes.replicas
    assert (a["id"], a["state"], a["event"], a["news"]) == ("rep_a", "ready", None, False)


def test_a_stopped_replica_is_finished_the_long_way() -> None:
    stopping = json.dumps([row(REPLICAS[0], desired_state="stop"), REPLICAS[1]])
    # Still running it: nothing finished yet.
    assert quick_changes(stored(replicas=stopping), report()) is not None
    # No longer reported, reported stopped, or stopped already: its row goes, the long way.
    assert quick_changes(stored(replicas=stopping), report(replicas=[starting_b()])) is None
    now_stopped = report(replicas=[ready_a(state="stopped"), starting_b()])
    assert quick_changes(stored(replicas=stopping), now_stopped) is None
    stopped = json.dumps([row(REPLICAS[0], desired_state="stop", state="stopped"), REPLICAS[1]])
    assert quick_changes(stored(replicas=stopped), now_stopped) is None
    # A replica the agent stopped on its own, still wanted: a transition like any other.
    changes = quick_changes(stored(), now_stopped)
    assert changes is not None and changes.replicas[0]["event"] == (
        "replica rep_a on gpu-host-0 (wrk_1) stopped"
    )


def test_a_changed_inventory_goes_the_long_way() -> None:
    assert quick_changes(stored(same_inventory=False), report()) is None
    # Not carried, not compared.
    assert quick_changes(stored(same_inventory=None), {**report(), "inventory": None}) is not None


def test_a_worker_with_no_rows_yet_has_nothing_to_write() -> None:
    fresh = stored(gpus=None, replicas=None)
    assert quick_changes(fresh, report()) is None  # the GPUs it reports are not stored
    changes = quick_changes(fresh, {**report(gpus=[]), "replicas": []})
    assert changes is not None and (changes.gpus, changes.replicas) == ([], [])
