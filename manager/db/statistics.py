"""The planner's statistics of the tables the Manager's loops read, kept fresh by the leader.

Postgres plans a join by its statistics of each table, which ANALYZE gathers (autovacuum runs it
after enough changes, where it is on and has had its minute). Before they exist, or after a burst
of creates, the planner guesses: at 1,000 agents and 10,000 workloads on a server with
autovacuum off, it took the replicas that serve (two equality filters) for one row, and the
gateway's route read joined 10,000 workloads to 10,000 replicas by a nested loop: 14 s for the
full read, 17-97 ms for a few workloads, and Postgres was the bound of the whole run. So the
leading Manager looks every ``CHECK_EVERY_S`` at how much each of these tables changed since it
was last analyzed, and analyzes those that changed by more than autovacuum's default share.
"""

from __future__ import annotations

import logging
import time

import asyncpg

log = logging.getLogger(__name__)

# The tables the reconciler, the gateway's route table and the agent requests join.
FLEET_TABLES = ("workloads", "replicas", "workers", "gpu_resources", "projects")
CHECK_EVERY_S = 10.0
# Analyzed once this many rows changed since the last ANALYZE, plus this share of the live rows
# (autovacuum's defaults: 50 and 0.1).
MIN_CHANGES = 50
CHANGED_SHARE = 0.1

# The share is a float8 parameter: left to Postgres, $3 would be typed bigint, and the driver
# would send 0.1 as 0.
STALE = """
SELECT relname FROM pg_stat_user_tables
WHERE relid = ANY(CAST($1 AS TEXT[])::regclass[])
  AND n_mod_since_analyze >= $2 + CAST($3 AS FLOAT8) * GREATEST(n_live_tup, 0)
ORDER BY relname
"""
# An ANALYZE skips a table another holds (a VACUUM, a migration) rather than wait, and gives up
# after this long: the reconcile loop waits for it.
ANALYZE_TIMEOUT_S = 30.0


class PlannerStatistics:
    """Checks at most every ``CHECK_EVERY_S`` (``keep_fresh``)."""

    def __init__(
        self, min_changes: int = MIN_CHANGES, changed_share: float = CHANGED_SHARE
    ) -> None:
        self.min_changes = min_changes
        self.changed_share = changed_share
        self._next_check = 0.0

    async def keep_fresh(self, connection: asyncpg.Connection) -> list[str]:
        """ANALYZE each of ``FLEET_TABLES`` changed enough since it last was; the tables done."""
        now = time.monotonic()
        if now < self._next_check:
            return []
        self._next_check = now + CHECK_EVERY_S
        stale = [
            row["relname"]
            for row in await connection.fetch(
                STALE, list(FLEET_TABLES), self.min_changes, self.changed_share
            )
        ]
        if stale:  # names of FLEET_TABLES, as pg_stat_user_tables spells them
            tables = ", ".join(f'"{table}"' for table in stale)
            await connection.execute(f"ANALYZE (SKIP_LOCKED) {tables}", timeout=ANALYZE_TIMEOUT_S)
            log.info("asked Postgres to refresh the planner's statistics of %s", ", ".join(stale))
        return stale
