"""When most of a fleet goes silent at once, the Manager suspects itself (or the network)
before the workers: none more is judged lost and no replica is moved, until fewer than
``worker_silence_share`` of the workers are silent (manager/reconciler.py ``_silence_held``).

An overloaded Manager that cannot take its agents' heartbeats in time would otherwise judge
hundreds of live workers lost at once and re-place all their replicas, adding the most work at
the worst moment. Twelve workers speak the real agent protocol to a Manager with the default
share and fleet size; seven go silent (58%): past the lost threshold they are still not ready,
saying why, and the replica on one of them stays. Two report again (5 of 12 silent, 42%): the
five are judged lost and the replica is placed elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from manager.settings import Settings
from tests.support import (
    RunningManager,
    bearer,
    create_project,
    create_sdk_token,
    histogram_buckets,
    own_manager,
    run_sql,
    wait_until_async,
)
from tests.test_agent_protocol_load import DELTA, WORKLOAD, full, gpu_inventory, new_worker

WORKERS = 12
SILENT = 7
DEFAULTS = Settings()


async def states(database_url: str) -> dict[str, tuple[str, str | None]]:
    rows = await asyncio.to_thread(
        run_sql, database_url, "SELECT id, state, state_reason FROM workers"
    )
    return {row["id"]: (row["state"], row["state_reason"]) for row in rows}


async def row_versions(database_url: str, workers: set[str]) -> dict[str, str]:
    """Each worker row's version (xmin): it changes with every write of the row."""
    query = "SELECT id, xmin::text AS v FROM workers WHERE id = ANY($1)"
    rows = await asyncio.to_thread(run_sql, database_url, query, list(workers))
    return {row["id"]: row["v"] for row in rows}


async def reconcile_passes(running: RunningManager) -> float:
    """How many reconcile passes the Manager has made."""
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        answer = await client.get("/metrics", headers=bearer(running.admin_token or ""))
    buckets = histogram_buckets(answer.text, "inferencekey_reconcile_pass_duration_seconds")
    return buckets[math.inf]


async def replicas_of(database_url: str, workload_id: str) -> list[tuple[str, str]]:
    rows = await asyncio.to_thread(
        run_sql,
        database_url,
        "SELECT worker_id, desired_state FROM replicas WHERE workload_id = $1 ORDER BY created_at",
        workload_id,
    )
    return [(row["worker_id"], row["desired_state"]) for row in rows]


@pytest.fixture
def own(tmp_path: Path) -> Iterator[RunningManager]:
    with own_manager(tmp_path, worker_silence_fleet=DEFAULTS.worker_silence_fleet) as running:
        yield running


async def test_most_of_a_fleet_silent_at_once_is_held_not_ready_until_fewer_are(
    own: RunningManager, caplog: pytest.LogCaptureFixture
) -> None:
    assert DEFAULTS.worker_silence_share == 0.5 and DEFAULTS.worker_silence_fleet == 10
    running = own
    with caplog.at_level(logging.INFO, logger="inferencekey.manager"):
        not_ready_s = running.settings.worker_not_ready_after_s
        lost_s = running.settings.worker_lost_after_s
        with httpx.Client(base_url=running.url, headers=bearer(running.admin_token or "")) as admin:
            project = create_project(admin)["slug"]
            sdk_token = create_sdk_token(admin, project)
            tokens = [new_worker(admin, project, f"box-{n}") for n in range(WORKERS)]
        async with contextlib.AsyncExitStack() as stack:
            agents = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=running.url, headers=bearer(token), timeout=30)
                )
                for token in tokens
            ]
            sdk = await stack.enter_async_context(
                httpx.AsyncClient(base_url=running.url, headers=bearer(sdk_token), timeout=30)
            )
            worker_of: dict[int, str] = {}
            for n, agent in enumerate(agents):
                answer = await agent.post(
                    "/api/agent/heartbeat", json=full(gpu_inventory(hostname=f"box-{n}"), [])
                )
                assert answer.status_code == 200, answer.text
                worker_of[n] = answer.json()["worker_id"]
            speaking = set(range(WORKERS))

            async def heartbeats() -> None:  # every second, from those still speaking
                while True:
                    for n in sorted(speaking):
                        await agents[n].post("/api/agent/heartbeat", json=DELTA)
                    await asyncio.sleep(1.0)

            beating = asyncio.create_task(heartbeats())
            try:
                created = await sdk.post(f"/api/projects/{project}/workloads", json=WORKLOAD)
                assert created.status_code == 201, created.text
                workload_id = created.json()["id"]
                [(placed_on, _)] = await wait_until_async(
                    lambda: replicas_of(running.database_url, workload_id), 20, "a replica placed"
                )
                # Seven silent, the replica's worker among them.
                by_worker = {worker: n for n, worker in worker_of.items()}
                others = [n for n in range(WORKERS) if n != by_worker[placed_on]]
                silent = {by_worker[placed_on], *others[: SILENT - 1]}
                speaking.difference_update(silent)
                silent_ids = {worker_of[n] for n in silent}

                # Past the lost threshold (and a pass more), none of them is lost.
                await asyncio.sleep(lost_s + 3)
                now = await states(running.database_url)
                for worker in silent_ids:
                    state, reason = now[worker]
                    assert state == "not_ready", (worker, state, reason)
                    assert re.fullmatch(
                        r"no heartbeat since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; not judged lost "
                        r"while 50% or more of the fleet is silent \(more likely this Manager's "
                        r"or the network's trouble than the workers'\): its replicas stay",
                        reason or "",
                    ), reason
                assert all(now[worker_of[n]][0] == "ready" for n in speaking), now
                assert await replicas_of(running.database_url, workload_id) == [(placed_on, "run")]
                # Held, their rows are not written again at each pass (the reason stays the same).
                versions = await row_versions(running.database_url, silent_ids)
                passes = await reconcile_passes(running)
                await asyncio.sleep(3 * running.settings.reconcile_interval_s)
                assert await reconcile_passes(running) >= passes + 2
                assert await row_versions(running.database_url, silent_ids) == versions
                # Said once, when it began: with six or all seven of them silent by then (their
                # last heartbeats were a moment apart).
                said = [m for r in caplog.records if "silent at once" in (m := r.getMessage())]
                assert len(said) == 1, said
                assert re.fullmatch(
                    rf"[67] of {WORKERS} workers are silent at once: more likely this Manager "
                    r"\(overloaded\?\) or the network than the workers, so none is judged lost "
                    r"and no replica is moved until fewer than 50% are silent",
                    said[0],
                ), said

                # Two of them (not the replica's worker) report again: 5 of 12 silent.
                back = sorted(silent - {by_worker[placed_on]})[:2]
                speaking.update(back)
                still = {worker_of[n] for n in silent - set(back)}

                async def lost_now() -> bool:
                    now = await states(running.database_url)
                    return all(now[worker][0] == "lost" for worker in still)

                await wait_until_async(lost_now, not_ready_s + 5, "the five judged lost")
                now = await states(running.database_url)
                assert all(now[worker_of[n]][0] == "ready" for n in back), now
                assert all(
                    (now[worker][1] or "").startswith("no heartbeat since ")
                    and "not judged lost" not in (now[worker][1] or "")
                    for worker in still
                ), now
                assert any("most workers report again" in r.getMessage() for r in caplog.records), [
                    r.getMessage() for r in caplog.records
                ]

                # The replica of the lost worker is placed on a worker that speaks.
                async def moved() -> Any:
                    rows = await replicas_of(running.database_url, workload_id)
                    return [w for w, desired in rows if w != placed_on and desired == "run"]

                [elsewhere] = await wait_until_async(moved, 20, "the replica placed elsewhere")
                assert elsewhere not in still
            finally:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
