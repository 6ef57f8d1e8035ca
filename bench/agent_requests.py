"""What one agent request costs the Manager: CPU per request, against a bare HTTP server's.

    python bench/agent_requests.py [--agents 200] [--rounds 20] [--concurrency 32] [--json out.json]
                                   [--kinds delta,report,figures,poll]
    python bench/agent_requests.py --kinds create,get    # the control API's, for comparison

Starts, in child processes, a real Manager (no reconciler: only the requests are measured) on a
fresh database of the local Postgres (``INFERENCEKEY_BENCH_DATABASE_SERVER``, default the tests'
server), and the peer: a bare ASGI app on the same uvicorn and server options that reads each
request's body and answers a fixed JSON of the same size as the Manager's answer, the least any
Python HTTP service on this stack can do per request. ``--agents`` workers are registered (each
with a full heartbeat: 8 simulated GPUs), then each kind of agent request is sent ``--rounds``
times per agent, ``--concurrency`` in flight, to the Manager and to the peer in turn:

- ``delta heartbeat``: nothing changed, the lease only (most of a steady fleet's traffic);
- ``report, unchanged``: the full heartbeat every agent sends every minute (8 GPUs, no replica);
- ``report, new figures``: the same with every GPU's utilisation and used memory changed, as a
  real agent's is;
- ``long-poll, answered``: an assignments request whose version is stale, answered at once.

And, with ``--kinds``, two control-API requests with the project's SDK token (not run by
default):

- ``create a workload``: a new fixed-policy workload each (bench/control_plane.py's body); with
  no reconciler, nothing reacts to it;
- ``get a workload``: one of the workloads made before the rounds (one per agent).

Prints per kind the Manager's CPU per request (its process, from /proc), its Postgres backends'
CPU per request, the peer's CPU per request and the ratio of the two processes. Drops its
database when it ends. Run it from the repository root with the project installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_plane import process_cpu_s, workload_body
from heartbeat_during_reconcile import (
    free_port,
    fresh_database,
    serve_manager,
    wait_until_up,
)

GPUS = 8


@dataclass
class Figure:
    kind: str
    requests: int
    manager_ms: float  # the Manager's process CPU per request
    postgres_ms: float | None  # its backends' CPU per request, where /proc shows them
    peer_ms: float  # the bare server's CPU per request
    manager_wall_s: float
    peer_wall_s: float

    @property
    def ratio(self) -> float:
        return self.manager_ms / self.peer_ms if self.peer_ms else float("nan")


def cpu_s(pid: int) -> float:
    """A child's CPU seconds so far (control_plane.process_cpu_s); it must still run."""
    used = process_cpu_s(pid)
    if used is None:
        raise RuntimeError(f"process {pid} is gone: see its output above")
    return used


def serve_peer(port: int, answer_bytes: int) -> None:
    """Child process: the least an ASGI service does per request, on the Manager's server."""
    import uvicorn

    from ik_contracts.http_server import ServerLimits, uvicorn_options

    body = json.dumps({"padding": "x" * max(0, answer_bytes - 15)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    limits = ServerLimits.from_env()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(limits))


def inventory(index: int) -> dict[str, Any]:
    return {
        "source": "simulated",
        "hostname": f"bench-{index}",
        "gpus": [
            {
                "index": g,
                "uuid": f"GPU-bench-{index}-{g}",
                "name": "NVIDIA A100-SXM4-80GB",
                "memory_total_mb": 81920,
                "memory_used_mb": 0,
                "utilization_pct": 0,
            }
            for g in range(GPUS)
        ],
    }


# The control API's paths, called with the project's SDK token; the others with agent tokens.
CONTROL_PATHS = ("/api/projects/", "/api/workloads/")


class Agents:
    """The registered workers' credentials and what each sends; the project's SDK token."""

    def __init__(self, tokens: list[str], sdk_token: str) -> None:
        self.tokens = tokens
        self.sdk_token = sdk_token
        self.sent = 0
        self.created = 0

    def token(self, n: int, path: str) -> str:
        return self.sdk_token if path.startswith(CONTROL_PATHS) else self.tokens[n]

    def delta(self, n: int) -> tuple[str, str, dict[str, Any] | None]:
        return ("POST", "/api/agent/heartbeat", {"address": f"http://127.0.0.1:{20000 + n}"})

    def report(self, n: int) -> tuple[str, str, dict[str, Any] | None]:
        body = {"address": f"http://127.0.0.1:{20000 + n}", "inventory": inventory(n)}
        return ("POST", "/api/agent/heartbeat", {**body, "replicas": []})

    def figures(self, n: int) -> tuple[str, str, dict[str, Any] | None]:
        self.sent += 1
        body = {"address": f"http://127.0.0.1:{20000 + n}", "inventory": inventory(n)}
        for gpu in body["inventory"]["gpus"]:  # a real GPU's figures move between reports
            gpu["utilization_pct"] = (self.sent + gpu["index"]) % 101
            gpu["memory_used_mb"] = 1000 + self.sent % 1000
        return ("POST", "/api/agent/heartbeat", {**body, "replicas": []})

    def poll(self, n: int) -> tuple[str, str, dict[str, Any] | None]:
        return ("GET", "/api/agent/assignments?version=stale&wait=0", None)

    def create(self, n: int) -> tuple[str, str, dict[str, Any] | None]:
        self.created += 1
        return ("POST", f"/api/projects/{PROJECT}/workloads", workload_body(f"c-{self.created}"))

    def get(self, n: int) -> tuple[str, str, dict[str, Any] | None]:
        return ("GET", f"/api/workloads/{_kept(n)}", None)


def _kept(n: int) -> str:
    """The slug of the workload made for agent ``n`` before the rounds (for ``get``)."""
    return f"kept-{n}"


# Each kind of request by its --kinds name: its label and the method of Agents that sends it.
KINDS = {
    "delta": ("delta heartbeat", "delta"),
    "report": ("report, unchanged", "report"),
    "figures": ("report, new figures", "figures"),
    "poll": ("long-poll, answered", "poll"),
    "create": ("create a workload", "create"),
    "get": ("get a workload", "get"),
}
# What runs without --kinds: the agent protocol's requests.
DEFAULT_KINDS = ("delta", "report", "figures", "poll")
PROJECT = "bench"


async def register(base_url: str, admin_token: str, agents: int, kept: bool) -> Agents:
    """The workers, each after its first full heartbeat; with ``kept``, a workload per agent
    for ``get``."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        created = await client.post("/api/admin/projects", json={"slug": PROJECT}, headers=admin)
        created.raise_for_status()
        sdk = await client.post("/api/admin/tokens", json={"project": PROJECT}, headers=admin)
        sdk.raise_for_status()
        sdk_token = sdk.json()["token"]
        tokens = []
        for n in range(agents):
            worker = await client.post(
                "/api/admin/workers", json={"project": PROJECT, "name": f"w{n}"}, headers=admin
            )
            worker.raise_for_status()
            tokens.append(worker.json()["token"])
        registered = Agents(tokens, sdk_token)
        for n, token in enumerate(tokens):
            method, path, body = registered.report(n)
            answer = await client.request(
                method, path, json=body, headers={"Authorization": f"Bearer {token}"}
            )
            answer.raise_for_status()
            if not kept:
                continue
            made = await client.post(
                f"/api/projects/{PROJECT}/workloads",
                json=workload_body(_kept(n)),
                headers={"Authorization": f"Bearer {sdk_token}"},
            )
            made.raise_for_status()
        return registered


async def send_all(
    base_url: str,
    agents: Agents,
    request: Callable[[int], tuple[str, str, dict[str, Any] | None]],
    rounds: int,
    concurrency: int,
) -> tuple[int, float]:
    """Every agent's request ``rounds`` times, ``concurrency`` in flight; (answers, seconds)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        jobs = [n for _ in range(rounds) for n in range(len(agents.tokens))]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in jobs:
            queue.put_nowait(n)
        failures: list[str] = []
        done = [0]
        started = time.monotonic()

        async def worker() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                method, path, body = request(n)
                try:
                    answer = await client.request(
                        method,
                        path,
                        json=body,
                        headers={"Authorization": f"Bearer {agents.token(n, path)}"},
                    )
                except httpx.TransportError as error:
                    failures.append(
                        f"{method} {path} {base_url}: {error!r} after "
                        f"{time.monotonic() - started:.2f} s, {done[0]} answered before it"
                    )
                    continue
                done[0] += 1
                if not answer.is_success:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, the first: {failures[0]}")
    return len(jobs), elapsed


async def backend_pids(pool: asyncpg.Pool, database: str) -> list[int]:
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    return [row["pid"] for row in rows]


def backends_cpu_s(pids: list[int]) -> dict[int, float] | None:
    """CPU seconds so far of each of these Postgres backends that /proc shows; None where
    Postgres runs out of its sight (another host or container)."""
    seen: dict[int, float] = {}
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
                continue  # the id is another process's: Postgres is not here
        except OSError:
            continue
        used = process_cpu_s(pid)
        if used is not None:
            seen[pid] = used
    return seen or None


def backends_delta_s(
    before: dict[int, float] | None, after: dict[int, float] | None
) -> float | None:
    """The CPU the backends alive at both readings used between them (one that came or went
    meanwhile is left out: its share is lost, never counted twice or negative)."""
    if before is None or after is None:
        return None
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


async def measure(
    args: argparse.Namespace,
    manager_url: str,
    manager_pid: int,
    peer_url: str,
    peer_pid: int,
    database_url: str,
    admin_token: str,
) -> list[Figure]:
    agents = await register(manager_url, admin_token, args.agents, "get" in args.kinds)
    database = database_url.rsplit("/", 1)[1]
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    kinds: list[tuple[str, Callable[[int], tuple[str, str, dict[str, Any] | None]]]] = [
        (label, getattr(agents, method)) for label, method in (KINDS[k] for k in args.kinds)
    ]
    figures = []
    print(f"Manager {manager_url}, bare server {peer_url}", file=sys.stderr)
    try:
        for kind, request in kinds:
            # A warm-up round each: connections opened, caches filled, statements prepared.
            await send_all(manager_url, agents, request, 1, args.concurrency)
            await send_all(peer_url, agents, request, 1, args.concurrency)
            pids = await backend_pids(pool, database)
            manager_before, db_before = cpu_s(manager_pid), backends_cpu_s(pids)
            sent, manager_wall = await send_all(
                manager_url, agents, request, args.rounds, args.concurrency
            )
            manager_cpu = cpu_s(manager_pid) - manager_before
            db_after = backends_cpu_s(pids)
            peer_before = cpu_s(peer_pid)
            _, peer_wall = await send_all(peer_url, agents, request, args.rounds, args.concurrency)
            peer_cpu = cpu_s(peer_pid) - peer_before
            postgres = backends_delta_s(db_before, db_after)
            figures.append(
                Figure(
                    kind=kind,
                    requests=sent,
                    manager_ms=1000 * manager_cpu / sent,
                    postgres_ms=None if postgres is None else 1000 * postgres / sent,
                    peer_ms=1000 * peer_cpu / sent,
                    manager_wall_s=manager_wall,
                    peer_wall_s=peer_wall,
                )
            )
    finally:
        await pool.close()
    return figures


def report(figures: list[Figure], args: argparse.Namespace) -> str:
    lines = [
        f"{args.agents} agents x {GPUS} GPUs, {args.rounds} rounds, {args.concurrency} in flight",
        "",
        f"{'request':<22}{'n':>7}{'Manager CPU':>14}{'its Postgres':>14}{'bare server':>14}"
        f"{'ratio':>8}{'Manager/s':>11}",
    ]
    for figure in figures:
        postgres = "n/a" if figure.postgres_ms is None else f"{figure.postgres_ms:.3f} ms"
        lines.append(
            f"{figure.kind:<22}{figure.requests:>7}{figure.manager_ms:>11.3f} ms{postgres:>14}"
            f"{figure.peer_ms:>11.3f} ms{figure.ratio:>7.1f}x"
            f"{figure.requests / figure.manager_wall_s:>11.0f}"
        )
    lines.append("")
    lines.append(
        "CPU per request from /proc (user + system); the ratio is the Manager's process against "
        "the bare server's, both on the same uvicorn and options."
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--kinds",
        default=",".join(DEFAULT_KINDS),
        help="which requests to send, of " + ", ".join(KINDS) + " (to profile one alone)",
    )
    args = parser.parse_args()
    args.kinds = args.kinds.split(",")
    if any(kind not in KINDS for kind in args.kinds):
        parser.error(f"--kinds: a comma-separated list of {', '.join(KINDS)}")
    admin_token = f"ik_admin_{secrets.token_hex(4)}_{secrets.token_hex(32)}"
    spawn = multiprocessing.get_context("spawn")
    with fresh_database() as database_url, tempfile.TemporaryDirectory() as data_dir:
        manager_port, peer_port = free_port(), free_port()
        manager = spawn.Process(
            target=serve_manager, args=(database_url, manager_port, admin_token, data_dir)
        )
        peer = spawn.Process(target=serve_peer, args=(peer_port, 220))
        manager.start()
        peer.start()
        try:
            manager_url, peer_url = (
                f"http://127.0.0.1:{manager_port}",
                f"http://127.0.0.1:{peer_port}",
            )
            wait_until_up(manager_url, manager)
            wait_until_peer(peer_url, peer)
            assert manager.pid is not None and peer.pid is not None
            figures = asyncio.run(
                measure(
                    args, manager_url, manager.pid, peer_url, peer.pid, database_url, admin_token
                )
            )
        finally:
            for process in (manager, peer):
                process.terminate()
                process.join(15)
                if process.is_alive():
                    process.kill()
                    process.join()
    print(report(figures, args))
    if args.json is not None:
        rows = [{**asdict(figure), "ratio": figure.ratio} for figure in figures]
        args.json.write_text(json.dumps(rows, indent=2))
        print(f"\nwrote {args.json}")
    return 0


def wait_until_peer(base_url: str, peer: Any) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and peer.is_alive():
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(base_url, timeout=2)
            return
        time.sleep(0.1)
    raise RuntimeError("the bare server did not start")


if __name__ == "__main__":
    raise SystemExit(main())
