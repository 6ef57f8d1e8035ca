"""Prometheus metrics of one agent (prometheus-client), served without a credential on an
address of their own (``--metrics-listen``, INFERENCEKEY_AGENT_METRICS_LISTEN; off by default):
keep it on loopback or a network only Prometheus reaches."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from worker_agent.gpus import Inventory

log = logging.getLogger("inferencekey.agent")

# Proxy overheads are sub-millisecond; generations take minutes. Manager and agent alike.
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)
LATENCY_BUCKETS += (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_MB = 1024 * 1024


class MetricsServer:
    """A registry served without a credential on an address of its own (a thread)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: Any = None

    def serve(self, host: str, port: int) -> None:
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics served without a credential on http://%s:%d/metrics", host, port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


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
