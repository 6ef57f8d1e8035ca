"""What the async-jobs path costs: submit latency, and jobs per second against sync requests.

    python bench/jobs.py [--jobs 400]

It starts the same Manager + agent + instant upstream as ``bench/gateway.py`` (one replica of a
workload whose engine answers at once, so the platform is what is measured) and prints:

- submit latency, p50 and p99, of ``POST .../jobs`` sent one after another (target: p99 at
  most 20 ms on this machine): the time to validate the envelope and commit the job;
- jobs completed per second through the one replica, from the first submit to the last job
  done, against the same requests sent synchronously by as many concurrent clients as a Manager
  process runs jobs on a replica (``INFERENCEKEY_JOBS_PER_REPLICA``, 2). Target: at least 0.9 times.

Every job must succeed; the run fails otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
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
    with httpx.Client(headers=headers, timeout=60) as client:
        # The oldest are claimed first: checking from the newest back, each round stops at the
        # first job still unfinished, so the polling costs little while the jobs run.
        pending = list(job_ids)
        while pending:
            status = client.get(f"{base_url}/jobs/{pending[-1]}").json()["status"]
            if status in ("succeeded", "failed"):
                pending.pop()
            else:
                time.sleep(0.005)
    return count / (time.perf_counter() - started), job_ids


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
        path = shared.start_inferencekey_paths(upstream.base_url, servers, settings)[
            shared.TARGET_PATH
        ]
        base_url = path.base_url.rstrip("/")
        sync_rate(base_url, path.headers, 50, JOBS_PER_REPLICA)  # warm-up
        sync = sync_rate(base_url, path.headers, args.jobs, JOBS_PER_REPLICA)
        latencies, first_ids = submit_latencies(base_url, path.headers, args.jobs)
        rate, job_ids = jobs_rate(base_url, path.headers, args.jobs)
        attempts = check_all_succeeded(base_url, path.headers, first_ids + job_ids)
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    ratio = rate / sync
    print(f"submit latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms (n={len(latencies)})")
    submit_verdict = "met" if p99 <= SUBMIT_P99_TARGET_MS else "MISSED"
    print(f"  target p99 <= {SUBMIT_P99_TARGET_MS:g} ms: {submit_verdict}")
    print(f"sync, {JOBS_PER_REPLICA} concurrent clients: {sync:.0f} requests/s")
    print(f"async jobs through the same replica: {rate:.0f} jobs/s ({ratio:.2f}x sync)")
    verdict = "met" if ratio >= THROUGHPUT_TARGET else "MISSED"
    print(f"  target >= {THROUGHPUT_TARGET:g}x: {verdict}")
    spread = ", ".join(f"{n} in {k} attempt(s)" for k, n in sorted(attempts.items()))
    print(f"all {len(first_ids) + len(job_ids)} jobs succeeded: {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
