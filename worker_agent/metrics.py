"""Prometheus metrics of one agent (prometheus-client), served without a credential on an
address of their own (``--metrics-listen``, INFERENCEKEY_AGENT_METRICS_LISTEN; off by default):
keep it on loopback or a network only Prometheus reaches."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ik_contracts.metrics import LATENCY_BUCKETS, MetricsServer
from worker_agent.gpus import Inventory

log = logging.getLogger("inferencekey.agent")

_MB = 1024 * 1024


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.engine_restarts = Counter(
            "inferencekey_agent_engine_restarts",
            "Engines restarted after they failed, by workload.",
            ["project", "workload"],
            registry=registry,
        )
        self.proxy_duration = Histogram(
            "inferencekey_agent_proxy_request_duration_seconds",
            "Requests relayed to an engine, from arrival to the last byte, by workload.",
            ["project", "workload"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        gpu = ["index", "uuid", "name", "source"]
        self.gpu_memory_used = Gauge(
            "inferencekey_agent_gpu_memory_used_bytes",
            "GPU memory in use.",
            gpu,
            registry=registry,
        )
        self.gpu_memory_total = Gauge(
            "inferencekey_agent_gpu_memory_total_bytes", "GPU memory.", gpu, registry=registry
        )
        self.gpu_utilization = Gauge(
            "inferencekey_agent_gpu_utilization_ratio",
            "GPU utilisation, 0 to 1 (NVML's, or the simulated inventory's figures).",
            gpu,
            registry=registry,
        )
        self.server = MetricsServer(registry)

    def observe_inventory(self, inventory: Inventory) -> None:
        for gauge in (self.gpu_memory_used, self.gpu_memory_total, self.gpu_utilization):
            gauge.clear()
        for gpu in inventory.gpus:
            labels = (str(gpu.index), gpu.uuid, gpu.name, inventory.source)
            self.gpu_memory_used.labels(*labels).set(gpu.memory_used_mb * _MB)
            self.gpu_memory_total.labels(*labels).set(gpu.memory_total_mb * _MB)
            self.gpu_utilization.labels(*labels).set(gpu.utilization_pct / 100)
