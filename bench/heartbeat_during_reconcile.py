"""How long an agent's heartbeat takes while reconcile passes run, against none running.

    python bench/heartbeat_during_reconcile.py [--workloads 1000] [--workers 250] [--json out.json]

Builds a fresh database on the local Postgres (``INFERENCEKEY_BENCH_DATABASE_SERVER``, default the
tests' server), migrated to head by a real Manager that runs without a reconciler of its own, in a
child process, and answers heartbeats on its real route. It fills it through the admin and
workload APIs: one project, ``--workers`` simulated workers of ``--gpus`` GPUs each, and
``--workloads`` fixed-policy vLLM workloads of one replica, which a first pass places and the
agents' heartbeats then report ready. Then heartbeats are timed, ``--concurrency`` at a time,
each from a random worker reporting its replicas, in three phases:

- ``idle``: no pass runs (the peer; measured before and after the others);
- ``passes``: a child process runs reconcile passes back to back, each after changing the wanted
  count of ``--churn`` workloads (1 <-> 2), so every pass creates and stops replicas; a sample
  counts only if it overlapped a pass;
- ``pass-long locks``: a child holds what a pass locked before the "Locking" rules of
  docs/DESIGN.md (every worker, replica and workload row ``FOR UPDATE``) for as long as a pass took,
  back to back: what heartbeats used to wait for.

Prints p50/p99/max per phase, the share of polls of ``pg_stat_activity`` (every 20 ms) that found
a backend waiting on a lock, and the ratios against ``idle``. Drops its database when it ends.
Run it from the repository root with the project installed (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import secrets
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

DATABASE_SERVER = os.environ.get(
    "INFERENCEKEY_BENCH_DATABASE_SERVER",
    os.environ.get(
        "INFERENCEKEY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    ),
)
GPU_NAME = "NVIDIA A100-SXM4-80GB"
GPU_MB = 81920
# Workers stay ready however long the bench runs: liveness is not what is measured.
NEVER_S = 24 * 3600.0
LEGACY_LOCKS = (
    "SELECT id FROM workers ORDER BY id FOR UPDATE",
    "SELECT id FROM replicas ORDER BY id FOR UPDATE",
    "SELECT id FROM workloads ORDER BY id FOR UPDATE",
)


@dataclass
class Phase:
    name: str
    samples_ms: list[float]
    intervals: int = 0  # passes (or lock holds) that ran during it
    # Share of polls of pg_stat_activity that found a backend waiting on a row or table lock.
    lock_wait_share: float = 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "samples": len(self.samples_ms),
            "intervals": self.intervals,
            "lock_wait_share": round(self.lock_wait_share, 3),
            "p50_ms": round(self.percentile(0.50), 2),
            "p99_ms": round(self.percentile(0.99), 2),
            "max_ms": round(max(self.samples_ms, default=float("nan")), 2),
        }


@dataclass
class Fleet:
    """The workers' credentials and what each reports in its heartbeat."""

    tokens: dict[str, str]  # worker id -> agent token
    bodies: dict[str, dict[str, Any]]  # worker id -> heartbeat body


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    name = f"ik_bench_{os.getpid()}_{secrets.token_hex(3)}"

    async def sql(statement: str) -> None:
        connection = await asyncpg.connect(DATABASE_SERVER)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(sql(f'CREATE DATABASE "{name}"'))
    try:
        yield urlsplit(DATABASE_SERVER)._replace(path=f"/{name}").geturl()
    finally:
        asyncio.run(sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def manager_settings(database_url: str, port: int, admin_token: str, data_dir: Path) -> Any:
    from manager.settings import Settings

    return Settings(
        port=port,
        database_url=database_url,
        data_dir=data_dir,
        admin_token=admin_token,
        run_reconciler=False,
        worker_not_ready_after_s=NEVER_S,
        worker_lost_after_s=NEVER_S,
        max_replicas_per_workload=4,
        db_pool_size=20,
    )


def serve_manager(database_url: str, port: int, admin_token: str, data_dir: str) -> None:
    """Child process: a real Manager (migrating the database) with no reconciler of its own."""
    import uvicorn

    from ik_contracts.http_server import uvicorn_options
    from manager.app import create_app

    settings = manager_settings(database_url, port, admin_token, Path(data_dir))
    uvicorn.run(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        **uvicorn_options(settings.server_limits),
    )


def _reconciler(database_url: str) -> tuple[Any, Any]:
    from manager.db.session import make_engine, make_sessionmaker
    from manager.notify import NotificationHub
    from manager.reconciler import Reconciler

    engine = make_engine(database_url)
    settings = manager_settings(database_url, 0, "", Path(tempfile.gettempdir()))
    return engine, Reconciler(make_sessionmaker(engine), NotificationHub(database_url), settings)


def run_passes(
    database_url: str, churn: int, stop: EventType, intervals: multiprocessing.Queue[Any]
) -> None:
    """Child process: reconcile passes back to back, each after changing ``churn`` workloads'
    wanted count, until ``stop``; puts each pass's (start, end) on ``intervals``."""

    async def main() -> None:
        engine, reconciler = _reconciler(database_url)
        connection = await asyncpg.connect(database_url)
        ids = [r["id"] for r in await connection.fetch("SELECT id FROM workloads ORDER BY id")]
        flip = 0
        try:
            while not stop.is_set():
                chosen = random.sample(ids, min(churn, len(ids)))
                flip = 1 - flip
                await connection.execute(
                    "UPDATE workloads SET execution_policy_config = $1::json "
                    "WHERE id = ANY($2::text[])",
                    json.dumps({"replicas": 1 + flip}),
                    chosen,
                )
                started = time.monotonic()
                await reconciler.reconcile_once(full=True)
                intervals.put((started, time.monotonic()))
        finally:
            await connection.close()
            await engine.dispose()

    asyncio.run(main())


def hold_pass_long_locks(
    database_url: str, hold_s: float, stop: EventType, intervals: multiprocessing.Queue[Any]
) -> None:
    """Child process: what a pass locked before the Locking rules, held as long as a pass."""

    async def main() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            while not stop.is_set():
                async with connection.transaction():
                    for statement in LEGACY_LOCKS:
                        await connection.execute(statement)
                    started = time.monotonic()
                    await asyncio.sleep(hold_s)
                intervals.put((started, time.monotonic()))
                await asyncio.sleep(0.005)  # the old loop's gap between passes
        finally:
            await connection.close()

    asyncio.run(main())


def wait_until_up(base_url: str, manager: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and manager.is_alive():
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("the Manager did not start; see its log above")


async def _post(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], token: str
) -> dict[str, Any]:
    response = await client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
    if response.status_code not in (200, 201):
        raise RuntimeError(f"{path}: {response.status_code} {response.text}")
    return dict(response.json())


async def _in_batches(coroutines: list[Any], size: int) -> list[Any]:
    results: list[Any] = []
    for start in range(0, len(coroutines), size):
        results.extend(await asyncio.gather(*coroutines[start : start + size]))
    return results


async def fill(
    base_url: str, admin_token: str, database_url: str, args: argparse.Namespace
) -> Fleet:
    """Project, workers, workloads; a first pass places them; heartbeats report them ready."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        await _post(client, "/api/admin/projects", {"slug": "bench"}, admin_token)
        sdk = (await _post(client, "/api/admin/tokens", {"project": "bench"}, admin_token))["token"]
        workers = await _in_batches(
            [
                _post(client, "/api/admin/workers", {"name": f"w{i}"}, admin_token)
                for i in range(args.workers)
            ],
            16,
        )
        tokens = {w["id"]: w["token"] for w in workers}
        bodies = {
            worker_id: {
                "agent_version": "bench",
                "address": "http://127.0.0.1:9",
                "inventory": {
                    "source": "simulated",
                    "gpus": [
                        {
                            "index": i,
                            "uuid": f"GPU-{worker_id}-{i}",
                            "name": GPU_NAME,
                            "memory_total_mb": GPU_MB,
                        }
                        for i in range(args.gpus)
                    ],
                },
                "replicas": [],
            }
            for worker_id in tokens
        }
        await _heartbeat_all(client, tokens, bodies)
        spec = {
            "backend": "vllm",
            "model_name": "m",
            "config": {"command": "vllm serve m"},
            "execution_policy": "fixed",
            "execution_policy_config": {"replicas": 1},
        }
        await _in_batches(
            [
                _post(
                    client,
                    "/api/projects/bench/workloads",
                    {**spec, "name": f"wl-{i}", "slug": f"wl-{i}"},
                    sdk,
                )
                for i in range(args.workloads)
            ],
            16,
        )

        engine, reconciler = _reconciler(database_url)
        started = time.perf_counter()
        await reconciler.reconcile_once(full=True)
        print(
            f"first pass placed {args.workloads} workloads in {time.perf_counter() - started:.2f}s"
        )
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch("SELECT id, worker_id FROM replicas ORDER BY id")
        finally:
            await connection.close()
        for port, row in enumerate(rows, start=20000):
            bodies[row["worker_id"]]["replicas"].append(
                {"id": row["id"], "state": "ready", "port": port}
            )
        await _heartbeat_all(client, tokens, bodies)
        started = time.perf_counter()
        await reconciler.reconcile_once(full=True)
        print(f"a pass over {args.workloads} ready workloads: {time.perf_counter() - started:.2f}s")
        await engine.dispose()
    return Fleet(tokens, bodies)


async def _heartbeat_all(
    client: httpx.AsyncClient, tokens: dict[str, str], bodies: dict[str, dict[str, Any]]
) -> None:
    await _in_batches(
        [_post(client, "/api/agent/heartbeat", bodies[w], tokens[w]) for w in tokens], 16
    )


@dataclass
class Timing:
    spans: list[tuple[float, float]]  # (start, end) of each heartbeat, time.monotonic()
    lock_wait_share: float


async def time_heartbeats(
    base_url: str, database_url: str, fleet: Fleet, count: int, concurrency: int
) -> Timing:
    """``count`` heartbeats from random workers, ``concurrency`` at a time, while polling
    Postgres for backends waiting on a lock."""
    spans: list[tuple[float, float]] = []
    polls: list[bool] = []
    workers = list(fleet.tokens)

    async def one(client: httpx.AsyncClient) -> None:
        worker_id = random.choice(workers)
        started = time.monotonic()
        await _post(
            client, "/api/agent/heartbeat", fleet.bodies[worker_id], fleet.tokens[worker_id]
        )
        spans.append((started, time.monotonic()))

    async def poll_lock_waits(connection: asyncpg.Connection) -> None:
        while True:
            waiting = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            polls.append(waiting > 0)
            await asyncio.sleep(0.02)

    connection = await asyncpg.connect(database_url)
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
            for _ in range(3):  # warm the connections
                await one(client)
            spans.clear()
            poller = asyncio.create_task(poll_lock_waits(connection))
            for _ in range(count // concurrency):
                await asyncio.gather(*(one(client) for _ in range(concurrency)))
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
    finally:
        await connection.close()
    return Timing(spans, sum(polls) / max(1, len(polls)))


def _drain(intervals: multiprocessing.Queue[Any]) -> list[tuple[float, float]]:
    drained = []
    with contextlib.suppress(Exception):
        while True:
            drained.append(intervals.get(timeout=0.5))
    return drained


def _overlapping(
    spans: list[tuple[float, float]], intervals: list[tuple[float, float]]
) -> list[float]:
    return [
        (end - start) * 1000
        for start, end in spans
        if any(start < busy_end and end > busy_start for busy_start, busy_end in intervals)
    ]


def measure_with(
    name: str,
    target: Any,
    extra: tuple[Any, ...],
    base_url: str,
    database_url: str,
    fleet: Fleet,
    args: argparse.Namespace,
) -> tuple[Phase, list[tuple[float, float]]]:
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    intervals: multiprocessing.Queue[Any] = context.Queue()
    child = context.Process(target=target, args=(*extra, stop, intervals), daemon=True)
    child.start()
    try:
        # Let the first pass (or lock) begin before timing.
        first = intervals.get(timeout=300)
        timing = asyncio.run(
            time_heartbeats(base_url, database_url, fleet, args.heartbeats, args.concurrency)
        )
    finally:
        stop.set()
    busy = [first, *_drain(intervals)]
    child.join(timeout=120)
    phase = Phase(name, _overlapping(timing.spans, busy), len(busy), timing.lock_wait_share)
    return phase, busy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=250)
    parser.add_argument("--gpus", type=int, default=5, help="GPUs per worker")
    parser.add_argument("--churn", type=int, default=50, help="workloads rescaled per pass")
    parser.add_argument("--heartbeats", type=int, default=800, help="per phase")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if args.workers * args.gpus < args.workloads + args.churn:
        parser.error("--workers x --gpus must fit --workloads plus --churn replicas")

    admin_token = f"ik_admin_{secrets.token_hex(4)}_{secrets.token_hex(32)}"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    context = multiprocessing.get_context("spawn")
    with fresh_database() as database_url, tempfile.TemporaryDirectory() as data_dir:
        manager = context.Process(
            target=serve_manager, args=(database_url, port, admin_token, data_dir), daemon=True
        )
        manager.start()
        try:
            wait_until_up(base_url, manager)
            fleet = asyncio.run(fill(base_url, admin_token, database_url, args))

            idle_before = asyncio.run(
                time_heartbeats(base_url, database_url, fleet, args.heartbeats, args.concurrency)
            )
            passes, pass_spans = measure_with(
                "passes",
                run_passes,
                (database_url, args.churn),
                base_url,
                database_url,
                fleet,
                args,
            )
            pass_s = statistics.median(end - start for start, end in pass_spans)
            legacy, _ = measure_with(
                "pass-long locks",
                hold_pass_long_locks,
                (database_url, pass_s),
                base_url,
                database_url,
                fleet,
                args,
            )
            idle_after = asyncio.run(
                time_heartbeats(base_url, database_url, fleet, args.heartbeats, args.concurrency)
            )
        finally:
            manager.terminate()
            manager.join(timeout=30)

    idle = Phase(
        "idle",
        [(end - start) * 1000 for start, end in idle_before.spans + idle_after.spans],
        lock_wait_share=(idle_before.lock_wait_share + idle_after.lock_wait_share) / 2,
    )
    phases = [idle, passes, legacy]
    print()
    print(
        f"{args.workloads} workloads, {args.workers} workers x {args.gpus} GPUs; "
        f"{args.churn} workloads rescaled per pass; a pass took {pass_s * 1000:.0f} ms (median "
        f"of {len(pass_spans)}); heartbeats {args.concurrency} at a time"
    )
    print(
        f"{'phase':<17}{'samples':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'lock waits':>12}  vs idle"
    )
    figures = []
    for phase in phases:
        row = phase.summary()
        ratio = (
            f"p50 x{phase.percentile(0.5) / idle.percentile(0.5):.2f}, "
            f"p99 x{phase.percentile(0.99) / idle.percentile(0.99):.2f}"
        )
        row["vs_idle"] = ratio
        figures.append(row)
        shown = ratio if phase is not idle else "-"
        print(
            f"{phase.name:<17}{row['samples']:>8}{row['p50_ms']:>9}{row['p99_ms']:>9}"
            f"{row['max_ms']:>9}{phase.lock_wait_share:>12.1%}  {shown}"
        )
    if args.json:
        run = {**vars(args), "json": str(args.json)}
        args.json.write_text(
            json.dumps({"args": run, "pass_ms": pass_s * 1000, "phases": figures}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
