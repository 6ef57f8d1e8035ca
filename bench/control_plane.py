"""The control plane at fleet scale: N agents and W workloads on K Managers sharing a database.

    python bench/control_plane.py [--agents 1000] [--workloads 10000] [--steady-s 60]
    python bench/control_plane.py --quick          # 50 agents, 300 workloads, 15 s steady
    python bench/control_plane.py --sizes 1000x1000,1000x3000,1000x10000 [--json out.json]
    python bench/control_plane.py --quick --managers 2 --kill-leader   # a little over 2 min

Per size it starts a real Manager (``python -m ik_command manager``) on a fresh database of the
local Postgres (``INFERENCEKEY_BENCH_DATABASE_SERVER``, default the tests' server), with a project,
an SDK token and N workers made through the admin API, and runs N simulated agents in one child
process (asyncio). Each agent reports 8 simulated GPUs (worker_agent.gpus.SimulatedInventory) and
speaks the agent protocol through the agent's own code (worker_agent/heartbeats.py): a heartbeat
at the interval the Manager's Assignments answer names and at once when something changed,
carrying the inventory and the observed replicas only when they changed, and the assignments
long-poll. An assigned replica is reported ``starting`` at once and ``ready`` (with a port)
``ENGINE_LOAD_S`` (1 s) after the Manager heard it starting; a replica no longer assigned is
dropped from the next report, sent at once.
Then, in phases:

- ``register``: the agents' first heartbeats, until every worker is ready;
- ``create``: W fixed-policy llama.cpp workloads through the control API, 32 in flight: the
  latency of each create and the sustained rate;
- ``converge``: from the burst's end until every workload is ready (polled in the database);
- ``steady``: S seconds in which one client each times the full list, a page of up to 1,000
  (walking the list a page at a time, from the first again after the last), a get, a create
  and a patch (a description change) at a fixed pace, and a rolling probe patches one
  workload's command every 0.5 s (round the last workloads in turn). "Change → effect" is the
  time from sending a probe's patch, or a create of the sampler, until the reconciler acted on
  it: a replica row of the workload at the change's generation (``replicas.generation``), polled in
  the database every 20 ms;
- ``handover`` (``--kill-leader``, with ``--managers`` 2 or more): a client creates a workload
  every 0.1 s through the Managers that are not leading, with the agents heartbeating; after 2 s
  the leading Manager is killed (SIGKILL). Its agents fail over to the next Manager in their list
  (as behind a load balancer: ``FailoverTransport``). Reported: the time from the kill until a
  surviving Manager holds the leader lock (polled every 20 ms), until the first create sent
  after the kill has a replica and until it is ready; and that nothing was lost: every create
  acknowledged in the run so far still exists, and every one of them reaches ready;
- ``change``: a fraction of the workloads patched to a new command (a rolling replacement) and as
  many deleted, 32 in flight; the time until the new replicas are ready and the old ones gone, and
  until the deleted workloads have no replica left;
- after the phases, the fleet stopped: every live workload's row is made a new version behind
  the Managers' backs (a plain UPDATE), then each serving Manager lists the workloads twice,
  written afresh and as kept: the list's own cost, beside its steady p99 under the fleet; and
  every page is read in turn, as the SDK's ``iter_workloads(page_size=1000)`` does.

``--managers K`` starts K Managers on the one database, each with its own port and metrics
address; agent i talks to Manager i % K (then to the others in turn, should it fail), and the
control-API clients take the Managers in turn. The leader is found in Postgres: the backend
holding the reconciler's advisory lock (``manager.reconciler.LEADER_LOCK_KEY`` in ``pg_locks``),
whose client port is matched to a Manager's socket in ``/proc`` (or, where Postgres is not local,
the last Manager to log that it leads).

Each phase reports the Managers' CPU (``/proc/<pid>/stat``, their own processes only: the agents run
in another) and RSS, each Manager's and their sum, which one leads, the CPU of the Postgres backends
serving them (``pg_stat_activity`` pids read in ``/proc``), heartbeat latency as the agents timed
it, and from the Managers' histograms (scraped from each one's ``INFERENCEKEY_METRICS_ADDRESS``
twice a second) the reconcile passes, the time a heartbeat and each timed API call spent in the
Manager (from its first layer to the answer's last byte) and how late its event loop ran: what of
the figures the clients saw is the Manager's, and what is the wait before a request is read or the
simulated fleet's own lag. It also reads how long the busiest Manager process's event loop ran and
waited for a core (``/proc/<pid>/schedstat``: runnable, not run), the whole machine's busy cores and
the share the host took (``/proc/stat``), and the share of the time some task waited for a core
(``/proc/pressure/cpu``): on two cores shared with the simulated fleet and Postgres, a loop that
runs half the time can wait for a core for a good part of that again. Every answer is counted by
endpoint and status. The table puts the issue's targets beside the figures, and a last line per size
says what bounded each phase (the machine's cores all busy, a Manager's processes at their cores,
its busiest process runnable most of the phase though waiting for a core for part of it, Postgres,
or the agents' database slots or the API's turns, from how long they were waited for; else the turns
of the busiest process's event loop, with how much of the phase it was occupied, how long turns were
waited for and how late it ran). Then each missed target with its phase's bound, and what the run
measured beside it: for the fleet's heartbeat p99, the fleet's own loop lag and the lone agent's
p99; for the list's, the list written with the fleet stopped. ``--json`` writes every figure.
``--fleet-nice N`` runs the simulated fleet N nicer: it stands for a thousand other machines, and so
gives way for the two cores to the Manager and Postgres (its own figures then show what it waited).
``--manager-env INFERENCEKEY_X=Y`` adds a Manager setting, for trying one (the defaults are what is
measured otherwise: e.g. the 2,048 connections of ``INFERENCEKEY_HTTP_MAX_CONNECTIONS``, which 1,000
agents' two connections each come near). The Managers are stopped and the database dropped when a
size ends, Ctrl-C included. Run it from the repository root with the project installed (``pip
install -e .``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import random
import resource
import secrets
import signal
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from gateway import BenchError, Servers, free_port, wait_until_ready
from inferencekey.wire import MAX_WORKLOAD_PAGE_SIZE, CreateWorkloadRequest, UpdateWorkloadRequest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from ik_contracts.engines import engine_for
from ik_contracts.protocol import MAX_WAIT_S, Assignments, Heartbeat, ReplicaState
from manager.app import settle_collector
from manager.reconciler import LEADER_LOCK_KEY
from worker_agent import __version__ as AGENT_VERSION
from worker_agent.config import DEFAULT_PORT_RANGE
from worker_agent.gpus import SimulatedInventory
from worker_agent.heartbeats import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    HEARTBEAT_BACKOFF_CAP_S,
    MANAGER_CONNECTION_LIMITS,
    WATCH_BACKOFF_CAP_S,
    WATCH_RETRY_S,
    Backoff,
    HeartbeatReports,
    retry_after_s,
    was_shed,
)
from worker_agent.replicas import LocalReplica

DATABASE_SERVER = os.environ.get(
    "INFERENCEKEY_BENCH_DATABASE_SERVER",
    os.environ.get(
        "INFERENCEKEY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    ),
)
PROJECT = "bench"
GPUS_PER_AGENT = 8
# Agents take these in turn, 8 of one kind each, as a mixed fleet would have them.
GPU_KINDS = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S", "NVIDIA L4")
# A real 7B Q4_K_M file, reported in every agent's model files so that placement claims GPU
# memory by its size, as it would on a fleet where the model is on disk.
MODEL_NAME = "qwen2.5-7b-instruct"
MODEL_FILE = "/models/qwen2.5-7b-instruct-q4_k_m.gguf"
MODEL_FILE_BYTES = 4_683_073_536
COMMAND = f"llama-server -m {MODEL_FILE} --ctx-size 4096"
CHANGED_COMMAND = f"llama-server -m {MODEL_FILE} --ctx-size 8192"
ENGINE_PORTS_START = DEFAULT_PORT_RANGE[0]  # the agent's default engine range
# What the agent waits before it has the Manager's answer, and its retries (the agent's own).
AGENT_DEFAULT_INTERVAL_S = DEFAULT_HEARTBEAT_INTERVAL_S
ENGINE_LOAD_S = 1.0  # a simulated engine's load time, from its "starting" report to ready
# In the steady phase one more agent, alone in a process of its own as a real agent is on its
# machine, sends worker 0's delta heartbeat this often: the heartbeat's latency without the
# simulated fleet's own event loop in it (a thousand agents share that one).
LONE_AGENT_PERIOD_S = 0.2
AGENT_HEARTBEAT_BACKOFF_CAP_S = HEARTBEAT_BACKOFF_CAP_S
AGENT_WATCH_RETRY_S = WATCH_RETRY_S
AGENT_WATCH_BACKOFF_CAP_S = WATCH_BACKOFF_CAP_S
CREATE_CONCURRENCY = 32
ADMIN_CONCURRENCY = 16
# The steady state's sampler: one client per operation, one request at a time, at this pace.
# "rolling" patches a workload's command: the probe of "change → effect", with the creates.
# "page" walks the list a page of PAGE_SIZE at a time (the API's and SDK's paginated listing),
# one page a turn, from the first again after the last.
SAMPLE_PERIODS_S = {
    "list": 1.0,
    "page": 1.0,
    "get": 0.1,
    "create": 0.5,
    "patch": 0.2,
    "rolling": 0.5,
}
PAGE_SIZE = MAX_WORKLOAD_PAGE_SIZE
ROLLING_PROBE_WORKLOADS = 20  # the last ones, out of the way of the change phase's first ones
EFFECT_POLL_S = 0.02
# The handover: creates through the surviving Managers at this pace, the kill after a while of
# it, and creates on for a while after a survivor leads.
HANDOVER_CREATE_PERIOD_S = 0.1
HANDOVER_BEFORE_KILL_S = 2.0
HANDOVER_AFTER_LEAD_S = 3.0
HANDOVER_TARGET_S = 5.0
MONITOR_PERIOD_S = 0.5
POLL_S = 0.5
LOOP_LAG_PERIOD_S = 0.05
MONITOR_APP = "ik-bench-monitor"  # application_name of our own connections, left out of DB CPU
RECONCILE_HISTOGRAM = "inferencekey_reconcile_pass_duration_seconds"
# Time spent in the Manager (from its first layer to the answer's last byte), and how late its
# event loop ran: what of a figure seen by the fleet or the API client is the Manager's.
HEARTBEAT_HISTOGRAM = "inferencekey_agent_heartbeat_duration_seconds"
LOOP_LAG_HISTOGRAM = "inferencekey_event_loop_lag_seconds"
API_HISTOGRAM = "inferencekey_api_request_duration_seconds"
GC_HISTOGRAM = "inferencekey_gc_pause_seconds"  # by generation: "gc 0", "gc 1", "gc 2"
# Waits for a turn (manager/admission.py), by kind: "wait agent", "wait heartbeat", "wait api".
ADMISSION_HISTOGRAM = "inferencekey_admission_wait_seconds"
ADMISSION_KINDS = ("agent", "heartbeat", "api")
# How long the turns given were held (kinds "agent" and "api"): "hold agent", "hold api".
ADMISSION_HOLD_HISTOGRAM = "inferencekey_admission_hold_seconds"
# Connections the kernel holds for a Manager that it has not taken yet (manager/accept_queue.py):
# requests there are neither served nor shed, and no histogram sees them.
ACCEPT_QUEUE_GAUGE = "inferencekey_accept_queue_connections"
HISTOGRAM_KEYS = {
    RECONCILE_HISTOGRAM: "reconcile",
    HEARTBEAT_HISTOGRAM: "heartbeat",
    LOOP_LAG_HISTOGRAM: "loop_lag",
}
# The API calls the steady phase times, by the route template the Manager labels them with.
API_ROUTES = {
    "list": ("GET", "/api/projects/{project}/workloads"),
    "get": ("GET", "/api/workloads/{workload_ref}"),
    "create": ("POST", "/api/projects/{project}/workloads"),
    "patch": ("PATCH", "/api/workloads/{workload_ref}"),
}
# The monitor reads the Managers' metrics every MONITOR_PERIOD_S, and only these histograms
# (prometheus_client's name[] filter): the whole page (a series per worker, and per route and
# status) cost a Manager about 6% of a core at 1,000 agents when read twice a second, in a
# thread holding the GIL while its event loop waited; Prometheus reads it every 15 s or so.
HISTOGRAMS_ONLY = (
    "&".join(
        f"name[]={name}{part}"
        for name in (
            *HISTOGRAM_KEYS,
            API_HISTOGRAM,
            GC_HISTOGRAM,
            ADMISSION_HISTOGRAM,
            ADMISSION_HOLD_HISTOGRAM,
        )
        for part in ("_bucket", "_count", "_sum")
    )
    + f"&name[]={ACCEPT_QUEUE_GAUGE}"
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

READY_QUERY = """
SELECT id FROM workloads
WHERE id = ANY($1::text[]) AND phase = 'ready'
  AND desired_replicas > 0 AND ready_replicas >= desired_replicas
"""
# Rolled: as many ready replicas of the new command as wanted, and none of anything else left.
ROLLED_QUERY = """
SELECT w.id FROM workloads w
WHERE w.id = ANY($1::text[]) AND w.phase = 'ready' AND w.desired_replicas > 0
  AND (SELECT count(*) FROM replicas r
       WHERE r.workload_id = w.id AND r.state = 'ready' AND r.spec->>'command' = $2)
      >= w.desired_replicas
  AND NOT EXISTS (SELECT 1 FROM replicas r
                  WHERE r.workload_id = w.id AND r.spec->>'command' IS DISTINCT FROM $2)
"""
GONE_QUERY = """
SELECT t.id FROM unnest($1::text[]) AS t(id)
WHERE NOT EXISTS (SELECT 1 FROM replicas r WHERE r.workload_id = t.id)
"""
BACKENDS_QUERY = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND application_name IS DISTINCT FROM $1
"""
# The backend holding the reconciler's leader lock: a bigint advisory key shows as its high and
# low 32 bits in classid and objid, with objsubid 1.
LEADER_QUERY = """
SELECT a.pid, a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1 AND l.objid = $2
  AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
# A change took effect once the reconciler wrote a replica at its generation.
EFFECT_QUERY = """
SELECT workload_id AS id, max(generation) AS generation FROM replicas
WHERE workload_id = ANY($1::text[]) GROUP BY workload_id
"""
LIVE_QUERY = """
SELECT id FROM workloads WHERE id = ANY($1::text[]) AND deleted_at IS NULL
"""
STATEMENTS_QUERY = """
SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclass(frozen=True)
class Settings:
    sizes: tuple[tuple[int, int], ...]
    steady_s: float
    change_fraction: float
    heartbeat_interval_s: float | None
    manager_env: dict[str, str]
    managers: int = 1
    kill_leader: bool = False
    # Added to the simulated fleet's niceness: the fleet stands for a thousand other machines,
    # and at a positive value it gives way for the cores to the Manager and Postgres.
    fleet_nice: int = 0


# ---------------------------------------------------------------------------------------------
# Figures


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank: the value below which a share ``q`` of them lie."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Latency:
    count: int
    p50: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values: list[float]) -> Latency:
        top = max(values) if values else None
        return cls(len(values), percentile(values, 0.5), percentile(values, 0.99), top)


@dataclass(frozen=True)
class HistogramValue:
    count: float
    total_s: float
    buckets: tuple[tuple[float, float], ...]  # (le, cumulative count), ascending


@dataclass
class ReconcileFigures:
    """Passes in a phase, from the histogram's increase between the phase's scrapes."""

    passes: int
    p50_s: float | None  # interpolated within its bucket
    mean_s: float | None
    # The slowest scrape interval's mean pass: exact where it held one pass (most do at 0.5 s).
    max_s: float | None
    max_bucket_le: float | None  # the slowest pass is at most this (a bucket bound)
    over_1s: int  # passes over 1 s, exact (1 s is a bucket bound)


@dataclass
class ManagerSample:
    cpu_s: float  # its last reading once it is gone
    rss_mb: float  # 0 once it is gone
    # Each live process's own CPU by pid (the supervisor's, and its serving and reconciler
    # processes' under INFERENCEKEY_PROCESSES or INFERENCEKEY_RECONCILER_PROCESS)
    process_cpu_s: dict[int, float] = field(default_factory=dict)
    # "reconcile", "heartbeat", "loop_lag", and "METHOD /route" of the API's; empty once gone
    histograms: dict[str, HistogramValue] = field(default_factory=dict)
    accept_queue: float | None = None  # ACCEPT_QUEUE_GAUGE, as last sampled by the Manager
    # Each live process's main thread (its event loop's): seconds on a core, seconds waited
    # for one, and how many times it ran
    process_loop_times: dict[int, tuple[float, float, int]] = field(default_factory=dict)

    @property
    def reconcile(self) -> HistogramValue | None:
        return self.histograms.get("reconcile")


@dataclass
class Sample:
    t: float
    managers: list[ManagerSample]
    leader: int | None  # the index of the Manager holding the leader lock
    agents_cpu_s: float | None
    db_cpu_s: float | None
    db_exec_ms: float | None
    driver_cpu_s: float | None = None  # the bench's own process: the clients, this monitor
    # The machine's CPU ticks (/proc/stat), and seconds in which some runnable task waited for
    # a core (/proc/pressure/cpu)
    machine_ticks: MachineTicks | None = None
    cpu_pressure_s: float | None = None

    @property
    def manager_cpu_s(self) -> float:
        return sum(m.cpu_s for m in self.managers)

    @property
    def manager_rss_mb(self) -> float:
        return sum(m.rss_mb for m in self.managers)


@dataclass
class ManagerPhase:
    name: str
    cpu_s: float
    rss_mb: float  # at the phase's end


@dataclass
class PhaseFigures:
    name: str
    wall_s: float
    manager_cpu_s: float  # all the Managers together
    manager_rss_mb: float
    agents_cpu_s: float | None
    db_cpu_s: float | None
    db_exec_ms: float | None
    heartbeat_ms: Latency
    agent_loop_lag_p99_ms: float | None
    reconcile: ReconcileFigures | None
    errors: int
    workers_by_state: dict[str, int]
    # In the Managers, from their histograms (interpolated within a bucket): heartbeat p50 and
    # p99, their event loops' lag p99, and the steady API calls' p99 by kind.
    manager_heartbeat_ms: tuple[float | None, float | None] = (None, None)
    manager_loop_lag_p99_ms: float | None = None
    manager_api_p99_ms: dict[str, float | None] = field(default_factory=dict)
    # The Managers' garbage collections in the phase: seconds in all of them, and how many
    # full (generation 2) ones, with the longest's bucket bound.
    gc_s: float | None = None
    gc_full: int | None = None
    gc_full_max_le_ms: float | None = None
    # Waits for a turn in the Managers, by kind (ADMISSION_KINDS): how many turns were taken
    # or shed, and the wait's p50 and p99 (ms).
    admission_waits: dict[str, tuple[int, float | None, float | None]] = field(default_factory=dict)
    # The turns given, by kind ("agent", "api"): how many, and how long held, p50 and p99 (ms)
    admission_holds: dict[str, tuple[int, float | None, float | None]] = field(default_factory=dict)
    managers: list[ManagerPhase] = field(default_factory=list)
    leaders: list[str] = field(default_factory=list)  # in the order they led in the phase
    # The busiest single Manager process's CPU (cores): each runs its event loop on one core
    busiest_process_cores: float | None = None
    # Connections waiting for the Managers to take them (all Managers' together), median and
    # most over the phase's samples
    accept_queue: tuple[float | None, float | None] = (None, None)
    # The busiest Manager process's event loop (its main thread): the share of the phase it ran
    # on a core, the share it waited for one (runnable, not run), and ms a wait on average
    loop_time: tuple[float | None, float | None, float | None] = (None, None, None)
    # Every process on the machine together (cores), not only those the bench knows of
    machine_cores: float | None = None
    driver_cpu_s: float | None = None  # the bench's own process (its clients and monitor)
    steal_share: float | None = None  # of the machine's CPU time, taken by the host
    cpu_pressure_share: float | None = None  # of the phase's time, some task waited for a core


@dataclass
class SizeResult:
    agents: int
    workloads: int
    managers: int = 1
    processes: int = 1  # of each Manager (INFERENCEKEY_PROCESSES)
    heartbeat_interval_s: float | None = None
    phases: list[PhaseFigures] = field(default_factory=list)
    figures: dict[str, float | None] = field(default_factory=dict)
    latencies: dict[str, Latency] = field(default_factory=dict)
    # endpoint -> "ok" | "500" | "503" | "other" | "transport" -> count; agents' and ours
    answers: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    manager_log: dict[str, Any] = field(default_factory=dict)


class Answers:
    """Every answer by endpoint and status (or the transport error's name)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, endpoint: str, outcome: str) -> None:
        self.counts[(endpoint, outcome)] += 1

    def errors(self) -> int:
        return sum(n for (_, outcome), n in self.counts.items() if not outcome.startswith("2"))


# ---------------------------------------------------------------------------------------------
# The simulated agents (one child process)


class FleetRecord:
    """What the agents saw since the driver last asked."""

    def __init__(self) -> None:
        self.heartbeats: list[tuple[float, float]] = []  # (monotonic start, ms) of 2xx answers
        self.loop_lag_ms: list[float] = []
        self.answers: Counter[tuple[str, str]] = Counter()
        self.interval_s: float | None = None
        self.failovers = 0  # agents that moved to their next Manager

    def collect(self) -> dict[str, Any]:
        taken = {
            "heartbeats": self.heartbeats,
            "loop_lag_ms": self.loop_lag_ms,
            "answers": [[*key, n] for key, n in self.answers.items()],
            "interval_s": self.interval_s,
            "failovers": self.failovers,
        }
        self.heartbeats, self.loop_lag_ms, self.answers = [], [], Counter()
        self.failovers = 0
        return taken


def simulated_inventory(index: int) -> dict[str, Any]:
    """What an agent with 8 GPUs of one kind reports, as the agent builds it."""
    kind = GPU_KINDS[index % len(GPU_KINDS)]
    source = SimulatedInventory(f"{GPUS_PER_AGENT}x{kind}", seed=f"bench-agent-{index}")
    inventory = source.snapshot().to_wire()
    inventory["hostname"] = f"gpu-host-{index:04d}"
    inventory["model_files"] = {MODEL_FILE: MODEL_FILE_BYTES}
    return inventory


class SimulatedAgent:
    """One worker's agent: worker_agent/agent.py's heartbeat and watch loops, with engines that
    become ready ``ENGINE_LOAD_S`` after the Manager heard they were starting.

    It speaks the protocol through the agent's own code (worker_agent/heartbeats.py): each
    heartbeat carries the inventory and the replicas only when they changed since the last one
    acknowledged (and in full every minute); a failed request is retried after the Manager's
    Retry-After, else with jittered exponential backoff.

    Like the real agent it heartbeats on the interval and at once when its replica set or a
    replica's state changed, so a change travels without waiting for the next beat.
    """

    def __init__(
        self,
        index: int,
        token: str,
        base_url: str,
        tls: ssl.SSLContext,
        record: FleetRecord,
    ) -> None:
        self.record = record
        self.inventory = simulated_inventory(index)
        self.address = agent_address(index)
        # As the agent builds its client (worker_agent/agent.py, Agent.__init__). One TLS context
        # for all: each client would otherwise load the CA bundle again.
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": f"inferencekey-agent/{AGENT_VERSION}",
            },
            timeout=httpx.Timeout(10.0, read=MAX_WAIT_S + 10.0),
            limits=MANAGER_CONNECTION_LIMITS,
            verify=tls,
            trust_env=False,
        )
        self.desired: Assignments | None = None
        self.replicas: dict[str, LocalReplica] = {}
        self.ports = itertools.count(ENGINE_PORTS_START)
        self.reports = HeartbeatReports()
        self.changed = asyncio.Event()  # something to report now, as the agent's _changed

    def heartbeat_body(self) -> dict[str, Any]:
        return self.reports.body(
            agent_version=AGENT_VERSION,
            address=self.address,
            inventory=self.inventory,
            replicas=[replica.observed() for replica in self.replicas.values()],
            desired_version=self.desired.version if self.desired else None,
        )

    def accept(self, answer: Assignments) -> None:
        self.record.interval_s = answer.heartbeat_interval_s
        if self.desired is not None and answer.version == self.desired.version:
            return
        self.desired = answer
        wanted = {assignment.id: assignment for assignment in answer.replicas}
        for replica_id in [r for r in self.replicas if r not in wanted]:
            del self.replicas[replica_id]  # stopped: gone from the next report
            self.changed.set()
        for replica_id, assignment in wanted.items():
            if replica_id not in self.replicas:
                self.changed.set()
                engine = engine_for(assignment.backend, assignment.custom_backend)
                self.replicas[replica_id] = LocalReplica(
                    assignment,
                    engine,
                    next(self.ports),
                    state=ReplicaState.STARTING,
                    reason="engine launched; loading the model",
                )

    async def heartbeat_once(self) -> BaseException | None:
        """One heartbeat; None when the Manager took it, else what went wrong."""
        self.changed.clear()  # before the body: a change while it is in flight is sent next
        body = self.heartbeat_body()
        reported_starting = [r for r in self.replicas.values() if r.state == ReplicaState.STARTING]
        started = time.monotonic()
        try:
            response = await self.http.post("/api/agent/heartbeat", json=body)
        except httpx.HTTPError as error:
            self.record.answers[("heartbeat", type(error).__name__)] += 1
            return error
        elapsed_ms = (time.monotonic() - started) * 1000
        self.record.answers[("heartbeat", str(response.status_code))] += 1
        try:
            response.raise_for_status()
            answer = Assignments.model_validate_json(response.content)
        except httpx.HTTPStatusError as error:
            return error
        except ValueError as error:
            self.record.answers[("heartbeat", "invalid answer")] += 1
            return error
        self.record.heartbeats.append((started, elapsed_ms))
        loop = asyncio.get_running_loop()
        for replica in reported_starting:
            loop.call_later(ENGINE_LOAD_S, self._loaded, replica)
        self.reports.acknowledged()
        self.accept(answer)
        return None

    def _loaded(self, replica: LocalReplica) -> None:
        if self.replicas.get(replica.assignment.id) is replica and (
            replica.state == ReplicaState.STARTING
        ):
            replica.state, replica.reason = ReplicaState.READY, None
            self.changed.set()

    async def heartbeat_loop(self, first_delay_s: float) -> None:
        # The first body is checked against the protocol's model once: what we send is valid.
        Heartbeat.model_validate(
            HeartbeatReports().body(
                agent_version=AGENT_VERSION,
                address=self.address,
                inventory=self.inventory,
                replicas=[],
            )
        )
        await asyncio.sleep(first_delay_s)
        backoff = Backoff(AGENT_HEARTBEAT_BACKOFF_CAP_S)
        while True:
            interval = (
                self.desired.heartbeat_interval_s if self.desired else AGENT_DEFAULT_INTERVAL_S
            )
            error = await self.heartbeat_once()
            if error is None:
                backoff.reset()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), interval)
            else:
                self.reports.failed(shed=was_shed(error))
                await asyncio.sleep(backoff.failed(interval, retry_after_s(error)))

    async def watch_loop(self) -> None:
        backoff = Backoff(AGENT_WATCH_BACKOFF_CAP_S)
        while True:
            if self.desired is None:
                await asyncio.sleep(0.2)
                continue
            try:
                response = await self.http.get(
                    "/api/agent/assignments",
                    params={"version": self.desired.version, "wait": MAX_WAIT_S - 5},
                )
            except httpx.HTTPError as error:
                self.record.answers[("assignments", type(error).__name__)] += 1
                await asyncio.sleep(backoff.failed(AGENT_WATCH_RETRY_S))
                continue
            self.record.answers[("assignments", str(response.status_code))] += 1
            try:
                response.raise_for_status()
                answer = Assignments.model_validate_json(response.content)
            except (httpx.HTTPError, ValueError) as error:
                await asyncio.sleep(backoff.failed(AGENT_WATCH_RETRY_S, retry_after_s(error)))
                continue
            backoff.reset()
            self.accept(answer)


class FailoverTransport(httpx.AsyncBaseTransport):
    """What a load balancer in front of the Managers does for an agent: each request goes to the
    current Manager; one that refuses the connection or drops it is left for the next in the
    list, and the request is sent there at once (the agent protocol's calls are idempotent)."""

    def __init__(self, base_urls: list[str], tls: ssl.SSLContext, record: FleetRecord) -> None:
        self.targets = [httpx.URL(url) for url in base_urls]
        self.current = 0
        self.record = record
        self.inner = httpx.AsyncHTTPTransport(verify=tls, limits=MANAGER_CONNECTION_LIMITS)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(len(self.targets)):
            target = self.targets[self.current]
            request.url = request.url.copy_with(
                scheme=target.scheme, host=target.host, port=target.port
            )
            request.headers["Host"] = target.netloc.decode("ascii")
            try:
                return await self.inner.handle_async_request(request)
            except (httpx.NetworkError, httpx.RemoteProtocolError):
                if attempt == len(self.targets) - 1:
                    raise
                self.current = (self.current + 1) % len(self.targets)
                self.record.failovers += 1
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def aclose(self) -> None:
        await self.inner.aclose()


class FailoverAgent(SimulatedAgent):
    """An agent with several Managers behind one address: the first of ``base_urls`` is its own,
    the others take over in turn when it goes (FailoverTransport)."""

    def __init__(
        self,
        index: int,
        token: str,
        base_urls: list[str],
        tls: ssl.SSLContext,
        record: FleetRecord,
    ) -> None:
        super().__init__(index, token, base_urls[0], tls, record)
        # The agent's own client again, over the failover transport (it has opened nothing yet).
        built = self.http
        self.http = httpx.AsyncClient(
            base_url=built.base_url,
            headers=built.headers,
            timeout=built.timeout,
            transport=FailoverTransport(base_urls, tls, record),
            trust_env=False,
        )


def fleet_agent(
    index: int, token: str, base_urls: list[str], tls: ssl.SSLContext, record: FleetRecord
) -> SimulatedAgent:
    """Agent ``index`` of the fleet: its Manager is ``index % K``, then the next ones."""
    if len(base_urls) == 1:
        return SimulatedAgent(index, token, base_urls[0], tls, record)
    first = index % len(base_urls)
    return FailoverAgent(index, token, base_urls[first:] + base_urls[:first], tls, record)


async def _measure_loop_lag(record: FleetRecord) -> None:
    """How late the agents' event loop wakes: client-side delay inside each heartbeat figure."""
    while True:
        started = time.monotonic()
        await asyncio.sleep(LOOP_LAG_PERIOD_S)
        record.loop_lag_ms.append((time.monotonic() - started - LOOP_LAG_PERIOD_S) * 1000)


async def _serve_fleet(
    base_urls: list[str], tokens: list[str], interval_hint_s: float, connection: Connection
) -> None:
    record = FleetRecord()
    tls = ssl.create_default_context()
    agents = [
        fleet_agent(index, token, base_urls, tls, record) for index, token in enumerate(tokens)
    ]
    # A thousand agents in one process make garbage as a busy server does, and at Python's
    # default thresholds the Manager's collector paused its loop for 100-280 ms every few
    # seconds: pauses no real agent, alone on its machine, has, yet counted in the heartbeat
    # figures. Tuned as the Manager tunes its own (manager.app.settle_collector); at 1000 x 10
    # the steady heartbeat p99 went from 277 to 155 ms with it (one run each).
    settle_collector()
    tasks = [asyncio.create_task(_measure_loop_lag(record))]
    for agent in agents:
        # Spread over one interval, as agents started at different times would be.
        tasks.append(asyncio.create_task(agent.heartbeat_loop(random.uniform(0, interval_hint_s))))
        tasks.append(asyncio.create_task(agent.watch_loop()))
    loop = asyncio.get_running_loop()
    try:
        while True:
            command = await loop.run_in_executor(None, _receive, connection)
            if command != "collect":
                break
            connection.send(record.collect())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(agent.http.aclose() for agent in agents), return_exceptions=True)
        with contextlib.suppress(OSError):
            connection.send("stopped")


def _receive(connection: Connection) -> object:
    try:
        return connection.recv()
    except (EOFError, OSError):
        return None  # the driver is gone: stop


def agent_address(index: int) -> str:
    return f"http://127.0.0.1:{20000 + index}"


def run_lone_agent(base_url: str, token: str, seconds: float, connection: Connection) -> None:
    """Child process: agent 0's delta heartbeat (its lease renewed, nothing changed) every
    ``LONE_AGENT_PERIOD_S`` for ``seconds``, as the agent sends it; sends back the milliseconds
    each answered one took."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connection.send(asyncio.run(_lone_agent(base_url, token, seconds)))


async def _lone_agent(base_url: str, token: str, seconds: float) -> list[float]:
    body = {"agent_version": AGENT_VERSION, "address": agent_address(0)}
    timings: list[float] = []
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={
            "Authorization": f"Bearer {token}",
            "User-Agent": f"inferencekey-agent/{AGENT_VERSION}",
        },
        timeout=10.0,
        limits=MANAGER_CONNECTION_LIMITS,
        trust_env=False,
    ) as http:
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            started = time.monotonic()
            with contextlib.suppress(httpx.HTTPError):
                response = await http.post("/api/agent/heartbeat", json=body)
                if response.is_success:
                    timings.append((time.monotonic() - started) * 1000)
            await asyncio.sleep(max(0.0, LONE_AGENT_PERIOD_S - (time.monotonic() - started)))
    return timings


def spawned(
    target: Callable[..., None], args: tuple[Any, ...], name: str
) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    """``target(*args, connection)`` started in a new interpreter (spawn: nothing of the
    driver's state, its event loop included, is inherited), and the driver's end of the pipe."""
    context = multiprocessing.get_context("spawn")
    connection, child_end = context.Pipe()
    process = context.Process(target=target, args=(*args, child_end), name=name, daemon=True)
    process.start()
    child_end.close()
    return process, connection


class LoneAgent:
    """The driver's handle on the lone agent's process (``run_lone_agent``)."""

    def __init__(self, base_url: str, token: str, seconds: float) -> None:
        self.process, self.connection = spawned(
            run_lone_agent, (base_url, token, seconds), "lone-agent"
        )

    def timings(self, timeout_s: float) -> list[float]:
        """Its heartbeats' milliseconds, once it is done; empty if it did not answer."""
        try:
            if not self.connection.poll(timeout_s):
                return []
            answer = self.connection.recv()
        except (EOFError, OSError):
            return []
        finally:
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
            self.connection.close()
        return list(answer)


def run_fleet(
    base_urls: list[str],
    tokens: list[str],
    interval_hint_s: float,
    nice: int,
    connection: Connection,
) -> None:
    """Child process: the agents, until the driver says stop."""
    # The terminal's Ctrl-C reaches this process too; the driver stops it, before the Managers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        os.nice(nice)
    asyncio.run(_serve_fleet(base_urls, tokens, interval_hint_s, connection))


class Fleet:
    """The driver's handle on the agents' process."""

    def __init__(
        self, base_urls: list[str], tokens: list[str], interval_hint_s: float, nice: int
    ) -> None:
        self.process, self.connection = spawned(
            run_fleet, (base_urls, tokens, interval_hint_s, nice), "simulated-agents"
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def collect(self) -> dict[str, Any]:
        if not self.process.is_alive():
            raise BenchError(f"the simulated agents exited (code {self.process.exitcode})")
        self.connection.send("collect")
        if not self.connection.poll(60):
            raise BenchError("the simulated agents did not answer in 60 s")
        answer = self.connection.recv()
        assert isinstance(answer, dict)
        return answer

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.connection.send("stop")
                self.connection.poll(30)
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10)
        self.connection.close()


# ---------------------------------------------------------------------------------------------
# Watching the Manager: /proc, Postgres, its metrics


def process_cpu_s(pid: int | None) -> float | None:
    """User plus system CPU seconds of a process (all its threads), or None if it is gone."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # fields[0] is field 3 of proc(5)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def loop_thread_times(pid: int) -> tuple[float, float, int] | None:
    """The process's main thread (a Manager process's event loop) so far: seconds on a core,
    seconds waited on a run queue for one, and how many times it ran (schedstat)."""
    try:
        fields = Path(f"/proc/{pid}/schedstat").read_text().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9, int(fields[2])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class MachineTicks:
    idle: int  # idle and iowait
    steal: int  # taken by the host from this machine's virtual cores
    total: int


def machine_ticks() -> MachineTicks | None:
    """The machine's CPU ticks so far, all its cores together (/proc/stat)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 8:
        return None
    # user nice system idle iowait irq softirq steal (guest time is counted in user already)
    return MachineTicks(fields[3] + fields[4], fields[7], sum(fields[:8]))


def cpu_pressure_s() -> float | None:
    """Seconds in which some runnable task waited for a core (PSI), or None without PSI."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some "):
                return int(line.rpartition("total=")[2]) / 1e6
    except (OSError, ValueError):
        return None
    return None


def loop_time(start: Sample, end: Sample) -> tuple[float | None, float | None, float | None]:
    """The event loop of the busiest Manager process (``busiest_process``) between two samples:
    the share of the time its thread ran on a core, the share it waited for one, and ms a wait
    on average. Nones where that process is not known, or where its counts are not there (a
    kernel without them reads 0 0 0)."""
    wall_s = end.t - start.t
    busiest = busiest_process(start, end)
    if busiest is None or wall_s <= 0:
        return None, None, None
    pid, _, before, after = busiest
    first, last = before.process_loop_times.get(pid), after.process_loop_times.get(pid)
    if first is None or last is None or last[2] <= first[2]:
        return None, None, None
    ran, waited, runs = (last[i] - first[i] for i in range(3))
    return ran / wall_s, waited / wall_s, waited * 1000 / runs


def process_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child_pids(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``: a Manager's processes under
    ``INFERENCEKEY_PROCESSES`` (its supervisor is the one the bench started)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(entry.path, "stat").read_text()
                if int(stat.rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def manager_pids(pid: int) -> list[int]:
    return [pid, *child_pids(pid)]


def manager_cpu_s(pid: int, processes: dict[int, float]) -> float | None:
    """A Manager's CPU: its live processes' (``processes``, each one's own CPU by pid, its own
    among them) and those it reaped (cutime)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    reaped = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    return reaped + sum(processes.values())


def busiest_process(
    start: Sample, end: Sample
) -> tuple[int, float, ManagerSample, ManagerSample] | None:
    """The busiest single Manager process between two samples: its pid, its CPU seconds in
    between, and its Manager's two samples; None where a live Manager's processes changed
    between them (a child restarted): then only the sum is known. A Manager gone by the end
    (killed) is left out."""
    busiest = None
    for before, after in zip(start.managers, end.managers, strict=True):
        if after.process_cpu_s and set(after.process_cpu_s) != set(before.process_cpu_s):
            return None  # a process came or went: its share is not known (the sum is)
        for pid, cpu_s in after.process_cpu_s.items():
            if pid in before.process_cpu_s:
                used = cpu_s - before.process_cpu_s[pid]
                if busiest is None or used > busiest[1]:
                    busiest = pid, used, before, after
    return busiest


def busiest_process_cores(start: Sample, end: Sample) -> float | None:
    """The CPU (cores) of the busiest single Manager process between two samples
    (``busiest_process``)."""
    wall_s = end.t - start.t
    busiest = busiest_process(start, end)
    return None if busiest is None or wall_s <= 0 else busiest[1] / wall_s


def manager_rss_mb(pids: list[int]) -> float:
    return sum(process_rss_mb(each) for each in pids)


def manager_histograms(families: list[Metric]) -> dict[str, HistogramValue]:
    """The histograms the bench reads, by key: ``HISTOGRAM_KEYS``' and, for the API's,
    ``"METHOD /route"``, of a metrics page's ``families``."""
    parts: dict[str, tuple[list[float], list[tuple[float, float]]]] = {}
    for family in families:
        name = HISTOGRAM_KEYS.get(family.name)
        if name is None and family.name not in (
            API_HISTOGRAM,
            GC_HISTOGRAM,
            ADMISSION_HISTOGRAM,
            ADMISSION_HOLD_HISTOGRAM,
        ):
            continue
        for sample in family.samples:
            if name is not None:
                key = name
            elif family.name == GC_HISTOGRAM:
                key = f"gc {sample.labels['generation']}"
            elif family.name == ADMISSION_HISTOGRAM:
                key = f"wait {sample.labels['kind']}"
            elif family.name == ADMISSION_HOLD_HISTOGRAM:
                key = f"hold {sample.labels['kind']}"
            else:
                key = f"{sample.labels['method']} {sample.labels['route']}"
            totals, buckets = parts.setdefault(key, ([0.0, 0.0], []))
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                totals[0] = sample.value
            elif sample.name.endswith("_sum"):
                totals[1] = sample.value
    return {
        key: HistogramValue(count, total, tuple(sorted(buckets)))
        for key, ([count, total], buckets) in parts.items()
    }


def gauge_value(families: list[Metric], name: str) -> float | None:
    """An unlabelled gauge's value among a metrics page's ``families``; None if it has none."""
    for family in families:
        if family.name == name and family.samples:
            return float(family.samples[0].value)
    return None


def machine_figures(start: Sample, end: Sample) -> tuple[float | None, float | None, float | None]:
    """Between two samples: the cores busy on the whole machine (every process, the bench's
    own and Postgres's background ones included), the share of its CPU time the host took
    (steal), and the share of the time in which some task waited for a core."""
    cores = steal = None
    before, after = start.machine_ticks, end.machine_ticks
    if before is not None and after is not None and after.total > before.total:
        ticks = after.total - before.total
        idle = after.idle - before.idle
        stolen = after.steal - before.steal
        cores = (ticks - idle - stolen) / ticks * (os.cpu_count() or 1)
        steal = stolen / ticks
    pressure = None
    wall_s = end.t - start.t
    if start.cpu_pressure_s is not None and end.cpu_pressure_s is not None and wall_s > 0:
        pressure = (end.cpu_pressure_s - start.cpu_pressure_s) / wall_s
    return cores, steal, pressure


def accept_queue_figures(samples: list[Sample]) -> tuple[float | None, float | None]:
    """The median and the most of the connections waiting for the Managers in ``samples``
    (each sample's Managers added up; samples where none said are left out)."""
    totals = [
        sum(queue for m in s.managers if (queue := m.accept_queue) is not None)
        for s in samples
        if any(m.accept_queue is not None for m in s.managers)
    ]
    return (percentile(totals, 0.5), max(totals)) if totals else (None, None)


def histogram_growth(samples: list[Sample], key: str) -> HistogramValue | None:
    """What histogram ``key`` of every Manager counted between the first and the last of
    ``samples``: count, seconds and cumulative buckets. A series the phase's first scrape of a
    Manager did not show (a route first called in the phase) counts from zero; where that scrape
    failed, from the first one that shows it."""
    count = total = 0.0
    increase: dict[float, float] = {}
    seen = False
    for index in range(len(samples[0].managers) if samples else 0):
        values = [h for s in samples if (h := s.managers[index].histograms.get(key)) is not None]
        if not values:
            continue
        seen = True
        at_start = samples[0].managers[index].histograms
        first = values[0] if not at_start else at_start.get(key)
        last = values[-1]
        count += last.count - (first.count if first else 0.0)
        total += last.total_s - (first.total_s if first else 0.0)
        before = dict(first.buckets) if first else {}
        for le, cumulative in last.buckets:
            increase[le] = increase.get(le, 0.0) + cumulative - before.get(le, 0.0)
    if not seen:
        return None
    return HistogramValue(count, total, tuple(sorted(increase.items())))


def gc_figures(samples: list[Sample]) -> tuple[float | None, int | None, float | None]:
    """Seconds in collections, full collections, and the longest full one's bucket bound (ms)."""
    grown = [histogram_growth(samples, f"gc {generation}") for generation in range(3)]
    if all(g is None for g in grown):
        return None, None, None
    seconds = sum(g.total_s for g in grown if g is not None)
    full = grown[2]
    if full is None or not full.count:
        return seconds, 0, None
    longest = next((le for le, n in full.buckets if n >= full.count), None)
    return seconds, int(full.count), None if longest is None else longest * 1000


def admission_figures(
    samples: list[Sample], what: str = "wait"
) -> dict[str, tuple[int, float | None, float | None]]:
    """Per kind of turn: how many were taken (or shed) in the phase, the wait's p50 and p99;
    or, ``what="hold"``, how many were given and how long they were held."""
    figures = {}
    for kind in ADMISSION_KINDS:
        grown = histogram_growth(samples, f"{what} {kind}")
        if grown is not None and grown.count:
            figures[kind] = (
                int(grown.count),
                _ms(histogram_quantile(samples, f"{what} {kind}", 0.5)),
                _ms(histogram_quantile(samples, f"{what} {kind}", 0.99)),
            )
    return figures


def histogram_quantile(samples: list[Sample], key: str, q: float) -> float | None:
    """The q-quantile of what histogram ``key`` of every Manager counted between the first and
    the last of ``samples`` (a Manager killed meanwhile counts until its last scrape)."""
    grown = histogram_growth(samples, key)
    return _bucket_quantile(list(grown.buckets) if grown else [], q)


def reconcile_figures(samples: list[Sample]) -> ReconcileFigures | None:
    """The passes of every Manager in the phase (the leader's; a Manager killed in the phase
    counts until its last scrape)."""
    grown = histogram_growth(samples, "reconcile")
    if grown is None:
        return None
    means: list[float] = []
    for index in range(len(samples[0].managers)):
        values = [h for s in samples if (h := s.managers[index].reconcile) is not None]
        means.extend(
            (b.total_s - a.total_s) / (b.count - a.count)
            for a, b in itertools.pairwise(values)
            if b.count > a.count
        )
    passes, increase = int(grown.count), list(grown.buckets)
    under_1s = next((n for le, n in increase if le == 1.0), float(passes))
    return ReconcileFigures(
        passes=passes,
        p50_s=_bucket_quantile(increase, 0.5),
        mean_s=grown.total_s / passes if passes else None,
        max_s=max(means) if means else None,
        max_bucket_le=next((le for le, n in increase if n >= passes), None) if passes else None,
        over_1s=int(passes - under_1s),
    )


def _bucket_quantile(increase: list[tuple[float, float]], q: float) -> float | None:
    """As PromQL's histogram_quantile: linear within the bucket that holds the rank."""
    total = increase[-1][1] if increase else 0
    if not total:
        return None
    rank = q * total
    lower_le, lower_n = 0.0, 0.0
    for le, cumulative in increase:
        if cumulative >= rank:
            if le == float("inf"):
                return lower_le
            share = (rank - lower_n) / (cumulative - lower_n) if cumulative > lower_n else 1.0
            return lower_le + (le - lower_le) * share
        lower_le, lower_n = le, cumulative
    return lower_le


def process_with_socket(port: int, remote_port: int, pids: list[list[int]]) -> int | None:
    """The index in ``pids`` of the Manager (its processes) whose TCP socket has local ``port``
    and the remote ``remote_port`` (/proc/net/tcp*, then the processes' descriptors)."""
    links = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()  # sl, local address:port, remote address:port, ...
                ports = tuple(int(f.rpartition(":")[2], 16) for f in fields[1:3])
                if ports == (port, remote_port):
                    links.add(f"socket:[{fields[9]}]")
    for index, processes in enumerate(pids):
        for pid in processes:
            with contextlib.suppress(OSError):
                for descriptor in os.scandir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(descriptor.path) in links:
                            return index
    return None


LEADS_MESSAGE = "this Manager leads the reconcile loop"  # manager/reconciler.py's log line


def last_to_log_leading(logs: list[Path], candidates: Iterable[int]) -> int | None:
    """Of the candidates, the Manager whose log last says it took the leader lock."""
    latest: tuple[str, int] | None = None
    for index in candidates:
        with contextlib.suppress(OSError):
            for line in logs[index].read_text(errors="replace").splitlines():
                if LEADS_MESSAGE not in line:
                    continue
                with contextlib.suppress(ValueError, AttributeError):
                    at = str(json.loads(line).get("time", ""))
                    if latest is None or at > latest[0]:
                        latest = (at, index)
    return latest[1] if latest else None


@dataclass(frozen=True)
class ManagerProcess:
    name: str
    pid: int
    base_url: str
    metrics_url: str
    log: Path


class Monitor:
    """Samples the Managers' processes, their Postgres backends, their metrics and which one
    leads, twice a second and at every phase boundary."""

    def __init__(
        self,
        managers: list[ManagerProcess],
        agents_pid: int | None,
        pool: asyncpg.Pool,
        statements: bool,
    ) -> None:
        self.managers = managers
        self.agents_pid = agents_pid
        self.pool = pool
        self.statements = statements
        self.samples: list[Sample] = []
        self.db_readable = True
        self.gone: set[int] = set()  # Managers killed: their last readings stand
        self._cpu_s = [0.0] * len(managers)
        self._db_cpu_s = 0.0
        self._backend_cpu: dict[int, float] = {}
        self._leaders: dict[tuple[int, int], int | None] = {}  # (backend pid, port) -> Manager
        self._database_port = urlsplit(DATABASE_SERVER).port or 5432
        self._lock = asyncio.Lock()
        self._http = httpx.AsyncClient(timeout=5, trust_env=False)

    async def sample(self) -> Sample:
        async with self._lock:
            managers = [await self._sample_manager(i) for i in range(len(self.managers))]
            leader = None
            with contextlib.suppress(asyncpg.PostgresError):
                leader = await self.leader()
            db_cpu_s = await self._db_cpu()
            db_exec_ms = None
            if self.statements:
                with contextlib.suppress(asyncpg.PostgresError):
                    db_exec_ms = float(await self.pool.fetchval(STATEMENTS_QUERY))
            sample = Sample(
                t=time.monotonic(),
                managers=managers,
                leader=leader,
                agents_cpu_s=process_cpu_s(self.agents_pid),
                driver_cpu_s=process_cpu_s(os.getpid()),
                db_cpu_s=db_cpu_s,
                db_exec_ms=db_exec_ms,
                machine_ticks=machine_ticks(),
                cpu_pressure_s=cpu_pressure_s(),
            )
            self.samples.append(sample)
            return sample

    async def _sample_manager(self, index: int) -> ManagerSample:
        if index in self.gone:
            return ManagerSample(self._cpu_s[index], 0.0)
        manager = self.managers[index]
        histograms = {}
        accept_queue = None
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = await self._http.get(manager.metrics_url)
            if response.is_success:
                families = list(text_string_to_metric_families(response.text))  # parsed once
                histograms = manager_histograms(families)
                accept_queue = gauge_value(families, ACCEPT_QUEUE_GAUGE)
        pids = manager_pids(manager.pid)  # one read of /proc for the three figures
        processes = {pid: cpu for pid in pids if (cpu := process_cpu_s(pid)) is not None}
        loops = {pid: times for pid in processes if (times := loop_thread_times(pid)) is not None}
        cpu_s = manager_cpu_s(manager.pid, processes)
        if cpu_s is not None:
            self._cpu_s[index] = cpu_s
        return ManagerSample(
            self._cpu_s[index],
            manager_rss_mb(pids),
            histograms=histograms,
            process_cpu_s=processes,
            accept_queue=accept_queue,
            process_loop_times=loops,
        )

    async def leader(self) -> int | None:
        """The index of the Manager holding the reconciler's leader lock now, if one does."""
        row = await self.pool.fetchrow(
            LEADER_QUERY, LEADER_LOCK_KEY >> 32, LEADER_LOCK_KEY & 0xFFFF_FFFF
        )
        if row is None:
            return None
        key = (int(row["pid"]), int(row["client_port"] or 0))
        if key not in self._leaders:
            pids = [manager_pids(m.pid) for m in self.managers]
            self._leaders[key] = process_with_socket(key[1], self._database_port, pids)
        found = self._leaders[key]
        if found is None:  # Postgres is not local: its client port is not one of our sockets
            alive = (i for i in range(len(self.managers)) if i not in self.gone)
            found = last_to_log_leading([m.log for m in self.managers], alive)
        return found

    async def _db_cpu(self) -> float | None:
        """CPU seconds the Manager's backends used so far: each backend's growth between samples
        (a new one counts from its start; the last moments of one that exits between samples are
        lost)."""
        if not self.db_readable:
            return None
        pids = [row["pid"] for row in await self.pool.fetch(BACKENDS_QUERY, MONITOR_APP)]
        now: dict[int, float] = {}
        for pid in pids:
            cpu = process_cpu_s(pid)
            if cpu is not None:
                now[pid] = cpu
        if pids and not now:
            self.db_readable = False  # Postgres runs where our /proc does not see it
            return None
        for pid, cpu in now.items():
            self._db_cpu_s += cpu - self._backend_cpu.get(pid, 0.0)
        self._backend_cpu = now
        return self._db_cpu_s

    async def run(self) -> None:
        while True:
            # A missed sample only widens the next interval; the phase boundaries sample anew.
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await self.sample()
            await asyncio.sleep(MONITOR_PERIOD_S)

    def between(self, start: Sample, end: Sample) -> list[Sample]:
        return [s for s in self.samples if start.t <= s.t <= end.t]

    async def close(self) -> None:
        await self._http.aclose()


# ---------------------------------------------------------------------------------------------
# The control API, timed


class ControlApi:
    """Control-API calls spread over the Managers, each call to the next one in turn."""

    def __init__(
        self, base_urls: list[str], token: str, answers: Answers, connections: int
    ) -> None:
        self.answers = answers
        self.clients = {
            base_url: httpx.AsyncClient(
                base_url=base_url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=httpx.Timeout(60.0),
                limits=httpx.Limits(
                    max_connections=connections, max_keepalive_connections=connections
                ),
                trust_env=False,
            )
            for base_url in base_urls
        }
        self.serving = list(base_urls)
        self._turn = itertools.count()

    def leave_out(self, base_url: str) -> None:
        """Send no more calls to this Manager (as a load balancer takes one out)."""
        self.serving.remove(base_url)

    async def call(
        self, endpoint: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[httpx.Response | None, float]:
        """The answer (None on a transport error) and the milliseconds it took, body included."""
        http = self.clients[self.serving[next(self._turn) % len(self.serving)]]
        started = time.monotonic()
        try:
            response = await http.request(method, path, json=body)
        except httpx.HTTPError as error:
            self.answers.add(endpoint, type(error).__name__)
            return None, (time.monotonic() - started) * 1000
        elapsed_ms = (time.monotonic() - started) * 1000
        self.answers.add(endpoint, str(response.status_code))
        return response, elapsed_ms

    async def close(self) -> None:
        await asyncio.gather(*(http.aclose() for http in self.clients.values()))


def next_cursor(response: httpx.Response) -> str | None:
    """A page's ``next_cursor`` (None: it was the last page); ValueError if the answer is not
    a page."""
    try:
        cursor = response.json()["next_cursor"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not a page: {error!r}") from None
    if cursor is not None and not isinstance(cursor, str):
        raise ValueError(f"not a page: next_cursor {cursor!r}")
    return cursor


def workload_body(slug: str) -> dict[str, Any]:
    return CreateWorkloadRequest(
        name=slug,
        slug=slug,
        description="fleet-scale bench",
        backend="llamacpp",
        model_name=MODEL_NAME,
        config={"command": COMMAND},
        execution_policy="fixed",
        execution_policy_config={"replicas": 1},
    ).model_dump(exclude_none=True)


def probe_command(n: int) -> str:
    """The rolling probe's ``n``-th command: never one a workload had before."""
    return f"llama-server -m {MODEL_FILE} --ctx-size {4096 + 16 * (n + 1)}"


class EffectWatch:
    """When the reconciler acted on each change: the first poll (every 20 ms) that finds a
    replica of the workload at the change's generation or a later one."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # workload id -> (kind, generation, when the change was sent); a newer change replaces it
        self.pending: dict[str, tuple[str, int, float]] = {}
        self.seconds: dict[str, list[float]] = {}  # kind -> from sent to effect
        self.effect_at: dict[str, float] = {}  # workload id -> when its last change took effect

    def expect(self, kind: str, workload_id: str, generation: int, sent_at: float) -> None:
        self.pending[workload_id] = (kind, generation, sent_at)

    async def run(self) -> None:
        while True:
            if self.pending:
                with contextlib.suppress(asyncpg.PostgresError, OSError):
                    rows = await self.pool.fetch(EFFECT_QUERY, list(self.pending))
                    now = time.monotonic()
                    for row in rows:
                        change = self.pending.get(row["id"])
                        if change is None or row["generation"] < change[1]:
                            continue
                        kind, _, sent_at = change
                        self.seconds.setdefault(kind, []).append(now - sent_at)
                        self.effect_at[row["id"]] = now
                        del self.pending[row["id"]]
            await asyncio.sleep(EFFECT_POLL_S)

    async def drain(self, timeout_s: float) -> None:
        """Wait until every change took effect, or the timeout."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(EFFECT_POLL_S)


async def _in_parallel(jobs: Iterable[Callable[[], Awaitable[None]]], concurrency: int) -> None:
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:  # one shared iterator: each job runs once
            await job()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# ---------------------------------------------------------------------------------------------
# One size


class Run:
    """One (agents, workloads) size against fresh Managers and database."""

    def __init__(self, agents: int, workloads: int, settings: Settings, servers: Servers) -> None:
        self.settings = settings
        self.servers = servers
        self.result = SizeResult(
            agents,
            workloads,
            managers=settings.managers,
            processes=int(settings.manager_env.get("INFERENCEKEY_PROCESSES", "1")),
        )
        self.managers: list[ManagerProcess] = []
        # Every create the Managers acknowledged (2xx), by workload id: when it was sent.
        self.acknowledged: dict[str, float] = {}
        self.answers = Answers()
        self.fleet: Fleet | None = None
        self.tokens: list[str] = []
        self.monitor: Monitor | None = None
        self.pool: asyncpg.Pool | None = None
        self.api: ControlApi | None = None
        self.samples_api: ControlApi | None = None
        self.agent_answers: Counter[tuple[str, str]] = Counter()
        self._phase: tuple[str, Sample, int] | None = None
        self._heartbeats_ms: dict[str, list[float]] = {}

    # --- set-up ---------------------------------------------------------------------------------

    async def start_managers(self) -> tuple[str, str]:
        """The Managers on a new database: (admin token, database URL). The first one starts
        alone (it migrates the database), then the others together."""
        database_url = await create_bench_database(self.servers)
        admin_token = f"ik_admin_{secrets.token_hex(4)}_{secrets.token_hex(32)}"
        names = ["manager", *(f"manager-{i}" for i in range(1, self.settings.managers))]
        await self._start_manager(names[0], database_url, admin_token)
        await asyncio.gather(
            *(self._start_manager(name, database_url, admin_token) for name in names[1:])
        )
        return admin_token, database_url

    async def _start_manager(self, name: str, database_url: str, admin_token: str) -> None:
        port, metrics_port = free_port(), free_port()
        env = {
            "INFERENCEKEY_DATABASE_URL": database_url,
            "INFERENCEKEY_ADMIN_TOKEN": admin_token,
            "INFERENCEKEY_DATA_DIR": str(self.servers.work_dir / f"{name}-data"),
            "INFERENCEKEY_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
            "INFERENCEKEY_LOG_FORMAT": "json",
        }
        if self.settings.heartbeat_interval_s is not None:
            env["INFERENCEKEY_HEARTBEAT_INTERVAL_S"] = str(self.settings.heartbeat_interval_s)
        env.update(self.settings.manager_env)
        argv = [sys.executable, "-m", "ik_command", "manager", "--port", str(port)]
        self.servers.start(name, argv, env=env)
        base_url = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_until_ready, self.servers, name, base_url + "/healthz", 120)
        self.managers.append(
            ManagerProcess(
                name=name,
                pid=self.servers.processes[name].pid,
                base_url=base_url,
                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics?{HISTOGRAMS_ONLY}",
                log=self.servers.work_dir / f"{name}.log",
            )
        )
        self.managers.sort(key=lambda m: (len(m.name), m.name))  # in the order of their names

    async def make_fleet_credentials(
        self, base_url: str, admin_token: str
    ) -> tuple[str, list[str]]:
        """The project, its SDK token and a worker (with its agent token) per agent."""
        async with httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=60,
            trust_env=False,
        ) as admin:

            async def created(path: str, body: dict[str, Any]) -> dict[str, Any]:
                response = await admin.post(path, json=body)
                self.answers.add("admin", str(response.status_code))
                if response.status_code != 201:
                    raise BenchError(f"{path}: {response.status_code} {response.text[:300]}")
                return dict(response.json())

            await created("/api/admin/projects", {"slug": PROJECT})
            sdk_token = str((await created("/api/admin/tokens", {"project": PROJECT}))["token"])
            tokens: list[str] = [""] * self.result.agents

            def register(index: int) -> Callable[[], Awaitable[None]]:
                async def job() -> None:
                    worker = await created("/api/admin/workers", {"name": f"sim-{index:04d}"})
                    tokens[index] = str(worker["token"])

                return job

            await _in_parallel(
                (register(index) for index in range(self.result.agents)), ADMIN_CONCURRENCY
            )
        return sdk_token, tokens

    # --- phases ---------------------------------------------------------------------------------

    async def begin(self, name: str) -> None:
        assert self.monitor is not None
        print(f"  {name} ...", flush=True)
        self._phase = (name, await self.monitor.sample(), self.answers.errors())

    async def end(self) -> PhaseFigures:
        assert self.monitor is not None and self.fleet is not None and self.pool is not None
        assert self._phase is not None
        name, start, errors_before = self._phase
        finish = await self.monitor.sample()
        fleet = await asyncio.to_thread(self.fleet.collect)
        self._heartbeats_ms[name] = [ms for _, ms in fleet["heartbeats"]]
        fleet_errors = 0
        for endpoint, outcome, count in fleet["answers"]:
            self.agent_answers[(endpoint, outcome)] += count
            fleet_errors += 0 if outcome.startswith("2") else count
        if fleet["interval_s"] is not None:
            self.result.heartbeat_interval_s = fleet["interval_s"]
        if fleet["failovers"]:
            self.result.notes.append(
                f"{name}: agents moved to their next Manager {fleet['failovers']} time(s)"
            )
        phase_samples = self.monitor.between(start, finish)
        leaders: list[str] = []
        for sample in phase_samples:
            if sample.leader is not None and self.managers[sample.leader].name not in leaders:
                leaders.append(self.managers[sample.leader].name)
        states = {
            row["state"]: int(row["n"])
            for row in await self.pool.fetch(
                "SELECT state, count(*) AS n FROM workers GROUP BY state"
            )
        }
        phase = PhaseFigures(
            name=name,
            wall_s=finish.t - start.t,
            manager_cpu_s=finish.manager_cpu_s - start.manager_cpu_s,
            manager_rss_mb=finish.manager_rss_mb,
            agents_cpu_s=_delta(start.agents_cpu_s, finish.agents_cpu_s),
            db_cpu_s=_delta(start.db_cpu_s, finish.db_cpu_s),
            db_exec_ms=_delta(start.db_exec_ms, finish.db_exec_ms),
            heartbeat_ms=Latency.of(self._heartbeats_ms[name]),
            agent_loop_lag_p99_ms=percentile(fleet["loop_lag_ms"], 0.99),
            reconcile=reconcile_figures(phase_samples),
            manager_heartbeat_ms=(
                _ms(histogram_quantile(phase_samples, "heartbeat", 0.5)),
                _ms(histogram_quantile(phase_samples, "heartbeat", 0.99)),
            ),
            manager_loop_lag_p99_ms=_ms(histogram_quantile(phase_samples, "loop_lag", 0.99)),
            manager_api_p99_ms={
                kind: _ms(histogram_quantile(phase_samples, " ".join(route), 0.99))
                for kind, route in API_ROUTES.items()
            },
            errors=self.answers.errors() - errors_before + fleet_errors,
            workers_by_state=states,
            managers=[
                ManagerPhase(manager.name, b.cpu_s - a.cpu_s, b.rss_mb)
                for manager, a, b in zip(
                    self.managers, start.managers, finish.managers, strict=True
                )
            ],
            leaders=leaders,
        )
        phase.busiest_process_cores = busiest_process_cores(start, finish)
        phase.accept_queue = accept_queue_figures(phase_samples)
        phase.loop_time = loop_time(start, finish)
        phase.machine_cores, phase.steal_share, phase.cpu_pressure_share = machine_figures(
            start, finish
        )
        phase.driver_cpu_s = _delta(start.driver_cpu_s, finish.driver_cpu_s)
        phase.gc_s, phase.gc_full, phase.gc_full_max_le_ms = gc_figures(phase_samples)
        phase.admission_waits = admission_figures(phase_samples)
        phase.admission_holds = admission_figures(phase_samples, "hold")
        self.result.phases.append(phase)
        self._phase = None
        return phase

    async def wait_for(
        self,
        query: str,
        ids: Iterable[str],
        timeout_s: float,
        *args: object,
        period_s: float = POLL_S,
    ) -> dict[str, float]:
        """When each id first matched ``query`` (polled); the ones that never did are left out."""
        assert self.pool is not None
        pending, seen = set(ids), {}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            rows = await self.pool.fetch(query, list(pending), *args)
            now = time.monotonic()
            for row in rows:
                seen[row["id"]] = now
                pending.discard(row["id"])
            if pending:
                await asyncio.sleep(period_s)
        return seen

    async def register(self) -> None:
        await self.begin("register")
        assert self.pool is not None
        deadline = time.monotonic() + 60 + 0.05 * self.result.agents
        ready = 0
        while time.monotonic() < deadline:
            ready = await self.pool.fetchval("SELECT count(*) FROM workers WHERE state = 'ready'")
            if ready >= self.result.agents:
                break
            await asyncio.sleep(POLL_S)
        else:
            self.result.notes.append(f"only {ready} of {self.result.agents} workers became ready")
        await self.end()

    async def create_burst(self) -> dict[str, float]:
        """W creates, 32 in flight; when each answered, by workload id."""
        assert self.api is not None
        api = self.api
        await self.begin("create")
        done: dict[str, float] = {}
        latencies: list[float] = []

        def create(index: int) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                body = workload_body(f"wl-{index:05d}")
                sent = time.monotonic()
                response, ms = await api.call(
                    "create", "POST", f"/api/projects/{PROJECT}/workloads", body
                )
                if response is not None and response.status_code == 201:
                    workload_id = response.json()["id"]
                    done[workload_id], self.acknowledged[workload_id] = time.monotonic(), sent
                    latencies.append(ms)

            return job

        started = time.monotonic()
        await _in_parallel((create(i) for i in range(self.result.workloads)), CREATE_CONCURRENCY)
        took = time.monotonic() - started
        phase = await self.end()
        burst = Latency.of(latencies)
        self.result.latencies["create_burst"] = burst
        figures = self.result.figures
        figures["accept_queue_p50_burst"], figures["accept_queue_max_burst"] = phase.accept_queue
        figures["create_rate_per_s"] = len(done) / took if took else None
        figures["create_burst_p50_ms"], figures["create_burst_p99_ms"] = burst.p50, burst.p99
        if len(done) < self.result.workloads:
            self.result.notes.append(f"{self.result.workloads - len(done)} creates failed")
        return done

    async def converge(self, created: dict[str, float]) -> list[str]:
        await self.begin("converge")
        burst_end = time.monotonic()
        timeout_s = 60 + 0.06 * len(created)
        ready = await self.wait_for(READY_QUERY, created, timeout_s)
        await self.end()
        figures = self.result.figures
        to_ready = [(ready[w] - created[w]) for w in ready]
        figures["ready_after_burst_s"] = (
            max(ready.values()) - burst_end if len(ready) == len(created) and ready else None
        )
        figures["create_to_ready_p50_s"] = percentile(to_ready, 0.5)
        figures["create_to_ready_p99_s"] = percentile(to_ready, 0.99)
        if len(ready) < len(created):
            assert self.pool is not None
            phases = await self.pool.fetch(
                "SELECT phase, count(*) AS n FROM workloads WHERE deleted_at IS NULL "
                "GROUP BY phase ORDER BY n DESC"
            )
            shown = ", ".join(f"{row['phase']} {row['n']}" for row in phases)
            self.result.notes.append(
                f"{len(created) - len(ready)} workloads not ready after {timeout_s:.0f} s "
                f"(phases: {shown})"
            )
        return sorted(ready)

    async def steady(self, ids: list[str]) -> None:
        """The sampler: one client per operation, one request at a time, at a fixed pace."""
        assert self.samples_api is not None and self.pool is not None
        api = self.samples_api
        await self.begin("steady")
        stop_at = time.monotonic() + self.settings.steady_s
        timings: dict[str, list[float]] = {kind: [] for kind in SAMPLE_PERIODS_S}
        list_bytes: list[int] = []
        probes = itertools.count()
        edits = itertools.count()
        rolls = itertools.count()
        rolled_ids = ids[-ROLLING_PROBE_WORKLOADS:]
        cursor: list[str | None] = [None]  # the next page's, None: the first
        effects = EffectWatch(self.pool)
        watching = asyncio.create_task(effects.run())
        lone = (
            LoneAgent(self.managers[0].base_url, self.tokens[0], self.settings.steady_s)
            if self.tokens
            else None
        )

        async def timed(kind: str, method: str, path: str, body: dict[str, Any] | None) -> None:
            sent = time.monotonic()
            response, ms = await api.call(kind, method, path, body)
            if response is not None and response.is_success:
                timings[kind].append(ms)
                if kind == "list":
                    list_bytes.append(len(response.content))
                elif kind == "page":
                    cursor[0] = None  # from the first page again, unless the answer says on
                    with contextlib.suppress(ValueError):
                        cursor[0] = next_cursor(response)
                elif kind in ("create", "rolling"):
                    workload = response.json()
                    effects.expect(kind, workload["id"], int(workload["generation"]), sent)
                    if kind == "create":
                        self.acknowledged[workload["id"]] = sent

        def rolling() -> Awaitable[None]:
            n = next(rolls)
            body = UpdateWorkloadRequest(config={"command": probe_command(n)})
            path = f"/api/workloads/{rolled_ids[n % len(rolled_ids)]}"
            return timed("rolling", "PATCH", path, body.model_dump(exclude_none=True))

        def page() -> Awaitable[None]:
            after = "" if cursor[0] is None else f"&after={cursor[0]}"
            path = f"/api/projects/{PROJECT}/workloads?limit={PAGE_SIZE}{after}"
            return timed("page", "GET", path, None)

        operations: dict[str, Callable[[], Awaitable[None]]] = {
            "list": lambda: timed("list", "GET", f"/api/projects/{PROJECT}/workloads", None),
            "page": page,
            "get": lambda: timed("get", "GET", f"/api/workloads/{random.choice(ids)}", None),
            "create": lambda: timed(
                "create",
                "POST",
                f"/api/projects/{PROJECT}/workloads",
                workload_body(f"probe-{next(probes):05d}"),
            ),
            "patch": lambda: timed(
                "patch",
                "PATCH",
                f"/api/workloads/{random.choice(ids)}",
                UpdateWorkloadRequest(description=f"steady edit {next(edits)}").model_dump(
                    exclude_none=True
                ),
            ),
            "rolling": rolling,
        }

        async def paced(kind: str) -> None:
            while time.monotonic() < stop_at:
                started = time.monotonic()
                await operations[kind]()
                await asyncio.sleep(max(0.0, SAMPLE_PERIODS_S[kind] - (time.monotonic() - started)))

        try:
            if ids:
                await asyncio.gather(*(paced(kind) for kind in SAMPLE_PERIODS_S))
            else:
                await asyncio.sleep(self.settings.steady_s)
            phase = await self.end()
            lone_ms = [] if lone is None else await asyncio.to_thread(lone.timings, 30.0)
            # The last changes' effects, so that the slow ones are not left out of the figure.
            await effects.drain(10.0)
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        figures = self.result.figures
        rolled_s, created_s = effects.seconds.get("rolling", []), effects.seconds.get("create", [])
        changes = rolled_s + created_s
        figures["change_effect_n"] = float(len(changes))
        figures["change_effect_p50_s"] = percentile(changes, 0.5)
        figures["change_effect_p99_s"] = percentile(changes, 0.99)
        figures["rolling_effect_p99_s"] = percentile(rolled_s, 0.99)
        figures["create_effect_p99_s"] = percentile(created_s, 0.99)
        if effects.pending:
            self.result.notes.append(
                f"steady: {len(effects.pending)} change(s) without effect 10 s after the phase"
            )
        for kind, values in timings.items():
            latency = self.result.latencies[kind] = Latency.of(values)
            figures[f"{kind}_p50_ms"], figures[f"{kind}_p99_ms"] = latency.p50, latency.p99
        figures["list_mb"] = max(list_bytes) / 1e6 if list_bytes else None
        figures["probes_created"] = float(len(timings["create"]))
        figures["heartbeat_p50_ms"] = phase.heartbeat_ms.p50
        figures["heartbeat_p99_ms"] = phase.heartbeat_ms.p99
        figures["agent_loop_lag_p99_ms"] = phase.agent_loop_lag_p99_ms
        figures["heartbeat_manager_p99_ms"] = phase.manager_heartbeat_ms[1]
        figures["heartbeat_lone_p50_ms"] = percentile(lone_ms, 0.5)
        figures["heartbeat_lone_p99_ms"] = percentile(lone_ms, 0.99)
        figures["manager_loop_lag_p99_ms"] = phase.manager_loop_lag_p99_ms
        figures["manager_gc_s_steady"] = phase.gc_s
        figures["manager_gc_full_steady"] = None if phase.gc_full is None else float(phase.gc_full)
        figures["manager_gc_full_max_ms_steady"] = phase.gc_full_max_le_ms
        figures["accept_queue_p50_steady"], figures["accept_queue_max_steady"] = phase.accept_queue
        for kind, ms in phase.manager_api_p99_ms.items():
            figures[f"{kind}_manager_p99_ms"] = ms
        if phase.reconcile is not None:
            figures["reconcile_p50_s"] = phase.reconcile.p50_s
            figures["reconcile_max_s"] = phase.reconcile.max_s
            figures["reconcile_over_1s_steady"] = float(phase.reconcile.over_1s)
        figures["manager_cpu_cores_steady"] = phase.manager_cpu_s / phase.wall_s
        if phase.db_cpu_s is not None:
            figures["db_cpu_cores_steady"] = phase.db_cpu_s / phase.wall_s

    async def handover(self) -> None:
        """Kill the leading Manager under load: how soon a survivor leads and acts on a change,
        and that nothing acknowledged is lost."""
        assert self.api is not None and self.monitor is not None and self.pool is not None
        api, monitor, figures = self.api, self.monitor, self.result.figures
        await self.begin("handover")
        killed = await monitor.leader()
        if killed is None:
            self.result.notes.append("handover: no Manager held the leader lock; none killed")
            await self.end()
            return
        victim = self.managers[killed]
        api.leave_out(victim.base_url)  # the creator works through the survivors
        if self.samples_api is not None:
            self.samples_api.leave_out(victim.base_url)  # and the lists after the run
        effects = EffectWatch(self.pool)
        watching = asyncio.create_task(effects.run())
        killed_at: float | None = None
        after_kill: list[str] = []  # creates sent after the kill and acknowledged, in order
        stop = asyncio.Event()
        names = itertools.count()

        async def creator() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                response, _ = await api.call(
                    "create (handover)",
                    "POST",
                    f"/api/projects/{PROJECT}/workloads",
                    workload_body(f"handover-{next(names):05d}"),
                )
                if response is not None and response.status_code == 201:
                    workload_id = response.json()["id"]
                    self.acknowledged[workload_id] = sent
                    effects.expect("create", workload_id, 1, sent)
                    if killed_at is not None and sent >= killed_at:
                        after_kill.append(workload_id)
                await asyncio.sleep(max(0.0, HANDOVER_CREATE_PERIOD_S - (time.monotonic() - sent)))

        async def first_after_kill_ready() -> tuple[str, float | None] | None:
            while not after_kill:
                if creating.done():
                    return None
                await asyncio.sleep(EFFECT_POLL_S)
            first = after_kill[0]
            ready = await self.wait_for(READY_QUERY, [first], 120, period_s=EFFECT_POLL_S)
            return first, ready.get(first)

        creating = asyncio.create_task(creator())
        first_ready = asyncio.create_task(first_after_kill_ready())
        led_by: int | None = None
        led_at: float | None = None
        try:
            await asyncio.sleep(HANDOVER_BEFORE_KILL_S)
            process = self.servers.processes[victim.name]
            killed_at = kill_time = time.monotonic()
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the group is the Manager
            monitor.gone.add(killed)
            await asyncio.to_thread(process.wait, 10)
            print(f"    killed {victim.name}, the leader", flush=True)
            while time.monotonic() < kill_time + 60:
                with contextlib.suppress(asyncpg.PostgresError):
                    leader = await monitor.leader()
                    if leader is not None and leader != killed:
                        led_by, led_at = leader, time.monotonic()
                        break
                await asyncio.sleep(EFFECT_POLL_S)
            await asyncio.sleep(HANDOVER_AFTER_LEAD_S)
            stop.set()
            await creating
            first = await first_ready
            await effects.drain(10.0)
        finally:
            stop.set()
            for task in (creating, first_ready, watching):
                task.cancel()
            await asyncio.gather(creating, first_ready, watching, return_exceptions=True)
        acknowledged = list(self.acknowledged)
        found = await self.pool.fetch(LIVE_QUERY, acknowledged)
        ready = await self.wait_for(READY_QUERY, acknowledged, 60 + 0.06 * len(acknowledged))
        await self.end()

        figures["handover_leader_s"] = led_at - kill_time if led_at is not None else None
        if first is not None:
            first_id, first_ready_at = first
            placed_at = effects.effect_at.get(first_id)
            figures["handover_placed_s"] = placed_at - kill_time if placed_at else None
            figures["handover_ready_s"] = first_ready_at - kill_time if first_ready_at else None
        figures["handover_acknowledged"] = float(len(acknowledged))
        figures["handover_found"] = float(len(found))
        figures["handover_ready"] = float(len(ready))
        figures["handover_lost"] = float(len(acknowledged) - len(found))
        figures["handover_not_ready"] = float(len(acknowledged) - len(ready))
        successor = self.managers[led_by].name if led_by is not None else "none in 60 s"
        self.result.notes.append(
            f"handover: killed {victim.name} (leading); then {successor} led; "
            f"{len(after_kill)} creates sent after the kill were acknowledged"
        )

    async def change(self, ids: list[str]) -> None:
        """Patch a fraction to a new command and delete as many; until both took effect."""
        assert self.api is not None
        api = self.api
        count = min(len(ids) // 2, round(self.settings.change_fraction * len(ids)))
        patched, deleted = ids[:count], ids[count : 2 * count]
        await self.begin("change")
        answered: dict[str, float] = {}
        timings: dict[str, list[float]] = {"patch": [], "delete": []}
        patch = UpdateWorkloadRequest(config={"command": CHANGED_COMMAND}).model_dump(
            exclude_none=True
        )

        def job(kind: str, workload_id: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                method, body = ("PATCH", patch) if kind == "patch" else ("DELETE", None)
                response, ms = await api.call(
                    f"{kind} (change)", method, f"/api/workloads/{workload_id}", body
                )
                if response is not None and response.is_success:
                    answered[workload_id] = time.monotonic()
                    timings[kind].append(ms)

            return run

        jobs = [
            job(kind, workload_id)
            for pair in itertools.zip_longest(patched, deleted)
            for kind, workload_id in zip(("patch", "delete"), pair, strict=True)
            if workload_id is not None
        ]
        await _in_parallel(jobs, CREATE_CONCURRENCY)
        burst_end = time.monotonic()
        timeout_s = 60 + 0.06 * len(jobs)
        rolled, gone = await asyncio.gather(
            self.wait_for(
                ROLLED_QUERY, [w for w in patched if w in answered], timeout_s, CHANGED_COMMAND
            ),
            self.wait_for(GONE_QUERY, [w for w in deleted if w in answered], timeout_s),
        )
        await self.end()
        figures = self.result.figures
        for kind, values in timings.items():
            self.result.latencies[f"{kind}_change"] = Latency.of(values)
        rolled_s = [rolled[w] - answered[w] for w in rolled]
        gone_s = [gone[w] - answered[w] for w in gone]
        figures["changed"] = float(count)
        figures["patch_effect_p50_s"] = percentile(rolled_s, 0.5)
        figures["patch_effect_max_s"] = max(rolled_s) if rolled_s else None
        figures["delete_effect_p50_s"] = percentile(gone_s, 0.5)
        figures["delete_effect_max_s"] = max(gone_s) if gone_s else None
        complete = len(rolled) == len(patched) and len(gone) == len(deleted)
        finished = [*rolled.values(), *gone.values()]
        figures["change_done_after_burst_s"] = (
            max(finished) - burst_end if complete and finished else None
        )
        if not complete:
            self.result.notes.append(
                f"after {timeout_s:.0f} s: {len(rolled)} of {len(patched)} patched workloads "
                f"rolled, {len(gone)} of {len(deleted)} deleted ones without replicas"
            )

    # --- the whole size -------------------------------------------------------------------------

    async def run(self) -> SizeResult:
        agents, workloads = self.result.agents, self.result.workloads
        managers = self.settings.managers
        print(
            f"\n{agents} agents x {GPUS_PER_AGENT} GPUs, {workloads} workloads, "
            f"{managers} Manager{'s' if managers > 1 else ''}",
            flush=True,
        )
        admin_token, database_url = await self.start_managers()
        base_urls = [manager.base_url for manager in self.managers]
        monitoring: asyncio.Task[None] | None = None
        try:
            sdk_token, tokens = await self.make_fleet_credentials(base_urls[0], admin_token)
            self.tokens = tokens
            self.pool = await asyncpg.create_pool(
                database_url,
                min_size=1,
                max_size=6,  # the monitor, the effect watch, the phases' polls
                server_settings={"application_name": MONITOR_APP},
            )
            statements = await _statements_available(self.pool)
            if not statements:
                self.result.notes.append(
                    "pg_stat_statements not loaded: DB time is the CPU of the Manager's backends"
                )
            self.api = ControlApi(base_urls, sdk_token, self.answers, CREATE_CONCURRENCY)
            self.samples_api = ControlApi(base_urls, sdk_token, self.answers, len(SAMPLE_PERIODS_S))
            interval_hint = self.settings.heartbeat_interval_s or AGENT_DEFAULT_INTERVAL_S
            self.fleet = Fleet(base_urls, tokens, interval_hint, self.settings.fleet_nice)
            self.monitor = Monitor(self.managers, self.fleet.pid, self.pool, statements)
            monitoring = asyncio.create_task(self.monitor.run())
            await self.register()
            created = await self.create_burst()
            ready = await self.converge(created)
            await self.steady(ready)
            if self.settings.kill_leader:
                await self.handover()
            await self.change(ready)
            if ready:
                try:
                    await self.list_alone()
                except Exception as error:  # the phases' figures stand without it
                    self.result.notes.append(f"the list with the fleet stopped failed: {error!r}")
        finally:
            if monitoring is not None:
                monitoring.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await monitoring
            await self.close()
        self.finish()
        return self.result

    async def list_alone(self) -> None:
        """The list with the fleet stopped, after the run: written afresh (every live row made a
        new version behind the Managers' backs, which no notice names), then as kept. Beside the
        steady p99 (the list written afresh after the converge phase), it tells the list's own
        cost from its waits for a serving process's core shared with the fleet's requests."""
        assert self.fleet is not None and self.pool is not None and self.samples_api is not None
        await asyncio.to_thread(self.fleet.stop)
        await asyncio.sleep(1.0)  # the requests in flight answered
        async with self.pool.acquire() as connection:
            await connection.execute(
                "UPDATE workloads SET updated_at = updated_at WHERE deleted_at IS NULL"
            )
        path = f"/api/projects/{PROJECT}/workloads"
        # Each serving Manager's process keeps its own list: with one process each, a round of
        # one list per Manager (in turn) writes each afresh, and the next finds each kept. With
        # several processes, which one takes a list is the kernel's choice: the second round is
        # three lists per Manager, and its fastest is the figure as kept.
        serving = len(self.samples_api.serving)
        rounds = {"afresh": serving, "kept": serving * (1 if self.result.processes == 1 else 3)}
        timed: dict[str, list[float]] = {"afresh": [], "kept": []}
        for kind, lists in rounds.items():
            for _ in range(lists):
                response, ms = await self.samples_api.call("list alone", "GET", path)
                if response is not None and response.is_success:
                    timed[kind].append(ms)
        figures = self.result.figures
        figures["list_alone_afresh_ms"] = max(timed["afresh"], default=None)
        figures["list_alone_kept_ms"] = min(timed["kept"], default=None)
        figures["pages_alone_ms"] = await self._every_page(path)

    async def _every_page(self, path: str) -> float | None:
        """Milliseconds to read every page of PAGE_SIZE in turn, as the SDK's
        ``iter_workloads(page_size=1000)`` does (None if a page failed)."""
        assert self.samples_api is not None
        after: str | None = None
        seen: set[str] = set()
        total_ms = 0.0
        while True:
            query = f"?limit={PAGE_SIZE}" + ("" if after is None else f"&after={after}")
            response, ms = await self.samples_api.call("pages alone", "GET", path + query)
            if response is None or not response.is_success:
                return None
            total_ms += ms
            try:
                cursor = next_cursor(response)
            except ValueError:
                return None
            if cursor is None:
                return total_ms  # the last page
            if cursor in seen:
                return None  # a cursor that loops
            seen.add(cursor)
            after = cursor

    async def close(self) -> None:
        if self.fleet is not None:
            await asyncio.to_thread(self.fleet.stop)
        for closing in (self.api, self.samples_api, self.monitor):
            if closing is not None:
                await closing.close()
        if self.pool is not None:
            await self.pool.close()

    def finish(self) -> None:
        """Figures over the whole run: errors, the busiest phases, the Manager's log."""
        result, figures = self.result, self.result.figures
        by_name = {phase.name: phase for phase in result.phases}
        busy = [by_name[name] for name in ("create", "converge") if name in by_name]
        busy_wall = sum(p.wall_s for p in busy)
        if busy_wall:
            figures["manager_cpu_cores_busy"] = sum(p.manager_cpu_s for p in busy) / busy_wall
        busy_heartbeats = [ms for p in busy for ms in self._heartbeats_ms[p.name]]
        figures["heartbeat_p99_busy_ms"] = percentile(busy_heartbeats, 0.99)
        reconciles = [p.reconcile for p in result.phases if p.reconcile is not None]
        maxima = [r.max_s for r in reconciles if r.max_s is not None]
        figures["reconcile_max_run_s"] = max(maxima) if maxima else None
        figures["manager_rss_mb_max"] = max(p.manager_rss_mb for p in result.phases)
        everything = self.answers.counts + self.agent_answers
        table: dict[str, Counter[str]] = {}
        for (endpoint, outcome), count in everything.items():
            row = table.setdefault(endpoint, Counter())
            if outcome.startswith("2"):
                row["ok"] += count
            elif outcome in ("500", "503"):
                row[outcome] += count
            elif outcome.isdigit():
                row["other"] += count
            else:
                row["transport"] += count
        result.answers = {endpoint: dict(row) for endpoint, row in sorted(table.items())}
        figures["non_2xx"] = float(
            sum(r.get("500", 0) + r.get("503", 0) + r.get("other", 0) for r in table.values())
        )
        figures["http_500"] = float(sum(r.get("500", 0) for r in table.values()))
        figures["http_503"] = float(sum(r.get("503", 0) for r in table.values()))
        figures["agent_errors"] = float(
            sum(n for (_, outcome), n in self.agent_answers.items() if not outcome.startswith("2"))
        )
        result.manager_log = read_manager_log([manager.log for manager in self.managers])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _delta(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


async def _statements_available(pool: asyncpg.Pool) -> bool:
    preload = str(await pool.fetchval("SHOW shared_preload_libraries"))
    if "pg_stat_statements" not in preload:
        return False
    try:
        await pool.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    except asyncpg.PostgresError:
        return False
    return True


async def create_bench_database(servers: Servers) -> str:
    """A fresh database on the local Postgres, dropped when the run's servers stop."""
    name = f"ik_bench_{os.getpid()}_{secrets.token_hex(3)}"
    await _server_sql(f'CREATE DATABASE "{name}"')
    # Runs after the event loop of the size has ended (Servers.stop_all), Ctrl-C included.
    servers.cleanups.append(
        lambda: asyncio.run(_server_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    )
    return urlsplit(DATABASE_SERVER)._replace(path=f"/{name}").geturl()


async def _server_sql(statement: str) -> None:
    connection = await asyncpg.connect(DATABASE_SERVER)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def read_manager_log(paths: list[Path]) -> dict[str, Any]:
    """Lines by level, and the most frequent warnings and errors, over the Managers' logs."""
    levels: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    lines: list[str] = []
    for path in paths:
        with contextlib.suppress(OSError):
            lines.extend(path.read_text(errors="replace").splitlines())
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            levels["other"] += 1
            continue
        if not isinstance(entry, dict):
            continue
        level = str(entry.get("level", "?"))
        levels[level] += 1
        if level in ("warning", "error", "critical"):
            problems[f"{level}: {str(entry.get('message', ''))[:160]}"] += 1
    return {"lines_by_level": dict(levels), "top_problems": problems.most_common(5)}


# ---------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str  # "ms", "s", "/s", "MB", "cores", "n"
    target: float | None = None
    at_least: bool = False


# The issue's targets beside the figures; the others give them context.
ROWS = (
    Row("create_rate_per_s", "creates per second (burst, 32 in flight)", "/s", 200, at_least=True),
    Row("create_burst_p50_ms", "create p50 (burst)", "ms"),
    Row("create_burst_p99_ms", "create p99 (burst)", "ms"),
    Row("ready_after_burst_s", "all ready, after the burst's end", "s"),
    Row("create_to_ready_p50_s", "create to ready p50 (per workload)", "s"),
    Row("create_to_ready_p99_s", "create to ready p99 (per workload)", "s"),
    Row("heartbeat_p50_ms", "heartbeat p50 (steady)", "ms"),
    Row("heartbeat_p99_ms", "heartbeat p99 (steady)", "ms", 50),
    Row("heartbeat_manager_p99_ms", "  of which in the Manager, p99 (in its bucket)", "ms"),
    Row("heartbeat_lone_p50_ms", "  one agent alone in its process: p50 (steady)", "ms"),
    Row("heartbeat_lone_p99_ms", "  one agent alone in its process: p99 (steady)", "ms", 50),
    Row("heartbeat_p99_busy_ms", "heartbeat p99 (create + converge)", "ms"),
    Row("reconcile_p50_s", "reconcile pass p50 (steady)", "s"),
    Row("reconcile_max_s", "reconcile pass max (steady)", "s", 1.0),
    Row("reconcile_max_run_s", "reconcile pass max (whole run)", "s"),
    Row("list_p50_ms", "list all workloads p50 (steady)", "ms"),
    Row("list_manager_p99_ms", "  in the Manager, p99 (its bucket, pages too)", "ms"),
    Row("list_p99_ms", "list all workloads p99 (steady)", "ms", 200),
    Row("list_alone_afresh_ms", "  the fleet stopped: a list written afresh", "ms"),
    Row("list_alone_kept_ms", "  the fleet stopped: a list as kept", "ms"),
    Row("list_mb", "list answer size", "MB"),
    Row("page_p50_ms", f"a page (up to {PAGE_SIZE:,}) p50 (steady)", "ms"),
    Row("page_p99_ms", f"a page (up to {PAGE_SIZE:,}) p99 (steady)", "ms", 200),
    Row("pages_alone_ms", "  the fleet stopped: every page, in turn", "ms"),
    Row("get_p50_ms", "get p50 (steady)", "ms"),
    Row("get_manager_p99_ms", "  of which in the Manager, p99 (in its bucket)", "ms"),
    Row("get_p99_ms", "get p99 (steady)", "ms", 50),
    Row("create_p50_ms", "create p50 (steady)", "ms"),
    Row("create_manager_p99_ms", "  of which in the Manager, p99 (in its bucket)", "ms"),
    Row("create_p99_ms", "create p99 (steady)", "ms", 50),
    Row("patch_p50_ms", "patch description p50 (steady)", "ms"),
    Row("patch_manager_p99_ms", "  of which in the Manager, p99 (in its bucket)", "ms"),
    Row("patch_p99_ms", "patch description p99 (steady)", "ms"),
    Row("change_effect_p50_s", "change → effect p50 (steady: a replica written)", "s"),
    Row("change_effect_p99_s", "change → effect p99 (steady)", "s", 1.0),
    Row("rolling_effect_p99_s", "  rolling patch → new generation's replica p99", "s"),
    Row("create_effect_p99_s", "  create → first replica p99", "s"),
    Row("handover_leader_s", "kill the leader → a survivor leads", "s", HANDOVER_TARGET_S),
    Row("handover_placed_s", "kill → first create after it has a replica", "s", HANDOVER_TARGET_S),
    Row("handover_ready_s", "kill → that create ready (engine load 1 s included)", "s"),
    Row("handover_acknowledged", "creates acknowledged before the handover's end", "n"),
    Row("handover_found", "  of which there afterwards", "n"),
    Row("handover_ready", "  of which ready afterwards", "n"),
    Row("handover_lost", "acknowledged creates lost", "n", 0),
    Row("handover_not_ready", "acknowledged creates not ready after handover", "n", 0),
    Row("changed", "workloads patched, and as many deleted", "n"),
    Row("patch_effect_p50_s", "patch to rolled p50 (new command ready, old gone)", "s"),
    Row("patch_effect_max_s", "patch to rolled max", "s"),
    Row("delete_effect_p50_s", "delete to no replica left p50", "s"),
    Row("delete_effect_max_s", "delete to no replica left max", "s"),
    Row("change_done_after_burst_s", "all changes done, after the burst's end", "s"),
    Row("manager_cpu_cores_busy", "Manager CPU (create + converge)", "cores"),
    Row("manager_cpu_cores_steady", "Manager CPU (steady)", "cores"),
    Row("db_cpu_cores_steady", "its Postgres backends' CPU (steady)", "cores"),
    Row("manager_rss_mb_max", "Manager RSS (largest at a phase end)", "MB"),
    Row("manager_loop_lag_p99_ms", "Manager's event loop lag p99 (steady)", "ms"),
    Row("manager_gc_s_steady", "Manager's garbage collections (steady), in all", "s"),
    Row("manager_gc_full_steady", "  of which full ones", "n"),
    Row("manager_gc_full_max_ms_steady", "  the longest full one, at most", "ms"),
    Row("agent_loop_lag_p99_ms", "simulated agents' loop lag p99 (steady)", "ms"),
    Row("non_2xx", "non-2xx answers, all endpoints", "n"),
    Row("http_500", "  of which 500", "n"),
    Row("http_503", "  of which 503", "n"),
    Row("agent_errors", "agent-side errors (non-2xx, transport, invalid)", "n"),
)


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("/s", "n"):
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def verdict(row: Row, figures: dict[str, float | None]) -> str | None:
    """ "met" or "MISSED" against the row's target; None without a target or a figure."""
    value = figures.get(row.key)
    if row.target is None or value is None:
        return None
    if row.key == "reconcile_max_s" and figures.get("reconcile_over_1s_steady"):
        return "MISSED"  # the histogram's 1 s bucket says so, whatever the scrape means show
    met = value >= row.target if row.at_least else value <= row.target
    return "met" if met else "MISSED"


# A process this busy (in cores) is what the phase waits for.
SATURATED = 0.85
# A kind of turn whose p99 wait is this long bounds its phase (manager/admission.py).
TURNS_BOUND_MS = 250.0


def bound_of(phase: PhaseFigures, processes: int = 1) -> str:
    """What the phase was bound by: the machine's cores all busy (the Manager, Postgres, the
    simulated fleet and the bench share them), a Manager at its processes' cores (each
    process's event loop runs on one), its busiest process's event loop occupied most of the
    phase though part of it waiting for a core (the cores shared, though not all busy),
    Postgres at a core, or the agents' database slots or the API's turns (their waits' p99 past
    ``TURNS_BOUND_MS``); else, nothing saturated, the turns of the busiest process's event
    loop, which every request waits for at each await: with how much of the phase that loop was
    occupied (running, or waiting for a core), how long turns were waited for, how late the
    loop ran and how busy the machine's cores were."""
    if not phase.wall_s:
        return "-"
    busiest = max(
        (m.cpu_s / phase.wall_s for m in phase.managers),
        default=phase.manager_cpu_s / phase.wall_s,
    )
    database = (phase.db_cpu_s or 0.0) / phase.wall_s
    known = (phase.manager_cpu_s + (phase.db_cpu_s or 0.0) + (phase.agents_cpu_s or 0.0)) / (
        phase.wall_s
    )
    # The whole machine where /proc/stat says (the bench's own process, Postgres's background
    # ones and anything else included), else the processes the bench knows of.
    total = known if phase.machine_cores is None else max(known, phase.machine_cores)
    cores = os.cpu_count() or 1
    if total >= SATURATED * cores:
        return f"the machine ({total:.2f} of {cores} cores: {_cores_by_process(phase)})"
    one = phase.busiest_process_cores
    ran, waited, _ = phase.loop_time
    if (
        processes == 1
        and ran is not None
        and waited is not None
        and ran < SATURATED <= ran + waited
    ):
        # Runnable (running or waiting for a core) most of the phase: saturated as surely as a
        # process at its core, by cores it could not have.
        return (
            f"the machine's cores, shared ({_occupied(phase)}; all {total:.2f} of {cores} cores: "
            f"{_cores_by_process(phase)}{_pressure(phase)})"
        )
    if processes == 1 and one is not None:
        # One serving process, perhaps beside the reconciler's own: is one of them at its core?
        if one >= SATURATED:
            others = (
                f"; all its processes {busiest:.2f}"
                if len(phase.managers) <= 1 and busiest - one >= 0.01
                else ""
            )
            return f"Manager process ({one:.2f} of its one core{others})"
    elif busiest >= SATURATED * processes:
        held = "its one core" if processes == 1 else f"its {processes} processes' cores"
        return f"Manager process ({busiest:.2f} of {held})"
    if database >= SATURATED:
        return f"Postgres ({database:.2f} cores)"
    cpu = f"all {total:.2f} of {cores} cores: {_cores_by_process(phase)}"
    for kind, what in (("agent", "the agents' database slots"), ("api", "the API's turns")):
        waits = phase.admission_waits.get(kind)
        if waits is not None and (waits[2] or 0.0) >= TURNS_BOUND_MS:
            holds = phase.admission_holds.get(kind)
            held = (
                ""
                if holds is None or holds[1] is None or holds[2] is None
                else f", each held {holds[1]:,.0f} ms at p50 and {holds[2]:,.0f} ms at p99"
            )
            return (
                f"{what} (waited {waits[2]:,.0f} ms at p99{held}; {_occupied(phase, '; ')}{cpu}"
                f"{_pressure(phase)})"
            )
    turn_waits = max((w[2] or 0.0 for w in phase.admission_waits.values()), default=None)
    turns = "" if turn_waits is None else f"turns waited {turn_waits:,.0f} ms at p99 at most; "
    lag = phase.manager_loop_lag_p99_ms
    loop = "" if lag is None else f"the event loop {lag:,.0f} ms late at p99; "
    return (
        f"turns of the busiest Manager process's event loop, which every request waits for at "
        f"each await; nothing saturated ({_occupied(phase, '; ')}{turns}{loop}{cpu}"
        f"{_pressure(phase)})"
    )


def _occupied(phase: PhaseFigures, then: str = "") -> str:
    """How much of the phase the busiest Manager process's event loop was occupied: running,
    or runnable and waiting for a core; "" where not measured."""
    ran, waited, each = phase.loop_time
    if ran is None or waited is None:
        return ""
    average = "" if each is None else f", {each:.1f} ms a time on average"
    return (
        f"the busiest Manager process's event loop occupied {ran + waited:.2f} of the time: "
        f"it ran {ran:.2f} and waited for a core {waited:.2f}{average}{then}"
    )


def _cores_by_process(phase: PhaseFigures) -> str:
    """Who used the machine's cores in the phase: the Managers (the busiest one), Postgres's
    backends for them, the simulated fleet, the bench's driver, and the rest of the machine
    (Postgres's own processes, the lone agent, the kernel) where /proc/stat says."""
    wall_s = phase.wall_s
    busiest = max((m.cpu_s for m in phase.managers), default=phase.manager_cpu_s)
    shares = [
        ("the Manager" if len(phase.managers) <= 1 else "the Managers", phase.manager_cpu_s),
        ("Postgres's backends", phase.db_cpu_s),
        ("the simulated fleet", phase.agents_cpu_s),
        ("the bench's driver", phase.driver_cpu_s),
    ]
    known = sum(cpu_s or 0.0 for _, cpu_s in shares)
    parts = [f"{name} {cpu_s / wall_s:.2f}" for name, cpu_s in shares if cpu_s is not None]
    if len(phase.managers) > 1:
        parts[0] += f" (the busiest {busiest / wall_s:.2f})"
    text = ", ".join(parts)
    if phase.machine_cores is not None:
        text += f", the rest {max(0.0, phase.machine_cores - known / wall_s):.2f}"
    return text


def _pressure(phase: PhaseFigures) -> str:
    shares = []
    if phase.cpu_pressure_share is not None:
        shares.append(f"some task waiting for a core {phase.cpu_pressure_share:.0%} of the time")
    if phase.steal_share is not None and phase.steal_share >= 0.005:
        shares.append(f"{phase.steal_share:.0%} of the CPU taken by the host")
    return "".join(f"; {share}" for share in shares)


# Which phase each target is measured in: its bound is that phase's.
TARGET_PHASES = {
    "create_rate_per_s": "create",
    "heartbeat_p99_ms": "steady",
    "heartbeat_lone_p99_ms": "steady",
    "reconcile_max_s": "steady",
    "list_p99_ms": "steady",
    "page_p99_ms": "steady",
    "get_p99_ms": "steady",
    "create_p99_ms": "steady",
    "change_effect_p99_s": "steady",
}


def missed_targets(result: SizeResult) -> list[str]:
    """Each missed target with what bounds it: its phase's bound, and where the run measured
    more than that, what it measured (the fleet's own lag; the list written alone)."""
    figures = result.figures
    phases = {phase.name: phase for phase in result.phases}
    lone = figures.get("heartbeat_lone_p99_ms")
    lines = []
    for row in ROWS:
        if verdict(row, figures) != "MISSED":
            continue
        value = _number(figures.get(row.key), row.unit)
        what = f"{row.label.strip()} {value}" + ("" if row.unit == "n" else f" {row.unit}")
        phase = phases.get(TARGET_PHASES.get(row.key, ""))
        bound = "" if phase is None else f"; {phase.name}: {bound_of(phase, result.processes)}"
        if row.key == "heartbeat_p99_ms" and lone is not None and lone <= (row.target or 0):
            lag = _number(figures.get("agent_loop_lag_p99_ms"), "ms")
            lines.append(
                f"{what}: the simulated fleet's own loop ({lag} ms late at p99; one agent alone "
                f"in its process {_number(lone, 'ms')} ms, met){bound}"
            )
        elif row.key == "list_p99_ms" and figures.get("list_alone_afresh_ms") is not None:
            alone = _number(figures.get("list_alone_afresh_ms"), "ms")
            kept = _number(figures.get("list_alone_kept_ms"), "ms")
            lines.append(
                f"{what}: the slowest list is one written afresh, {alone} ms with the fleet "
                f"stopped ({kept} ms as kept); the rest is its pieces waiting for turns of the "
                f"serving process's event loop, shared with the fleet's requests{bound}"
            )
        else:
            lines.append(f"{what}{bound}")
    return lines


def summary_table(results: list[SizeResult]) -> str:
    headers = [
        f"{r.agents}x{r.workloads}"
        + (f" K={r.managers}" if r.managers > 1 else "")
        + (f" P={r.processes}" if r.processes > 1 else "")
        for r in results
    ]
    lines = [
        f"  {'figure':<52}{'target':>12}" + "".join(f"{h:>18}" for h in headers),
    ]
    for row in ROWS:
        if row.key.startswith("handover_") and all(row.key not in r.figures for r in results):
            continue  # no --kill-leader
        target = ""
        if row.target is not None:
            unit = "" if row.unit in ("/s", "n") else f" {row.unit}"
            sign = ">=" if row.at_least else "<="
            target = f"{sign} {_number(row.target, row.unit)}{unit}"
        cells = []
        for result in results:
            value = result.figures.get(row.key)
            if (
                row.key.startswith("reconcile_")
                and value is None
                and not _reconcile_exposed(result)
            ):
                cells.append("not exposed")
                continue
            mark = verdict(row, result.figures)
            cells.append(_number(value, row.unit) + (f" {mark}" if mark else ""))
        label = f"{row.label} ({row.unit})" if row.unit not in ("n",) else row.label
        lines.append(f"  {label:<52}{target:>12}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def _reconcile_exposed(result: SizeResult) -> bool:
    return any(phase.reconcile is not None for phase in result.phases)


def phase_table(result: SizeResult) -> str:
    headers = (
        f"  {'phase':<10}{'wall s':>8}{'mgr CPU s':>10}{'cores':>7}{'1 proc':>7}{'RSS MB':>8}"
        f"{'DB CPU s':>9}{'bench s':>8}{'machine':>8}"
        f"{'agents CPU s':>13}{'hb n':>7}{'hb p50':>8}{'hb p99':>8}{'hb max':>8}{'in mgr':>8}"
        f"{'lag p99':>8}{'mgr lag':>8}{'gc s':>6}{'full gc':>8}{'<= ms':>7}"
        f"{'passes':>7}{'pass p50':>9}{'pass max':>9}{'max <=':>7}{'queue':>7}{'q max':>7}"
        f"{'loop':>6}{'core w':>7}{'a wait':>7}{'steal':>7}{'psi':>6}"
        f"{'errors':>7}  workers"
    )
    lines = [headers]
    for p in result.phases:
        r = p.reconcile
        workers = ", ".join(f"{state} {n}" for state, n in sorted(p.workers_by_state.items()))
        lines.append(
            f"  {p.name:<10}{p.wall_s:>8.1f}{p.manager_cpu_s:>10.2f}"
            f"{p.manager_cpu_s / p.wall_s if p.wall_s else 0:>7.2f}"
            f"{_number(p.busiest_process_cores, 'cores'):>7}{p.manager_rss_mb:>8.0f}"
            f"{_number(p.db_cpu_s, 's'):>9}{_number(p.driver_cpu_s, 's'):>8}"
            f"{_number(p.machine_cores, 'cores'):>8}{_number(p.agents_cpu_s, 's'):>13}"
            f"{p.heartbeat_ms.count:>7}{_number(p.heartbeat_ms.p50, 'ms'):>8}"
            f"{_number(p.heartbeat_ms.p99, 'ms'):>8}{_number(p.heartbeat_ms.max, 'ms'):>8}"
            f"{_number(p.manager_heartbeat_ms[1], 'ms'):>8}"
            f"{_number(p.agent_loop_lag_p99_ms, 'ms'):>8}"
            f"{_number(p.manager_loop_lag_p99_ms, 'ms'):>8}"
            f"{_number(p.gc_s, 's'):>6}{_number(p.gc_full, 'n'):>8}"
            f"{_number(p.gc_full_max_le_ms, 'n'):>7}"
            f"{(r.passes if r else '-')!s:>7}{_number(r.p50_s if r else None, 's'):>9}"
            f"{_number(r.max_s if r else None, 's'):>9}"
            f"{_number(r.max_bucket_le if r else None, 's'):>7}"
            f"{_number(p.accept_queue[0], 'n'):>7}{_number(p.accept_queue[1], 'n'):>7}"
            f"{_number(p.loop_time[0], 'cores'):>6}{_number(p.loop_time[1], 'cores'):>7}"
            f"{_number(p.loop_time[2], 'ms'):>7}"
            f"{_share(p.steal_share):>7}{_share(p.cpu_pressure_share):>6}"
            f"{p.errors:>7}  {workers}"
        )
    return "\n".join(lines)


def admission_table(result: SizeResult) -> str:
    """Per phase and kind of turn (an agent request's database slot, a heartbeat's worker turn,
    a control-API request's turn): how many, and how long they waited; then, for the agents'
    slots and the API's turns, how long each was held."""
    held = ("agent", "api")
    lines = [
        f"  {'phase':<10}"
        + "".join(f"{'wait ' + kind:>26}" for kind in ADMISSION_KINDS)
        + "".join(f"{'held ' + kind:>22}" for kind in held)
    ]

    def cell(figures: tuple[int, float | None, float | None] | None) -> str:
        if figures is None:
            return "-"
        count, p50, p99 = figures
        return f"{count} {_number(p50, 'ms')} / {_number(p99, 'ms')}"

    for p in result.phases:
        waits = "".join(f"{cell(p.admission_waits.get(kind)):>26}" for kind in ADMISSION_KINDS)
        holds = "".join(f"{cell(p.admission_holds.get(kind)):>22}" for kind in held)
        lines.append(f"  {p.name:<10}" + waits + holds)
    return "\n".join(lines)


def managers_table(result: SizeResult) -> str:
    """Each Manager's CPU seconds, cores and RSS (MB, at the phase's end), and who led."""
    names = [m.name for m in result.phases[0].managers] if result.phases else []
    lines = [f"  {'phase':<10}" + "".join(f"{name:>24}" for name in names) + "  leader"]
    for p in result.phases:
        cells = [
            f"{m.cpu_s:.2f} s {m.cpu_s / p.wall_s if p.wall_s else 0:.2f} c {m.rss_mb:.0f} MB"
            for m in p.managers
        ]
        leaders = " then ".join(p.leaders) or "-"
        lines.append(f"  {p.name:<10}" + "".join(f"{c:>24}" for c in cells) + f"  {leaders}")
    return "\n".join(lines)


def answers_table(result: SizeResult) -> str:
    lines = [f"  {'endpoint':<20}{'2xx':>9}{'500':>7}{'503':>7}{'other':>7}{'transport':>10}"]
    for endpoint, row in result.answers.items():
        lines.append(
            f"  {endpoint:<20}{row.get('ok', 0):>9}{row.get('500', 0):>7}{row.get('503', 0):>7}"
            f"{row.get('other', 0):>7}{row.get('transport', 0):>10}"
        )
    return "\n".join(lines)


def print_report(results: list[SizeResult], environment: dict[str, str]) -> None:
    print()
    print("Set-up")
    print("\n".join(f"  {key}: {value}" for key, value in environment.items()))
    for result in results:
        interval = result.heartbeat_interval_s
        print()
        print(
            f"Phases, {result.agents} agents x {GPUS_PER_AGENT} GPUs, {result.workloads} "
            f"workloads (heartbeat every {interval:g} s; latencies in ms, passes in s; cores: "
            f"the Managers' processes together, 1 proc: the busiest one; bench s: the bench's "
            f"driver; machine: cores busy on the whole machine; loop, core w: the share of the "
            f"phase the busiest one's event loop ran and waited for a core, a wait: ms each; "
            f"steal: the host's share of the machine's CPU; psi: the share of the time some "
            f"task waited for a core)"
            if interval
            else f"Phases, {result.agents} agents, {result.workloads} workloads"
        )
        print(phase_table(result))
        if result.managers > 1:
            print("Each Manager: CPU s, cores, RSS at the phase's end; who held the leader lock")
            print(managers_table(result))
        if any(p.admission_waits for p in result.phases):
            print(
                "Turns in the Managers: waits (turns taken or shed; p50 / p99 ms) and holds"
                " (turns given, from the turn to its release; p50 / p99 ms)"
            )
            print(admission_table(result))
        timed = [(p.name, p.db_exec_ms) for p in result.phases if p.db_exec_ms is not None]
        if timed:
            shown = ", ".join(f"{name} {ms:,.0f} ms" for name, ms in timed)
            print(f"Postgres statement time in the bench database (pg_stat_statements): {shown}")
        print("Answers by endpoint (the agents' and the bench's own)")
        print(answers_table(result))
        log = result.manager_log
        print(f"Manager log lines by level: {log.get('lines_by_level', {})}")
        for problem, count in log.get("top_problems", []):
            print(f"  {count} x {problem}")
        for note in result.notes:
            print(f"  note: {note}")
    print()
    print("Figures and the issue's targets")
    print(summary_table(results))
    print()
    print("What bounds each phase (the first saturated of: the machine's cores, shared by the")
    print("Manager, Postgres, the simulated fleet and the bench; a Manager's processes' cores;")
    print("its busiest process runnable most of the phase, running or waiting for a core;")
    print("Postgres; the agents' database slots; the API's turns)")
    for result in results:
        bounds = "; ".join(
            f"{phase.name} {bound_of(phase, result.processes)}" for phase in result.phases
        )
        print(f"  {result.agents}x{result.workloads}: {bounds}")
    print()
    print("Targets missed, and what bounds each")
    for result in results:
        missed = missed_targets(result) or ["none"]
        print(f"  {result.agents}x{result.workloads}:")
        print("\n".join(f"    {line}" for line in missed))


# ---------------------------------------------------------------------------------------------
# Run


def describe_environment(settings: Settings, load_at_start: tuple[float, ...]) -> dict[str, str]:
    periods = ", ".join(f"{kind} every {s:g} s" for kind, s in SAMPLE_PERIODS_S.items())
    interval = settings.heartbeat_interval_s
    return {
        "cpus": str(os.cpu_count()),
        # Other work on the machine shows in every latency: say how busy it was.
        "load average at start (1, 5, 15 min)": " ".join(f"{load:.2f}" for load in load_at_start),
        "database server": DATABASE_SERVER,
        "heartbeat interval": f"{interval:g} s (--heartbeat-interval)"
        if interval
        else "the Manager's default",
        "steady state": f"{settings.steady_s:g} s; {periods}, one request at a time each",
        "change": f"{settings.change_fraction:.0%} patched to a new command, as many deleted",
        "Managers": f"{settings.managers} on the one database"
        + (", the leader killed after the steady state" if settings.kill_leader else ""),
        "Manager settings added": " ".join(f"{k}={v}" for k, v in settings.manager_env.items())
        or "none",
        "simulated fleet's niceness": f"+{settings.fleet_nice} (--fleet-nice)"
        if settings.fleet_nice
        else "the bench's own",
    }


def raise_open_files_limit() -> None:
    """Two connections per agent, in our process and the Manager's (which inherits this)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def run(settings: Settings, json_path: Path | None) -> int:
    load_at_start = os.getloadavg()
    raise_open_files_limit()
    results: list[SizeResult] = []
    for agents, workloads in settings.sizes:
        with (
            tempfile.TemporaryDirectory(prefix="ik-bench-") as work,
            Servers(Path(work)) as servers,
        ):
            results.append(asyncio.run(Run(agents, workloads, settings, servers).run()))
    environment = describe_environment(settings, load_at_start)
    print_report(results, environment)
    if json_path is not None:
        report = {
            "environment": environment,
            "settings": asdict(settings),
            "sizes": [asdict(result) for result in results],
            "targets": {
                f"{r.agents}x{r.workloads}": {
                    row.key: verdict(row, r.figures) for row in ROWS if row.target is not None
                }
                for r in results
            },
        }
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {json_path}")
    return 0


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for part in text.split(","):
        agents, sep, workloads = part.strip().lower().partition("x")
        if not sep or not agents.isdigit() or not workloads.isdigit():
            raise argparse.ArgumentTypeError(f"expected AGENTSxWORKLOADS, e.g. 1000x3000: {part!r}")
        sizes.append((int(agents), int(workloads)))
    return tuple(sizes)


def parse_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("INFERENCEKEY_"):
        raise argparse.ArgumentTypeError(f"expected INFERENCEKEY_NAME=VALUE, got {text!r}")
    return name, value


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # Turn SIGTERM into SystemExit so that the `with Servers()` block stops what it started.
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000, help="simulated agents (default 1000)")
    parser.add_argument("--workloads", type=int, default=10000, help="workloads (default 10000)")
    parser.add_argument("--steady-s", type=float, help="steady-state seconds (default 60)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="50 agents, 300 workloads, 15 s steady: under two minutes on 2 cores",
    )
    parser.add_argument(
        "--sizes", type=parse_sizes, help="AGENTSxWORKLOADS pairs run in a row: 1000x1000,1000x3000"
    )
    parser.add_argument(
        "--heartbeat-interval", type=float, help="the Manager's heartbeat interval, in seconds"
    )
    parser.add_argument(
        "--change-fraction",
        type=float,
        default=0.1,
        help="share of the workloads patched, and as many deleted, at the end (default 0.1)",
    )
    parser.add_argument(
        "--manager-env",
        type=parse_env,
        action="append",
        default=[],
        metavar="INFERENCEKEY_NAME=VALUE",
        help="a Manager setting to add (repeatable), e.g. INFERENCEKEY_DB_POOL_SIZE=20",
    )
    parser.add_argument(
        "--managers", type=int, default=1, help="Managers on the one database (default 1)"
    )
    parser.add_argument(
        "--kill-leader",
        action="store_true",
        help="after the steady state, kill the leading Manager under load (needs --managers 2+)",
    )
    parser.add_argument(
        "--fleet-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the simulated fleet N nicer (0-19): it stands for other machines, and so gives "
        "way for the cores to the Manager and Postgres (default 0)",
    )
    parser.add_argument("--json", type=Path, help="write the raw figures to this file")
    args = parser.parse_args()
    if args.sizes:
        sizes = args.sizes
    elif args.quick:
        sizes = ((50, 300),)
    else:
        sizes = ((args.agents, args.workloads),)
    if any(agents < 1 or workloads < 1 for agents, workloads in sizes):
        parser.error("every size needs at least one agent and one workload")
    if not 0 < args.change_fraction <= 0.5:
        parser.error("--change-fraction must be in (0, 0.5]")
    if args.managers < 1:
        parser.error("--managers needs at least one")
    if not 0 <= args.fleet_nice <= 19:
        parser.error("--fleet-nice must be in 0..19")
    if args.kill_leader and args.managers < 2:
        parser.error("--kill-leader needs --managers 2 or more: someone must take over")
    steady_s = args.steady_s if args.steady_s is not None else (15.0 if args.quick else 60.0)
    settings = Settings(
        sizes=sizes,
        steady_s=steady_s,
        change_fraction=args.change_fraction,
        heartbeat_interval_s=args.heartbeat_interval,
        manager_env=dict(args.manager_env),
        managers=args.managers,
        kill_leader=args.kill_leader,
        fleet_nice=args.fleet_nice,
    )
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return run(settings, args.json)
    except KeyboardInterrupt:
        print("\ninterrupted; Manager stopped, agents stopped, database dropped", file=sys.stderr)
        return 130
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
