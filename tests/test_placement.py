"""Placement: which worker and GPUs one more replica gets, or a reason the user can act on.

Pure functions over hand-built snapshots of workers, GPUs and claims; no database.
"""

from __future__ import annotations

import random

from ik_contracts.engines import engine_for
from manager.placement import (
    SHARED_HEADROOM,
    SHARED_OVERHEAD_MB,
    UNKNOWN_MODEL_MB,
    Demand,
    GpuSlot,
    Placement,
    Unschedulable,
    WorkerSlot,
    _spreading,
    claim,
    place,
)

PROJECT = "proj_acme"
OTHER_PROJECT = "proj_other"
A100_MB = 81920
GIB = 1024 * 1024 * 1024


def gpus(worker_id: str, count: int, memory_mb: int = A100_MB) -> list[GpuSlot]:
    return [
        GpuSlot(f"gpu_{worker_id}_{i}", f"GPU-{worker_id}-{i}", "NVIDIA A100-SXM4-80GB", memory_mb)
        for i in range(count)
    ]


def worker(
    worker_id: str,
    gpu_count: int = 0,
    *,
    project_id: str | None = PROJECT,
    state: str = "ready",
    state_reason: str | None = None,
    memory_mb: int = A100_MB,
    model_files: dict[str, int] | None = None,
) -> WorkerSlot:
    return WorkerSlot(
        id=worker_id,
        name=f"{worker_id}-name",
        project_id=project_id,
        state=state,
        state_reason=state_reason,
        gpus=gpus(worker_id, gpu_count, memory_mb),
        model_files=dict(model_files or {}),
    )


def demand(
    backend: str,
    command: str | None = None,
    *,
    model_name: str = "m",
    workload_id: str = "wl_1",
    worker_pin: str | None = None,
    gpu_pin: str | None = None,
) -> Demand:
    return Demand(
        workload_id=workload_id,
        project_id=PROJECT,
        backend=backend,
        model_name=model_name,
        command=command,
        worker_pin=worker_pin,
        gpu_pin=gpu_pin,
    )


def placed(decision: Placement | Unschedulable) -> Placement:
    assert isinstance(decision, Placement), decision
    return decision


def unschedulable(decision: Placement | Unschedulable) -> str:
    assert isinstance(decision, Unschedulable), decision
    return decision.reason


def place_and_claim(wanted: Demand, workers: list[WorkerSlot]) -> Placement:
    decision = placed(place(wanted, workers))
    claim(decision, workers, wanted, whole=engine_for(wanted.backend).gpu_claim == "whole")
    return decision


def shared_claim_mb(size_bytes: int) -> int:
    return int(size_bytes / (1024 * 1024) * SHARED_HEADROOM) + SHARED_OVERHEAD_MB


# --- whole-GPU engines (vLLM, SGLang) --------------------------------------------------------


def test_vllm_without_tensor_parallel_takes_one_whole_gpu() -> None:
    decision = placed(place(demand("vllm", "vllm serve m"), [worker("wrk_a", 2)]))
    assert decision.worker_id == "wrk_a"
    assert decision.gpu_ids == ("gpu_wrk_a_0",)
    assert decision.gpu_uuids == ("GPU-wrk_a-0",)
    assert decision.claim_memory_mb == 0


def test_vllm_tensor_parallel_size_takes_that_many_whole_gpus() -> None:
    for command in (
        "vllm serve m --tensor-parallel-size 2",
        "vllm serve m --tensor-parallel-size=2",
        "vllm serve m -tp 2",
    ):
        decision = placed(place(demand("vllm", command), [worker("wrk_a", 4)]))
        assert decision.gpu_ids == ("gpu_wrk_a_0", "gpu_wrk_a_1"), command


def test_sglang_tp_flag_takes_that_many_whole_gpus() -> None:
    command = "python -m sglang.launch_server --model-path m --tp 2"
    decision = placed(place(demand("sglang", command), [worker("wrk_a", 2)]))
    assert decision.gpu_ids == ("gpu_wrk_a_0", "gpu_wrk_a_1")


def test_tensor_parallel_larger_than_any_worker_says_how_many_gpus_are_needed() -> None:
    workers = [worker("wrk_a", 1), worker("wrk_b", 2)]
    reason = unschedulable(place(demand("vllm", "vllm serve m -tp 4"), workers))
    assert "vllm needs 4 free whole GPU(s) on one worker" in reason
    assert "wrk_a: 1 of 1 GPUs free" in reason
    assert "wrk_b: 2 of 2 GPUs free" in reason


def test_whole_gpu_engine_never_takes_a_gpu_with_a_shared_claim() -> None:
    workers = [worker("wrk_a", 2)]
    workers[0].gpus[0].claimed_mb, workers[0].gpus[0].shared_claims = 1000, 1
    decision = placed(place(demand("vllm", "vllm serve m"), workers))
    assert decision.gpu_ids == ("gpu_wrk_a_1",)
    reason = unschedulable(place(demand("vllm", "vllm serve m -tp 2"), workers))
    assert "wrk_a: 1 of 2 GPUs free" in reason


def test_whole_gpu_engine_never_takes_a_gpu_another_whole_replica_holds() -> None:
    workers = [worker("wrk_a", 2)]
    first = place_and_claim(demand("vllm", "vllm serve m", workload_id="wl_1"), workers)
    second = place_and_claim(demand("vllm", "vllm serve m", workload_id="wl_2"), workers)
    assert {first.gpu_ids, second.gpu_ids} == {("gpu_wrk_a_0",), ("gpu_wrk_a_1",)}
    reason = unschedulable(place(demand("vllm", "vllm serve m", workload_id="wl_3"), workers))
    assert "vllm needs 1 free whole GPU(s) on one worker" in reason
    assert "wrk_a: 0 of 2 GPUs free" in reason


def test_vllm_on_cpu_only_workers_is_unschedulable_naming_each_worker() -> None:
    workers = [worker("wrk_cpu1"), worker("wrk_cpu2")]
    reason = unschedulable(place(demand("vllm", "vllm serve m"), workers))
    assert "vllm needs 1 free whole GPU(s)" in reason
    assert "wrk_cpu1: no GPUs (CPU only)" in reason
    assert "wrk_cpu2: no GPUs (CPU only)" in reason


# --- shared engines (llama.cpp, Ollama) ------------------------------------------------------


def test_llamacpp_claims_memory_estimated_from_the_model_file_the_worker_reports() -> None:
    size = 2 * GIB
    workers = [worker("wrk_a", 1, model_files={"/models/x.gguf": size})]
    decision = placed(place(demand("llamacpp", "llama-server -m /models/x.gguf -c 2048"), workers))
    assert decision.gpu_ids == ("gpu_wrk_a_0",)
    assert decision.claim_memory_mb == shared_claim_mb(size)
    assert shared_claim_mb(size) == 2969  # 2 GiB model + 20% headroom + 512 MB overhead


def test_llamacpp_with_a_model_file_the_worker_does_not_have_claims_the_unknown_estimate() -> None:
    workers = [worker("wrk_a", 1, model_files={"/models/other.gguf": GIB})]
    decision = placed(place(demand("llamacpp", "llama-server -m /models/x.gguf"), workers))
    assert decision.claim_memory_mb == UNKNOWN_MODEL_MB


def test_ollama_model_size_is_unknown_so_it_claims_the_unknown_estimate() -> None:
    decision = placed(place(demand("ollama", model_name="llama3.2:1b"), [worker("wrk_a", 1)]))
    assert decision.gpu_ids == ("gpu_wrk_a_0",)
    assert decision.claim_memory_mb == UNKNOWN_MODEL_MB


def test_shared_engines_share_one_gpu_until_its_memory_runs_out() -> None:
    size = 2 * GIB  # claims 2969 MB each
    workers = [worker("wrk_a", 1, memory_mb=8192, model_files={"/models/x.gguf": size})]
    wanted = [
        demand("llamacpp", "llama-server -m /models/x.gguf", workload_id=f"wl_{i}")
        for i in range(3)
    ]
    first = place_and_claim(wanted[0], workers)
    second = place_and_claim(wanted[1], workers)
    assert first.gpu_ids == second.gpu_ids == ("gpu_wrk_a_0",)
    assert workers[0].gpus[0].claimed_mb == 2 * 2969
    reason = unschedulable(place(wanted[2], workers))
    assert "llamacpp needs GPU memory or a CPU-only worker" in reason
    assert "wrk_a: needs ~2969 MB of GPU memory, the most free on one GPU is 2254 MB" in reason


def test_shared_engine_picks_the_gpu_with_the_most_free_memory() -> None:
    workers = [worker("wrk_a", 2, memory_mb=24576)]
    workers[0].gpus[0].claimed_mb, workers[0].gpus[0].shared_claims = 10000, 1
    decision = placed(place(demand("ollama", model_name="llama3.2:1b"), workers))
    assert decision.gpu_ids == ("gpu_wrk_a_1",)


def test_shared_engine_never_takes_a_gpu_a_whole_gpu_engine_holds() -> None:
    workers = [worker("wrk_a", 1)]
    place_and_claim(demand("vllm", "vllm serve m", workload_id="wl_vllm"), workers)
    reason = unschedulable(place(demand("ollama", model_name="llama3.2:1b"), workers))
    assert "wrk_a: needs ~4096 MB of GPU memory, the most free on one GPU is 0 MB" in reason


def test_shared_engines_run_on_cpu_only_workers() -> None:
    for wanted in (
        demand("llamacpp", "llama-server -m /models/x.gguf"),
        demand("ollama", model_name="llama3.2:1b"),
    ):
        decision = placed(place(wanted, [worker("wrk_cpu")]))
        assert decision == Placement("wrk_cpu", (), (), 0), wanted.backend


# --- spreading replicas across hosts ---------------------------------------------------------


def test_replicas_of_one_workload_spread_across_workers() -> None:
    workers = [worker("wrk_a", 2), worker("wrk_b", 2)]
    wanted = demand("vllm", "vllm serve m")
    first = place_and_claim(wanted, workers)
    second = place_and_claim(wanted, workers)
    assert {first.worker_id, second.worker_id} == {"wrk_a", "wrk_b"}
    # With one replica on each host, the third goes wherever a GPU is still free.
    third = place_and_claim(wanted, workers)
    assert third.worker_id in {"wrk_a", "wrk_b"}


def test_shared_engine_replicas_spread_across_cpu_only_workers() -> None:
    workers = [worker("wrk_a"), worker("wrk_b")]
    wanted = demand("llamacpp", "llama-server -m /models/x.gguf")
    first = place_and_claim(wanted, workers)
    second = place(wanted, workers)
    assert placed(second).worker_id != first.worker_id


def test_a_new_workload_prefers_the_less_busy_worker() -> None:
    workers = [worker("wrk_a", 2), worker("wrk_b", 2)]
    place_and_claim(demand("vllm", "vllm serve m", workload_id="wl_busy"), workers)
    busy = next(w for w in workers if w.replica_total == 1)
    decision = placed(place(demand("vllm", "vllm serve m", workload_id="wl_new"), workers))
    assert decision.worker_id != busy.id


def test_workers_are_tried_in_spreading_order_the_first_found_without_a_sort() -> None:
    """placement._spreading gives the order of a full sort by (this workload's replicas, all
    replicas, id), whichever worker is least loaded and whether or not it runs the workload."""
    rng = random.Random(7)
    for _ in range(200):
        workers = [worker(f"wrk_{n:02d}", 1) for n in range(rng.randrange(1, 12))]
        for slot in workers:
            for _ in range(rng.randrange(4)):
                slot.add_replica(rng.choice(["wl_a", "wl_b", "wl_c"]))
        for workload_id in ("wl_a", "wl_new"):
            expected = sorted(
                workers, key=lambda w: (w.replicas_of.get(workload_id, 0), w.replica_total, w.id)
            )
            assert list(_spreading(workers, workload_id)) == expected
    assert list(_spreading([], "wl_a")) == []


def test_a_slot_keeps_its_replica_count() -> None:
    slot = worker("wrk_a", 1)
    slot.add_replica("wl_a")
    slot.add_replica("wl_a")
    slot.add_replica("wl_b")
    assert (slot.replicas_of, slot.replica_total) == ({"wl_a": 2, "wl_b": 1}, 3)
    slot.forget_replicas()
    assert (slot.replicas_of, slot.replica_total) == ({}, 0)
    given = WorkerSlot("wrk_b", "b", None, "ready", None, [], replicas_of={"wl_a": 2, "wl_b": 1})
    assert given.replica_total == 3


# --- which workers a project may use ---------------------------------------------------------


def test_private_workers_of_another_project_are_never_used() -> None:
    workers = [worker("wrk_theirs", 8, project_id=OTHER_PROJECT)]
    reason = unschedulable(place(demand("vllm", "vllm serve m"), workers))
    assert "no worker is registered for this project or the shared pool" in reason
    assert "inferencekey admin worker create" in reason
    assert "wrk_theirs" not in reason

    workers.append(worker("wrk_mine", 1))
    assert placed(place(demand("vllm", "vllm serve m"), workers)).worker_id == "wrk_mine"


def test_shared_pool_workers_are_used_by_every_project() -> None:
    workers = [worker("wrk_shared", 1, project_id=None)]
    assert placed(place(demand("vllm", "vllm serve m"), workers)).worker_id == "wrk_shared"


def test_workers_not_ready_make_it_unschedulable_listing_their_states() -> None:
    workers = [
        worker(
            "wrk_new", 1, state="registered", state_reason="waiting for the agent's first heartbeat"
        ),
        worker("wrk_quiet", 1, state="not_ready", state_reason="no heartbeat for 5s"),
        worker("wrk_gone", 1, state="lost", state_reason="no heartbeat for 90s"),
    ]
    reason = unschedulable(place(demand("vllm", "vllm serve m"), workers))
    assert reason.startswith("no ready worker")
    assert "wrk_new is registered (waiting for the agent's first heartbeat)" in reason
    assert "wrk_quiet is not_ready (no heartbeat for 5s)" in reason
    assert "wrk_gone is lost (no heartbeat for 90s)" in reason


def test_a_ready_worker_is_used_even_when_others_are_not_ready() -> None:
    workers = [worker("wrk_quiet", 2, state="not_ready"), worker("wrk_ok", 1)]
    assert placed(place(demand("vllm", "vllm serve m"), workers)).worker_id == "wrk_ok"


# --- pins -------------------------------------------------------------------------------------


def test_worker_pin_places_only_on_that_worker() -> None:
    workers = [worker("wrk_a", 2), worker("wrk_b", 2)]
    for _ in range(2):
        decision = place_and_claim(demand("vllm", "vllm serve m", worker_pin="wrk_b"), workers)
        assert decision.worker_id == "wrk_b"
    reason = unschedulable(place(demand("vllm", "vllm serve m", worker_pin="wrk_b"), workers))
    assert "wrk_b: 0 of 2 GPUs free" in reason
    assert "wrk_a" not in reason


def test_worker_pin_to_another_projects_worker_is_unschedulable() -> None:
    workers = [worker("wrk_theirs", 2, project_id=OTHER_PROJECT), worker("wrk_mine", 2)]
    reason = unschedulable(place(demand("vllm", "vllm serve m", worker_pin="wrk_theirs"), workers))
    assert "pinned worker wrk_theirs" in reason
    assert "does not exist or belongs to another project" in reason


def test_worker_pin_to_an_unknown_worker_is_unschedulable() -> None:
    reason = unschedulable(
        place(demand("vllm", "vllm serve m", worker_pin="wrk_nope"), [worker("wrk_a", 1)])
    )
    assert "pinned worker wrk_nope does not exist or belongs to another project" in reason


def test_worker_pin_to_a_worker_that_is_not_ready_says_its_state() -> None:
    workers = [
        worker("wrk_a", 1, state="lost", state_reason="no heartbeat for 70s"),
        worker("wrk_b", 1),
    ]
    reason = unschedulable(place(demand("vllm", "vllm serve m", worker_pin="wrk_a"), workers))
    assert "no ready worker: wrk_a is lost (no heartbeat for 70s)" in reason
    assert "wrk_b" not in reason


def test_gpu_pin_places_on_that_gpu() -> None:
    workers = [worker("wrk_a", 2), worker("wrk_b", 2)]
    decision = placed(place(demand("vllm", "vllm serve m", gpu_pin="gpu_wrk_b_1"), workers))
    assert (decision.worker_id, decision.gpu_ids) == ("wrk_b", ("gpu_wrk_b_1",))
    shared = placed(place(demand("ollama", gpu_pin="gpu_wrk_b_1"), workers))
    assert (shared.worker_id, shared.gpu_ids) == ("wrk_b", ("gpu_wrk_b_1",))


def test_gpu_pin_to_a_gpu_in_use_says_the_pinned_gpu_is_taken() -> None:
    workers = [worker("wrk_a", 2)]
    place_and_claim(
        demand("vllm", "vllm serve m", gpu_pin="gpu_wrk_a_1", workload_id="wl_1"), workers
    )
    reason = unschedulable(
        place(demand("vllm", "vllm serve m", gpu_pin="gpu_wrk_a_1", workload_id="wl_2"), workers)
    )
    assert "pinned GPU gpu_wrk_a_1 is not free" in reason


def test_shared_engine_pinned_to_a_full_gpu_says_how_much_the_pinned_gpu_has() -> None:
    workers = [worker("wrk_a", 2, memory_mb=8192)]
    workers[0].gpus[1].claimed_mb, workers[0].gpus[1].shared_claims = 6000, 1
    reason = unschedulable(place(demand("ollama", gpu_pin="gpu_wrk_a_1"), workers))
    assert "needs ~4096 MB of GPU memory, pinned GPU gpu_wrk_a_1 has 2192 MB" in reason


def test_gpu_pin_with_tensor_parallel_above_one_cannot_fit_and_says_why() -> None:
    reason = unschedulable(
        place(demand("vllm", "vllm serve m -tp 2", gpu_pin="gpu_wrk_a_0"), [worker("wrk_a", 2)])
    )
    assert "pinned to one GPU (gpu_wrk_a_0)" in reason
    assert "needs 2" in reason


def test_gpu_pin_to_another_projects_gpu_is_unschedulable() -> None:
    workers = [worker("wrk_theirs", 2, project_id=OTHER_PROJECT), worker("wrk_mine", 2)]
    reason = unschedulable(
        place(demand("vllm", "vllm serve m", gpu_pin="gpu_wrk_theirs_0"), workers)
    )
    assert "pinned GPU gpu_wrk_theirs_0 is not on any worker this project may use" in reason


def test_gpu_pin_to_an_unknown_gpu_is_unschedulable() -> None:
    reason = unschedulable(place(demand("ollama", gpu_pin="gpu_nope"), [worker("wrk_a", 1)]))
    assert "pinned GPU gpu_nope is not on any worker this project may use" in reason
