"""The reconciler's fleet cache holds workloads in the order a full read gives (creation, then
id), however their notifications arrive: placement goes oldest first either way."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

from manager.fleet import Fleet, WorkerRecord, WorkerShape
from manager.placement import WorkerSlot
from manager.planning import ReplicaView
from manager.states import WorkerState
from tests.unit.test_reconcile_plan import A100_MB, replica, workload

T0 = datetime(2026, 11, 27, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_new_workloads_read_together_are_held_in_creation_order() -> None:
    fleet = Fleet()
    fleet._insert_in_order(
        [(at(3), "wl_c", workload(id="wl_c")), (at(1), "wl_a", workload(id="wl_a"))]
    )
    fleet._insert_in_order([(at(5), "wl_e", workload(id="wl_e"))])

    assert list(fleet.workloads) == ["wl_a", "wl_c", "wl_e"]


def test_a_workload_older_than_those_held_goes_where_a_full_read_puts_it() -> None:
    fleet = Fleet()
    fleet._insert_in_order([(at(n), f"wl_{n}", workload(id=f"wl_{n}")) for n in (1, 4, 6)])
    # Two creates whose transactions overlapped the last read: committed later, created earlier.
    fleet._insert_in_order(
        [(at(5), "wl_5", workload(id="wl_5")), (at(2), "wl_2", workload(id="wl_2")),
         (at(7), "wl_7", workload(id="wl_7"))]
    )  # fmt: skip
    # The same instant orders by id, as the full read's ORDER BY created_at, id does.
    fleet._insert_in_order([(at(4), "wl_3", workload(id="wl_3"))])

    assert list(fleet.workloads) == ["wl_1", "wl_2", "wl_3", "wl_4", "wl_5", "wl_6", "wl_7"]
    assert all(view.id == key for key, view in fleet.workloads.items())


def test_kept_slots_hold_what_the_replicas_hold_made_afresh_only_where_it_changed() -> None:
    fleet = Fleet()
    for worker_id in ("wrk_a", "wrk_b", "wrk_c"):
        fleet.shapes[worker_id] = WorkerShape(
            id=worker_id,
            name=f"{worker_id}-host",
            project_id=None,
            model_files={},
            cuda_version=None,
            gpus=tuple(
                (f"gpu_{worker_id}_{i}", f"GPU-{worker_id}-{i}", "NVIDIA A100", A100_MB)
                for i in range(2)
            ),
        )
    workers = ("wrk_a", "wrk_b", "wrk_c")
    liveness = [WorkerRecord(w, at(0), WorkerState.READY.value, None) for w in workers]
    vllm, ollama = workload(), workload(id="wl_2", backend="ollama")
    on_a = replica("rep_1", "wrk_a", of=vllm, gpu=1)
    on_b = dataclasses.replace(
        replica("rep_2", "wrk_b", of=ollama), workload_id="wl_2", claim_memory_mb=1000
    )

    def a_pass(
        replicas: dict[str, list[ReplicaView]], changed: tuple[str, ...] = ()
    ) -> list[WorkerSlot]:
        for workload_id in {*fleet.replicas, *replicas}:  # as refresh_workloads does
            before = {r.id: r for r in fleet.replicas.get(workload_id, ())}
            fleet._replace_replicas(before, replicas.get(workload_id, []))
            fleet.replicas[workload_id] = replicas.get(workload_id, [])
        slots = fleet.slots(liveness)
        fleet.claim({slot.id: slot for slot in slots}, changed)
        return slots

    first = a_pass({"wl_1": [on_a], "wl_2": [on_b]})
    a, b, c = first
    assert [gpu.wholly_free for gpu in a.gpus] == [True, False]
    assert b.gpus[0].free_mb == A100_MB - 1000 and b.gpus[0].shared_claims == 1

    # The next pass: the same objects; rep_1 gone, rep_2 there with a new state; a placement on
    # wrk_c claimed in this pass's slots (the plan's, as placement.claim makes it).
    c.add_replica("wl_3")
    c.gpus[0].whole_claimed = True
    fleet.placed_on(["wrk_c"])
    second = a_pass({"wl_1": [], "wl_2": [dataclasses.replace(on_b, state="ready")]})
    assert [slot is kept for slot, kept in zip(second, first, strict=True)] == [True] * 3
    assert all(gpu.wholly_free and gpu.free_mb == A100_MB for gpu in a.gpus)
    assert a.replicas_of == {}
    assert b.gpus[0].free_mb == A100_MB - 1000 and b.gpus[0].shared_claims == 1
    assert b.replicas_of == {"wl_2": 1}
    # The placement was not written (no replica of wl_3 was read): its claim is gone.
    assert c.replicas_of == {} and all(gpu.wholly_free for gpu in c.gpus)

    # wrk_b lost: its replica holds nothing (it is forgotten in this pass); back, it holds again.
    liveness[1] = WorkerRecord("wrk_b", at(0), WorkerState.LOST.value, None)
    third = a_pass({"wl_2": [on_b]}, changed=("wrk_b",))
    assert third[1].replicas_of == {} and third[1].gpus[0].free_mb == A100_MB
    liveness[1] = WorkerRecord("wrk_b", at(0), WorkerState.READY.value, None)
    fourth = a_pass({"wl_2": [on_b]}, changed=("wrk_b",))
    assert fourth[1].replicas_of == {"wl_2": 1}
    assert fourth[1].gpus[0].free_mb == A100_MB - 1000


def test_a_pass_picks_its_workloads_in_the_full_order_and_finds_them_by_worker() -> None:
    """``in_order`` gives what a scan of the whole order gives, for a few ids (sorted) and for
    many (picked from the order); ``workloads_on`` what a scan of every replica gives."""
    fleet = Fleet()
    # Created in a shuffled order, some at the same instant (then by id).
    created = [(at(n % 7), f"wl_{n:02d}") for n in range(40)]
    fleet._insert_in_order([(when, id_, workload(id=id_)) for when, id_ in created])
    for n, workload_id in enumerate(list(fleet.workloads)[::2]):
        worker_id = f"wrk_{n % 5}"
        view = replica(f"rep_{workload_id}", worker_id, of=fleet.workloads[workload_id])
        fleet._replace_replicas({}, [view])
        fleet.replicas[workload_id] = [view]

    def scanned(ids: set[str]) -> list[str]:
        return [view.id for view in fleet.workloads.values() if view.id in ids]

    for ids in ({"wl_03"}, {"wl_39", "wl_00", "wl_07"}, {f"wl_{n:02d}" for n in range(0, 40, 3)},
                {"wl_05", "wl_gone"}, set(fleet.workloads)):  # fmt: skip
        assert [view.id for view in fleet.in_order(ids)] == scanned(ids)
    for workers in ({"wrk_0"}, {"wrk_1", "wrk_3"}, {"wrk_9"}, set()):
        assert fleet.workloads_on(workers) == {
            r.workload_id for rs in fleet.replicas.values() for r in rs if r.worker_id in workers
        }


def test_a_resync_plans_what_differs_from_the_copy_it_kept() -> None:
    """``differing_from``: a workload whose row or replicas changed behind the leader's back,
    or that its copy did not hold; not one that is as it was."""
    kept = Fleet()
    kept._insert_in_order([(at(n), f"wl_{n}", workload(id=f"wl_{n}")) for n in range(4)])
    for workload_id in ("wl_0", "wl_1"):
        view = replica(f"rep_{workload_id}", "wrk_a", of=kept.workloads[workload_id])
        kept._replace_replicas({}, [view])
        kept.replicas[workload_id] = [view]

    fresh = Fleet()  # as a full read builds it, from equal rows
    fresh._insert_in_order([(at(n), f"wl_{n}", workload(id=f"wl_{n}")) for n in range(4)])
    fresh.replicas = {workload_id: list(views) for workload_id, views in kept.replicas.items()}
    assert asyncio.run(fresh.differing_from(kept)) == set()

    # A serving replica's engine load is stored without a notice: no change to plan.
    fresh.replicas["wl_0"] = [dataclasses.replace(fresh.replicas["wl_0"][0], engine_requests=7)]
    assert asyncio.run(fresh.differing_from(kept)) == set()

    fresh._hold(dataclasses.replace(fresh.workloads["wl_2"], generation=2))  # a row changed
    fresh.replicas["wl_1"] = [dataclasses.replace(fresh.replicas["wl_1"][0], state="failed")]
    del fresh.replicas["wl_0"]  # its replica went
    fresh._insert_in_order([(at(9), "wl_9", workload(id="wl_9"))])  # new to the copy
    assert asyncio.run(fresh.differing_from(kept)) == {"wl_0", "wl_1", "wl_2", "wl_9"}
