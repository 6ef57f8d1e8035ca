"""What the async-jobs path costs: submit latency, and jobs per second against sync requests.

    python bench/jobs.py [--jobs 400]

It starts the same Manager + agent + instant upstream as ``bench/gateway.py`` (one replica of a
workload whose engine answers at once, so the platform is what is measured) and prints:

- submit latency, p50 and p99, of ``POST .../jobs`` sent one after another (target: p99 at
  most 20 ms on this machine): the time to validate the envelope and commit the job;
- the replica's throughput for jobs: a backlog of jobs is queued while the replica is away
  (its agent paused until the Manager sees the worker not ready), then the agent resumes and
  the backlog drains; jobs per second from the first claim to the last result, against the
  same requests sent synchronously by as many concurrent clients as a Manager process runs
  jobs on a replica (``INFERENCEKEY_JOBS_PER_REPLICA``, 2). Target: at least 0.9 times;
- for reference, the end-to-end rate with submits included: SUBMITTERS concurrent clients
  submit while the jobs run, from the first submit to the last job done (each job costs a
  submit, a commit and a poll on top of its request, so this one is bounded by the submits).

Every job must succeed; the run fails otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import gateway as shared  # noqa: E402 (bench/gateway.py: the servers and the platform it starts)

CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
JOBS_PER_REPLICA = 2  # the Manager's default INFERENCEKEY_JOBS_PER_REPLICA
SUBMITTERS = 4  # concurrent clients submitting the jobs of the throughput run
SUBMIT_P99_TARGET_MS = 20.0
THROUGHPUT_TARGET = 0.9


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def sync_rate(base_url: str, headers: dict[str, str], count: int, clients: int) -> float:
    """Requests per second of ``count`` chat requests from ``clients`` concurrent clients."""
    left = list(range(count))
    lock = threading.Lock()
    failures: list[int] = []

    def client_loop() -> None:
        with httpx.Client(headers=headers, timeout=60) as client:
            while True:
                with lock:
                    if not left:
                        return
                    left.pop()
                answer = client.post(f"{base_url}/v1/chat/completions", json=CHAT)
                if answer.status_code != 200:
                    failures.append(answer.status_code)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise shared.BenchError(f"{len(failures)} sync requests failed: {failures[:5]}")
    return count / elapsed


def submit_latencies(
    base_url: str, headers: dict[str, str], count: int
) -> tuple[list[float], list[str]]:
    """Submit ``count`` chat jobs one after another: (latencies in ms, the job ids)."""
    latencies: list[float] = []
    job_ids: list[str] = []
    with httpx.Client(headers=headers, timeout=60) as client:
        for _ in range(count):
            sent = time.perf_counter()
            answer = client.post(f"{base_url}/jobs", json={"kind": "chat", "body": CHAT})
            latencies.append((time.perf_counter() - sent) * 1000)
            if answer.status_code != 202:
                raise shared.BenchError(f"submit: {answer.status_code} {answer.text}")
            job_ids.append(answer.json()["job_id"])
    return latencies, job_ids


def jobs_rate(base_url: str, headers: dict[str, str], count: int) -> tuple[float, list[str]]:
    """Jobs per second from the first submit to the last job done, ``count`` chat jobs submitted
    by SUBMITTERS concurrent clients (so that the replica, not one client's round trips, is
    what bounds the rate); and the job ids."""
    job_ids: list[str] = []
    failures: list[str] = []
    share = [count // SUBMITTERS + (1 if i < count % SUBMITTERS else 0) for i in range(SUBMITTERS)]

    def submitter(jobs: int) -> None:
        with httpx.Client(headers=headers, timeout=60) as client:
            for _ in range(jobs):
                answer = client.post(f"{base_url}/jobs", json={"kind": "chat", "body": CHAT})
                if answer.status_code != 202:
                    failures.append(f"{answer.status_code} {answer.text}")
                    return
                job_ids.append(answer.json()["job_id"])

    threads = [threading.Thread(target=submitter, args=(jobs,)) for jobs in share]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise shared.BenchError(f"submit: {failures[0]}")
    wait_all_done(base_url, headers, job_ids)
    return count / (time.perf_counter() - started), job_ids


def drain_rate(
    servers: shared.Servers, base_url: str, headers: dict[str, str], count: int
) -> tuple[float, list[str]]:
    """Jobs per second through the replica from a backlog of ``count`` jobs queued while its
    agent was paused; and the job ids."""
    agent = servers.processes["agent"]
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        # The Manager takes the replica out of its routes once the worker misses heartbeats:
        # a sync request is then a 503 at once.
        deadline = time.monotonic() + 60
        with httpx.Client(headers=headers, timeout=2) as client:
            while True:
                with contextlib.suppress(httpx.TimeoutException):
                    if client.post(f"{base_url}/v1/chat/completions", json=CHAT).status_code == 503:
                        break
                if time.monotonic() > deadline:
                    raise shared.BenchError("the Manager never saw the paused agent's worker")
                time.sleep(0.2)
        _, job_ids = submit_latencies(base_url, headers, count)
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    wait_all_done(base_url, headers, job_ids)
    with httpx.Client(headers=headers, timeout=60) as client:
        jobs = [client.get(f"{base_url}/jobs/{job_id}").json() for job_id in job_ids]
    first = min(datetime.fromisoformat(job["started_at"]) for job in jobs)
    last = max(datetime.fromisoformat(job["finished_at"]) for job in jobs)
    return count / (last - first).total_seconds(), job_ids


def wait_all_done(base_url: str, headers: dict[str, str], job_ids: list[str]) -> None:
    # The oldest are claimed first: checking from the newest back, each round stops at the
    # first job still unfinished, so the polling costs little while the jobs run.
    deadline = time.monotonic() + 300
    with httpx.Client(headers=headers, timeout=60) as client:
        pending = list(job_ids)
        while pending:
            status = client.get(f"{base_url}/jobs/{pending[-1]}").json()["status"]
            if status in ("succeeded", "failed"):
                pending.pop()
            elif time.monotonic() > deadline:
                raise shared.BenchError(f"job {pending[-1]} still {status} after 300 s")
            else:
                time.sleep(0.05)


def check_all_succeeded(
    base_url: str, headers: dict[str, str], job_ids: list[str]
) -> dict[int, int]:
    """Every job's end (each must have succeeded); how many took how many attempts."""
    attempts: dict[int, int] = {}
    with httpx.Client(headers=headers, timeout=60) as client:
        for job_id in job_ids:
            job = client.get(f"{base_url}/jobs/{job_id}").json()
            if job["status"] != "succeeded":
                raise shared.BenchError(f"job {job_id} ended {job['status']}: {job}")
            attempts[job["attempts"]] = attempts.get(job["attempts"], 0) + 1
    return attempts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400, help="jobs (and sync requests) per run")
    args = parser.parse_args()
    settings = shared.Settings(1.0, 3.0, 10, 10, 0.0, install=False)
    with (
        tempfile.TemporaryDirectory(prefix="ik-bench-jobs-") as work_dir,
        shared.Servers(Path(work_dir)) as servers,
    ):
        upstream = shared.start_upstream(servers, settings)
        # The paused agent's worker is out of the routes after two missed heartbeats.
        manager_env = {"INFERENCEKEY_WORKER_NOT_READY_AFTER_S": "2"}
        path = shared.start_inferencekey_paths(upstream.base_url, servers, settings, manager_env)[
            shared.TARGET_PATH
        ]
        base_url = path.base_url.rstrip("/")
        sync_rate(base_url, path.headers, 50, JOBS_PER_REPLICA)  # warm-up
        sync = sync_rate(base_url, path.headers, args.jobs, JOBS_PER_REPLICA)
        latencies, first_ids = submit_latencies(base_url, path.headers, args.jobs)
        wait_all_done(base_url, path.headers, first_ids)
        drained, drained_ids = drain_rate(servers, base_url, path.headers, args.jobs)
        end_to_end, job_ids = jobs_rate(base_url, path.headers, args.jobs)
        every = first_ids + drained_ids + job_ids
        attempts = check_all_succeeded(base_url, path.headers, every)
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    ratio = drained / sync
    print(f"submit latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms (n={len(latencies)})")
    submit_verdict = "met" if p99 <= SUBMIT_P99_TARGET_MS else "MISSED"
    print(f"  target p99 <= {SUBMIT_P99_TARGET_MS:g} ms: {submit_verdict}")
    print(f"sync, {JOBS_PER_REPLICA} concurrent clients: {sync:.0f} requests/s")
    print(f"async jobs draining a backlog through the same replica: {drained:.0f} jobs/s ", end="")
    print(f"({ratio:.2f}x sync)")
    verdict = "met" if ratio >= THROUGHPUT_TARGET else "MISSED"
    print(f"  target >= {THROUGHPUT_TARGET:g}x: {verdict}")
    print(
        f"end to end, {SUBMITTERS} clients submitting while jobs run: {end_to_end:.0f} jobs/s ",
        end="",
    )
    print(f"({end_to_end / sync:.2f}x sync)")
    spread = ", ".join(f"{n} in {k} attempt(s)" for k, n in sorted(attempts.items()))
    print(f"all {len(every)} jobs succeeded: {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
