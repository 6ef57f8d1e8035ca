"""The reconciler's fleet cache holds workloads in the order a full read gives (creation, then
id), however their notifications arrive: placement goes oldest first either way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from manager.fleet import Fleet
from tests.unit.test_reconcile_plan import workload

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
