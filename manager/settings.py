"""Manager settings: flags override environment variables, which override defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ik_contracts.http_server import ServerLimits
from ik_contracts.protocol import AGENT_KEEPALIVE_S


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "inferencekey"


# No duration is sensibly longer (31 years); past it, time arithmetic overflows.
MAX_SECONDS = 1e9


def _number(name: str, raw: str, kind: type[int] | type[float], minimum: float) -> int | float:
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:  # NaN too
        raise ValueError(f"{name} must be at least {minimum:g}, got {raw!r}")
    if kind is float and not value <= MAX_SECONDS:  # inf too; the float settings are seconds
        raise ValueError(f"{name} must be at most {MAX_SECONDS:g}, got {raw!r}")
    return value


def port_number(name: str, raw: str) -> int:
    """A TCP port, 0 (any free one) to 65535; ValueError naming ``name`` otherwise."""
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a port number, got {raw!r}") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"{name} must be a port from 0 to 65535, got {raw!r}")
    return value


def host_and_port(name: str, raw: str) -> str:
    """``HOST:PORT`` (or ``:PORT``, on 127.0.0.1) as given, once its port is checked."""
    _host, colon, port = raw.rpartition(":")
    if not colon:
        raise ValueError(f"{name} must be HOST:PORT, got {raw!r}")
    port_number(name, port)
    return raw


# Numeric settings read from INFERENCEKEY_<NAME>: their type and smallest sensible value.
_NUMBERS: dict[str, tuple[type[int] | type[float], float]] = {
    "processes": (int, 1),
    "max_replicas_per_workload": (int, 1),
    "db_pool_size": (int, 1),
    "db_max_overflow": (int, 0),
    "db_pool_timeout_s": (float, 0.1),
    "db_credential_pool_size": (int, 1),
    "auth_failures_per_window": (int, 1),
    "auth_failure_window_s": (float, 0.1),
    "worker_not_ready_after_s": (float, 0.1),
    "worker_lost_after_s": (float, 0.1),
    "worker_silence_share": (float, 0.01),
    "worker_silence_fleet": (int, 1),
    "heartbeat_interval_s": (float, 0.1),
    "agent_max_concurrent_db": (int, 1),
    "agent_admission_wait_s": (float, 0),
    "agent_retry_after_s": (int, 1),
    "api_max_concurrent": (int, 1),
    "api_admission_wait_s": (float, 0),
    "reconcile_interval_s": (float, 0.1),
    "reconcile_resync_s": (float, 0.1),
    "gateway_first_byte_timeout_s": (float, 0.1),
    "gateway_idle_timeout_s": (float, 0.1),
    "gateway_wake_timeout_s": (float, 0.1),
    "gateway_routes_resync_s": (float, 0.1),
    "autoscale_scale_down_delay_s": (float, 0),
    "autoscale_idle_s": (float, 0),
    "jobs_per_replica": (int, 1),
    "job_lease_s": (float, 1),
    "job_max_attempts": (int, 1),
    "webhook_timeout_s": (float, 0.1),
    "webhook_lease_s": (float, 1),
    "webhook_concurrency": (int, 1),
    "webhook_max_binary_bytes": (int, 0),
    "custom_backend_max_bytes": (int, 1),
}
# Webhook retry delays (seconds between attempts 1-2, 2-3, ...): the contract's schedule.
DEFAULT_WEBHOOK_RETRY_DELAYS_S = (60.0, 300.0, 900.0, 3600.0, 21600.0)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(name: str, raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false (1 or 0), got {raw!r}")


def retry_delays(name: str, raw: str) -> tuple[float, ...]:
    """``"60,300,900"`` -> ``(60.0, 300.0, 900.0)``: at least one, none negative."""
    delays = tuple(float(_number(name, part.strip(), float, 0)) for part in raw.split(","))
    if not delays:
        raise ValueError(f"{name} needs at least one delay")
    return delays


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@dataclass
class Settings:
    """Everything the Manager process is configured with.

    ``database_url`` None means: run the embedded Postgres in ``data_dir``.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    admin_token: str | None = None
    max_body_bytes: int = 1024 * 1024
    run_migrations: bool = True
    # Processes serving one port (manager/processes.py): one per core the Manager may use.
    processes: int = 1
    # The reconciler in a process of its own beside one serving process (with processes > 1 it
    # always has one): its passes then take no turn of the loop that answers the agents and the
    # API. For a fleet of hundreds of agents on a machine of two cores or more.
    reconciler_process: bool = False
    # The agent protocol at fleet scale (docs/DESIGN.md): an agent heartbeats every
    # heartbeat_interval_s, and at once when a replica changes state (assignments reach it by
    # long-poll, not by heartbeat). A worker silent for worker_not_ready_after_s (three
    # intervals: two lost heartbeats and a retry are no outage) gets nothing new and no traffic;
    # after worker_lost_after_s its replicas are placed elsewhere.
    worker_not_ready_after_s: float = 30.0
    worker_lost_after_s: float = 60.0
    # When at least this share of a fleet of at least worker_silence_fleet workers is silent at
    # once, the silence is more likely the Manager's (overloaded) or the network's than theirs:
    # no more of them is judged lost (their replicas stay) until fewer are silent. Kubernetes'
    # node controller slows or stops evicting on the same ground (--unhealthy-zone-threshold).
    worker_silence_share: float = 0.5
    worker_silence_fleet: int = 10
    heartbeat_interval_s: float = 10.0
    # Agent requests of this process that may use the database at once, and how long one waits
    # for its turn before it is answered 503 overloaded (Retry-After: agent_retry_after_s).
    agent_max_concurrent_db: int = 8
    agent_admission_wait_s: float = 0.5
    agent_retry_after_s: int = 2
    # Control-API requests (/api, not the agent protocol) this process works on at once; the
    # others wait their turn, past api_admission_wait_s answered 503 overloaded. Enough to keep
    # the database busy (4 halved a burst's creates per second: each waits on its commit); more
    # only lengthen each turn of the event loop, the agents' too.
    api_max_concurrent: int = 16
    api_admission_wait_s: float = 10.0  # well within a client's timeout (the SDK's is 30 s)
    # The reconciler runs on every change it is told of, and at least this often.
    reconcile_interval_s: float = 2.0
    # The reconcile leader reads only what notifications name between full reads of everything,
    # this often (a safety net: a change no notification named takes effect within this).
    reconcile_resync_s: float = 60.0
    run_reconciler: bool = True
    # Data-plane gateway: long waits for the first token; a cap on request bodies.
    gateway_connect_timeout_s: float = 5.0
    gateway_first_byte_timeout_s: float = 600.0
    gateway_idle_timeout_s: float = 300.0
    gateway_max_body_bytes: int = 64 * 1024 * 1024
    # How long a request to an autoscaling workload with no ready replica is held while the
    # workload wakes (scale-from-zero) before it is answered 503.
    gateway_wake_timeout_s: float = 300.0
    # The gateway reads only the routes notifications name, and all of them this often (a change
    # no notification named reaches the data plane within this).
    gateway_routes_resync_s: float = 30.0
    # Autoscaling: replicas are removed only once the count has been stable this long, and a
    # workload with min_workers 0 goes to zero after this long without a request.
    autoscale_scale_down_delay_s: float = 300.0
    autoscale_idle_s: float = 600.0
    # Async jobs: at most this many run on one replica at a time from one Manager process (sync
    # requests are not bounded, so jobs never starve them); a job's lease, renewed while it runs,
    # after which another process may claim it; attempts before a job is failed for good.
    jobs_per_replica: int = 2
    job_lease_s: float = 60.0
    job_max_attempts: int = 5
    # Limits: no one workload, client or burst may stall the Manager (SECURITY.md).
    max_replicas_per_workload: int = 100
    # Database connections this process may hold, and how long a request waits for one before
    # it is answered 503 with Retry-After.
    db_pool_size: int = 20
    db_max_overflow: int = 10
    db_pool_timeout_s: float = 5.0
    # Connections of this process's pool for credential lookups (manager/db/direct.py): every
    # request's one statement before its admission slot, each held for a round trip.
    db_credential_pool_size: int = 4
    server_limits: ServerLimits = field(default_factory=ServerLimits.from_env)
    # HOST:PORT to serve /metrics on without a credential (on the main port it needs ik_admin_).
    metrics_address: str | None = None
    # Failed authentications one client address may make per window before it gets 429s.
    auth_failures_per_window: int = 30
    auth_failure_window_s: float = 10.0
    # Webhooks: only https and public addresses unless the operator allows private ones (on-prem
    # receivers); a delivery attempt's whole budget; the delays between attempts (after the last
    # one fails, the delivery is terminal); a claimed attempt's lease, after which another process
    # may send it; attempts one process sends at once; binary results larger than this are kept
    # for GET .../jobs/{id} and not delivered.
    webhook_allow_private: bool = False
    webhook_timeout_s: float = 3.0
    webhook_retry_delays_s: tuple[float, ...] = DEFAULT_WEBHOOK_RETRY_DELAYS_S
    webhook_lease_s: float = 30.0
    webhook_concurrency: int = 32
    webhook_max_binary_bytes: int = 1024 * 1024
    # The largest custom-backend package an upload may carry (POST .../custom-backends).
    custom_backend_max_bytes: int = 256 * 1024 * 1024

    def database_connections(self) -> int:
        """The most connections to the database this Manager opens, its processes together.

        Each serving process: its pool (db_pool_size + db_max_overflow), the agent requests'
        and the credential lookups' pools, and its LISTEN connection. The reconciler: a pool of
        two and the leader lock's, plus a LISTEN connection of its own when it has its own
        process (``supervised``). Start-up's migration closes its connection before these open.
        """
        serving = (
            self.db_pool_size
            + self.db_max_overflow
            + self.agent_max_concurrent_db
            + self.db_credential_pool_size
            + 1
        )
        reconciler = (4 if self.supervised else 3) if self.run_reconciler else 0
        return self.processes * serving + reconciler

    @property
    def supervised(self) -> bool:
        """Whether the Manager runs as processes under a supervisor (manager/processes.py):
        more than one serving process, or the reconciler in a process of its own. For the
        parent to read: a child's settings are the supervisor's with ``run_reconciler``
        changed, so they may say either; a child knows it is supervised by
        ``processes.metrics_directory()``."""
        return self.processes > 1 or (self.reconciler_process and self.run_reconciler)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``INFERENCEKEY_*`` variables; non-None ``overrides`` win."""
        values: dict[str, object] = {}
        if host := _env("INFERENCEKEY_HOST"):
            values["host"] = host
        if port := _env("INFERENCEKEY_PORT"):
            values["port"] = port_number("INFERENCEKEY_PORT", port)
        if url := _env("INFERENCEKEY_DATABASE_URL"):
            values["database_url"] = url
        if data_dir := _env("INFERENCEKEY_DATA_DIR"):
            values["data_dir"] = Path(data_dir)
        if token := _env("INFERENCEKEY_ADMIN_TOKEN"):
            values["admin_token"] = token
        if metrics_address := _env("INFERENCEKEY_METRICS_ADDRESS"):
            values["metrics_address"] = host_and_port(
                "INFERENCEKEY_METRICS_ADDRESS", metrics_address
            )
        if allow := _env("INFERENCEKEY_WEBHOOK_ALLOW_PRIVATE"):
            values["webhook_allow_private"] = _flag("INFERENCEKEY_WEBHOOK_ALLOW_PRIVATE", allow)
        if own := _env("INFERENCEKEY_RECONCILER_PROCESS"):
            values["reconciler_process"] = _flag("INFERENCEKEY_RECONCILER_PROCESS", own)
        if delays := _env("INFERENCEKEY_WEBHOOK_RETRY_DELAYS_S"):
            values["webhook_retry_delays_s"] = retry_delays(
                "INFERENCEKEY_WEBHOOK_RETRY_DELAYS_S", delays
            )
        for name, (kind, minimum) in _NUMBERS.items():
            if raw := _env(f"INFERENCEKEY_{name.upper()}"):
                values[name] = _number(f"INFERENCEKEY_{name.upper()}", raw, kind, minimum)
        values.update({k: v for k, v in overrides.items() if v is not None})
        share = values.get("worker_silence_share")
        if isinstance(share, int | float) and share > 1:
            raise ValueError(
                "INFERENCEKEY_WORKER_SILENCE_SHARE must be at most 1 (a share of the fleet), "
                f"got {share:g}"
            )
        if isinstance(values.get("data_dir"), str):
            values["data_dir"] = Path(str(values["data_dir"]))
        return cls(**values)  # type: ignore[arg-type]


def agent_connection_warnings(settings: Settings) -> list[str]:
    """What in ``settings`` breaks the agents' kept connection (AGENT_KEEPALIVE_S): a heartbeat
    interval past it opens a connection per heartbeat again, and a keep-alive not above it has
    this Manager close connections an agent is about to send on."""
    kept = AGENT_KEEPALIVE_S
    why = 'docs/DESIGN.md, "One connection each way, kept"'
    warnings = []
    if settings.heartbeat_interval_s >= kept:
        warnings.append(
            f"INFERENCEKEY_HEARTBEAT_INTERVAL_S is {settings.heartbeat_interval_s:g} s: an agent "
            f"keeps an idle connection {kept:g} s, so each heartbeat will open a new one, which "
            f"a busy Manager leaves waiting unseen; keep it under {kept:g} s ({why})"
        )
    if settings.server_limits.keepalive_timeout_s <= kept:
        warnings.append(
            "INFERENCEKEY_HTTP_KEEPALIVE_TIMEOUT_S is "
            f"{settings.server_limits.keepalive_timeout_s:g} s: an agent keeps an idle "
            f"connection {kept:g} s and may send a heartbeat on one this Manager is closing "
            f"(lost, then retried); keep it over {kept:g} s, and so a load balancer's idle "
            f"timeout ({why})"
        )
    return warnings


def asyncpg_url(url: str) -> str:
    """A SQLAlchemy URL for asyncpg, whatever Postgres URL form the operator gave."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url
