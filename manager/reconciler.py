"""The reconcile loop: compare desired with observed, act on the difference.

One Manager process leads at a time (a Postgres advisory lock held on its own connection); the
others wait to take over. Passes are level-triggered over the leader's copy of the fleet
(`manager.fleet`): each re-reads what notifications named since the last one; everything is read
every ``reconcile_resync_s`` (beside the passes), so a pass never depends on having seen an
earlier event.

A pass holds no row lock while it reads or decides ("Locking" in docs/DESIGN.md): it reads in one
transaction that locks nothing, asks `manager.planning` what each workload needs, and writes the
actions of up to ``WRITE_BATCH`` workloads per short transaction, skipping the rows an API write
holds. So an agent's heartbeat waits at most for one such transaction, never for a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from inferencekey.enums import WorkloadPhase
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ik_contracts.logs import ids
from ik_contracts.protocol import ReplicaState
from manager import notify, placement, planning
from manager.db.models import Replica, Worker, Workload
from manager.db.queries import one_of
from manager.db.statistics import PlannerStatistics
from manager.fleet import (
    ChangeLog,
    Changes,
    Fleet,
    WorkerRecord,
    is_settled,
    read_liveness,
    read_prices,
)
from manager.fleet import now as fleet_now
from manager.gateway.demand import fresh_demand
from manager.http_errors import database_unavailable
from manager.ids import new_id
from manager.jobs.dispatcher import queued_jobs
from manager.metrics import ManagerMetrics
from manager.policies import DemandFigures
from manager.services import events
from manager.settings import Settings
from manager.states import DesiredState, WorkerState
from manager.turns import Turns

log = logging.getLogger("inferencekey.reconciler")
LEADER_LOCK_KEY = 0x1C_0000_0003


NO_DEMAND = DemandFigures()


@dataclass
class Snapshot:
    """One pass's view of the world, read in one transaction and held as plain values:
    ``workloads`` are the ones this pass plans, ``replicas_by_workload`` every replica."""

    now: datetime
    workers: list[WorkerRecord]
    slots: list[placement.WorkerSlot]
    workloads: list[planning.WorkloadView]
    replicas_by_workload: dict[str, list[planning.ReplicaView]]
    demand: dict[str, DemandFigures]
    slot_of: dict[str, placement.WorkerSlot] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.slot_of = {slot.id: slot for slot in self.slots}


def with_jobs(demand: dict[str, DemandFigures], jobs: dict[str, int]) -> dict[str, DemandFigures]:
    """The gateways' figures with each workload's unfinished async jobs added."""
    merged = dict(demand)
    for workload_id, count in jobs.items():
        merged[workload_id] = replace(merged.get(workload_id, NO_DEMAND), queued_jobs=count)
    return merged


# Seconds the leader's own connection may take to answer before it is taken for lost.
LEADER_CHECK_S = 5.0


class CommitUnknown(Exception):
    """A pass's commit failed: what it wrote may be in the database or not."""


def _of_the_moment(error: BaseException) -> bool:
    """An error that is no workload's fault: a commit that may have happened, the database
    unavailable or dropping the connection, a deadlock or serialization failure. The pass is
    retried from a full read; nothing is quarantined."""
    return isinstance(error, CommitUnknown) or database_unavailable(error) is not None


# How bad a liveness state is: a new leader's grace holds back only changes for the worse.
_WORSE: dict[str, int] = {WorkerState.READY: 0, WorkerState.NOT_READY: 1, WorkerState.LOST: 2}

# Workloads whose actions one transaction writes: one commit for many (a burst of creates is
# placed at the speed of the statements, not of the commits).
WRITE_BATCH = 64

# The shortest time from one pass's start to the next one's: a change waits at most this long
# (plus a pass) to take effect, and a stream of changes costs at most a pass per gap.
MIN_PASS_GAP_S = 0.25


@dataclass(frozen=True)
class Resync:
    """The periodic full read, running beside the passes, and what was noted since it began.
    Its task gives the fleet it read and the workloads that differ from the copy kept."""

    since: Changes
    task: asyncio.Task[tuple[Fleet, set[str]]]


class Reconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        hub: notify.NotificationHub,
        settings: Settings,
        metrics: ManagerMetrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.hub = hub
        self.settings = settings
        self.metrics = metrics
        self._leader_connection: asyncpg.Connection | None = None
        # Workloads whose reconcile failed, by id, at the generation that failed.
        self._quarantined: dict[str, int] = {}
        # What notifications named since the last pass, and the fleet as passes last read it
        # (None: read everything at the next pass).
        self._changes = ChangeLog()
        hub.on(notify.RECONCILE, self._changes.note)
        self._fleet: Fleet | None = None
        self._fleet_read_at = 0.0
        # The resync's full read while it runs beside the passes, with what was noted since it
        # began (`_resynced`).
        self._resync: Resync | None = None
        self._dropped: set[asyncio.Task[tuple[Fleet, set[str]]]] = set()  # cancelled, not ended
        # Set when this Manager begins to lead: until then (a not-ready period after its first
        # pass) no worker is judged worse than the state it finds, so that agents that could
        # not reach any Manager (all were down) come back before their replicas are re-placed.
        self._grace_from_first_pass = False
        self._grace_until: datetime | None = None
        self._silence: tuple[int, int] | None = None  # (silent, fleet) while lost is held
        self._statistics = PlannerStatistics()

    async def run_forever(self) -> None:
        while True:
            try:
                if await self._lead():
                    with self.hub.subscription(notify.RECONCILE) as wake:
                        started = time.monotonic()
                        if await self.reconcile_once():
                            await self._keep_statistics_fresh()
                            await notify.wait_for(wake, self.settings.reconcile_interval_s)
                            # Changes coming in a stream (creates, patches, heartbeats that
                            # report new states) share passes: at most one per gap.
                            gap = started + MIN_PASS_GAP_S - time.monotonic()
                            if gap > 0:
                                await asyncio.sleep(gap)
                else:
                    self._changes.take()  # a follower keeps nothing: it reads all when it leads
                    await asyncio.sleep(self.settings.reconcile_interval_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed; retrying")
                await asyncio.sleep(self.settings.reconcile_interval_s)

    async def _keep_statistics_fresh(self) -> None:
        """The planner's statistics of the fleet's tables (manager/db/statistics.py), on the
        leader lock's connection; a failure is logged and the passes go on."""
        connection = self._leader_connection
        if connection is None or connection.is_closed():
            return
        try:
            await self._statistics.keep_fresh(connection)
        except Exception as error:  # asyncpg's, a timeout, a connection lost: the next pass says
            log.warning("could not refresh the planner's statistics: %r", error)

    async def close(self) -> None:
        self._forget_fleet()
        # A resync's read cancelled: its session is closed before the engine is disposed.
        await asyncio.gather(*self._dropped, return_exceptions=True)
        if self._leader_connection is not None and not self._leader_connection.is_closed():
            await self._leader_connection.close()

    async def _lead(self) -> bool:
        """True while this process holds the leader lock (taking it if free)."""
        if self._leader_connection is not None and not self._leader_connection.is_closed():
            try:  # a connection that looks open may lead to a database that failed over
                await self._leader_connection.fetchval("SELECT 1", timeout=LEADER_CHECK_S)
                return True
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("lost the leader lock's connection; no longer leading")
                self._leader_connection.terminate()
                self._leader_connection = None
        self._forget_fleet()  # never led, or lost the lock with its connection: read it all
        self._quarantined.clear()  # a new leader gives every workload another try
        assert self.settings.database_url
        connection = await asyncpg.connect(notify.plain_postgres_url(self.settings.database_url))
        leads = bool(await connection.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY))
        if self.metrics is not None:
            self.metrics.reconcile_leader.set(1 if leads else 0)
        if leads:
            log.info("this Manager leads the reconcile loop")
            self._grace_from_first_pass = True
            self._silence = None  # a hold, if any, is said again from the first pass
            self._leader_connection = connection
            return True
        await connection.close()
        return False

    async def reconcile_once(self, full: bool = False) -> bool:
        """One pass (``full``: of everything, read afresh); False when it stopped early after
        a workload failed (run it again)."""
        started = time.perf_counter()
        if full:
            self._changes.note(notify.ANY)
        try:
            return await self._pass()
        except BaseException:
            self._forget_fleet()  # it may be half refreshed: read it all at the next pass
            raise
        finally:
            if self.metrics is not None:
                self.metrics.reconcile_duration.observe(time.perf_counter() - started)

    async def _pass(self) -> bool:
        snapshot, capacity_changed = await self._read_snapshot()
        changed_workers = await self._update_liveness(snapshot)
        assert self._fleet is not None
        # A state that differs from the last pass's, whoever wrote it (a heartbeat brings a
        # worker back by itself): room appeared or went away.
        states = {slot.id: slot.state for slot in snapshot.slots}
        previous, self._fleet.states = self._fleet.states, states
        changed_workers |= {
            worker_id
            for worker_id, state in states.items()
            if previous.get(worker_id, state) != state
        }
        # What the replicas hold, made afresh only where that or the worker's liveness changed.
        self._fleet.claim(snapshot.slot_of, changed_workers)
        workloads = snapshot.workloads
        if changed_workers:
            # Their replicas may be lost now, or back. Room appeared only where a worker is
            # ready again: one that lapsed takes room away, and a mass of lapses (a Manager
            # too busy to hear heartbeats) then costs a plan of its workers' workloads alone.
            on_them = self._fleet.workloads_on(changed_workers)
            capacity_changed |= any(
                states.get(worker_id) == WorkerState.READY for worker_id in changed_workers
            )
            planned = {w.id for w in workloads} | on_them
            workloads = [w for w in self._fleet.workloads.values() if w.id in planned]
        if capacity_changed:
            # Room appeared: the workloads waiting for some are planned again too.
            planned = {w.id for w in workloads}
            replicas, slot_of = snapshot.replicas_by_workload, snapshot.slot_of
            workloads = [
                w
                for w in self._fleet.workloads.values()
                if w.id in planned
                or (not is_settled(w) and planning.wants_room(w, replicas.get(w.id, ()), slot_of))
            ]
        if self._quarantined:  # rare: not a set of the fleet's 10,000 ids each pass for it
            held = self._fleet.workloads
            self._quarantined = {k: v for k, v in self._quarantined.items() if k in held}
        if await self._reconcile(snapshot, workloads):
            return True
        self._changes.note(notify.ANY)  # plan everything afresh
        return False

    async def _read_snapshot(self) -> tuple[Snapshot, bool]:
        """This pass's view, and whether room on the fleet changed since the last pass (so
        workloads still waiting for room are planned again).

        After the listening connection came back, after a pass failed and when this Manager
        begins to lead, everything is read and every workload planned. Every
        ``reconcile_resync_s`` everything is read beside the passes (`_resynced`), and the
        first pass after that read ends plans what differs from this leader's copy (a change no
        notification named). Otherwise only what notifications named since the last pass is
        read again, and planned with the workloads whose policy looks at the clock or at
        demand."""
        changes = self._changes.take()
        full = self._fleet is None or changes.everything
        resynced = None if full else self._resynced(changes)
        if changes.everything:  # the resync's watch heard it (a pass would have first)
            full, resynced = True, None
        async with self.sessions() as session:
            # One consistent view; plain reads take no row locks, so no writer waits for this.
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            now = await fleet_now(session)
            liveness = await read_liveness(session)
            capacity_changed = full or resynced is not None
            # A worker named by a notification changed what it reports of its replicas or of
            # itself: its replicas' workloads are read and planned again too.
            dirty = set(changes.workloads)
            if full:
                self._forget_fleet()
                fleet = await Fleet.read(session)
                self._fleet_read_at = time.monotonic()
                if self.metrics is not None:
                    self.metrics.reconcile_full_reads.inc()
            else:
                kept = self._fleet
                assert kept is not None
                # The resync's copy is as the database was when its read began; what was noted
                # since then (in ``changes`` now) is read again into it here, as into the kept one.
                fleet = kept if resynced is None else resynced[0]
                known = set(fleet.shapes)
                present = {w.id for w in liveness}
                workers = (changes.workers & present) | (present - known)
                for gone in known - present:
                    del fleet.shapes[gone]
                reshaped = bool(workers) and await fleet.refresh_workers(session, workers)
                repriced = fleet.set_prices(await read_prices(session))
                capacity_changed |= reshaped or bool(known - present) or repriced
                if changes.workers:
                    dirty |= fleet.workloads_on(changes.workers)
                # Policies that read demand read their replicas' engine load too, which
                # heartbeats store without naming the workload: read theirs every pass.
                dirty |= fleet.demand_readers
                if await fleet.refresh_workloads(session, dirty):
                    capacity_changed = True
                if resynced is not None:
                    # As an incremental pass: liveness is judged against the last pass's.
                    fleet.states = kept.states
                    dirty |= resynced[1]
            demand = with_jobs(await fresh_demand(session), await queued_jobs(session))
            await session.commit()
        self._fleet = fleet
        if full:
            planned = list(fleet.workloads.values())
        else:
            planned = fleet.in_order(dirty | fleet.demand_readers | fleet.deleted)
        snapshot = Snapshot(
            now=now,
            workers=liveness,
            slots=fleet.slots(liveness),
            workloads=planned,
            replicas_by_workload=fleet.replicas,
            demand=demand,
        )
        return snapshot, capacity_changed

    def _resynced(self, changes: Changes) -> tuple[Fleet, set[str]] | None:
        """The resync's read when it has ended, with what was noted since it began merged into
        ``changes``; None while it runs, or when none does (one is begun when it is due).

        The read runs in a task of its own beside the passes: at 10,000 workloads it takes a
        second or more of a busy loop's time, and passes that waited for it left the changes
        that came meanwhile waiting too. It reads in one `REPEATABLE READ` transaction; every
        change committed after its view was taken is noted after the watch began (a notice
        comes after its commit; the reconciler notes its own writes, and a pass writes only
        after the read began, as passes run one at a time), so reading what the watch holds
        into the new copy makes it current."""
        resync = self._resync
        if resync is None:
            if time.monotonic() - self._fleet_read_at >= self.settings.reconcile_resync_s:
                self._fleet_read_at = time.monotonic()
                since = self._changes.watch()
                task = asyncio.create_task(self._read_all(), name="reconcile-resync")
                task.add_done_callback(_retrieved)
                self._resync = Resync(since, task)
            return None
        if not resync.task.done():
            return None
        self._drop_resync()
        error = None if resync.task.cancelled() else resync.task.exception()
        if resync.task.cancelled() or error is not None:  # the database, mostly
            log.warning("the resync's read failed (%r); reading again", error or "cancelled")
            self._fleet_read_at = 0.0  # due again at once
            return None
        changes.merge(resync.since)
        if self.metrics is not None:
            self.metrics.reconcile_full_reads.inc()
        return resync.task.result()

    async def _read_all(self) -> tuple[Fleet, set[str]]:
        """Everything, read afresh, and the workloads that differ from the leader's copy."""
        async with self.sessions() as session:
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            fleet = await Fleet.read(session)
            await session.commit()
        kept = self._fleet
        assert kept is not None  # dropping the copy cancels this task
        return fleet, await fleet.differing_from(kept)

    def _drop_resync(self) -> None:
        resync, self._resync = self._resync, None
        if resync is None:
            return
        self._changes.unwatch(resync.since)
        if not resync.task.done():
            resync.task.cancel()
            self._dropped.add(resync.task)
            resync.task.add_done_callback(self._dropped.discard)

    def _forget_fleet(self) -> None:
        """Read everything at the next pass: no copy kept, no resync running."""
        self._fleet = None
        self._drop_resync()

    async def _update_liveness(self, snapshot: Snapshot) -> set[str]:
        """Judge each worker by its last heartbeat; the ids of those whose state changed."""
        if self._grace_from_first_pass:
            self._grace_from_first_pass = False
            self._grace_until = snapshot.now + timedelta(
                seconds=self.settings.worker_not_ready_after_s
            )
        in_grace = self._grace_until is not None and snapshot.now < self._grace_until
        slot_of = snapshot.slot_of
        changed = set()
        judged = []
        for worker in snapshot.workers:
            state, reason = planning.worker_liveness(
                worker.last_heartbeat_at,
                snapshot.now,
                not_ready_after_s=self.settings.worker_not_ready_after_s,
                lost_after_s=self.settings.worker_lost_after_s,
            )
            if in_grace and _WORSE.get(state, 0) > _WORSE.get(worker.state, 0):
                state, reason = WorkerState(worker.state), worker.state_reason
            judged.append((worker, state, reason))
        # Of the workers not lost already (one long gone, never deleted, says nothing now).
        held = self._silence_held(
            [state for worker, state, _ in judged if worker.state != WorkerState.LOST]
        )
        for worker, state, reason in judged:
            if held and state == WorkerState.LOST and worker.state != WorkerState.LOST:
                state = WorkerState.NOT_READY
                reason = f"{reason}; {held}"
            if (state, reason) != (worker.state, worker.state_reason):
                if not await self._set_worker_state(worker, state, reason):
                    # A heartbeat landed after the snapshot, or is landing now: the agent lives.
                    state, reason = WorkerState.READY, None
                elif state != worker.state:
                    log.info(
                        "worker %s is %s (%s)",
                        worker.id,
                        state,
                        reason,
                        extra=ids(worker_id=worker.id),
                    )
                if state != worker.state:
                    changed.add(worker.id)
            slot = slot_of.get(worker.id)
            if slot is not None:
                slot.state, slot.state_reason = state, reason
        return changed

    def _silence_held(self, states: list[WorkerState]) -> str | None:
        """Why no more worker is judged lost, while so many are silent that the Manager or the
        network is more likely at fault than they are (settings.worker_silence_share); None
        otherwise. Said in the log when it begins and when it ends."""
        held = planning.silence_held(
            states,
            share=self.settings.worker_silence_share,
            fleet_at_least=self.settings.worker_silence_fleet,
        )
        if held is None:
            if self._silence is not None:
                log.warning("most workers report again: silent workers are judged lost again")
                self._silence = None
            return None
        silent, fleet = held
        # The same words at every pass (no count in them): a held worker's row is written once.
        why = (
            f"not judged lost while {self.settings.worker_silence_share:.0%} or more of the fleet "
            "is silent (more likely this Manager's or the network's trouble than the workers'): "
            "its replicas stay"
        )
        if self._silence is None:
            log.warning(
                "%d of %d workers are silent at once: more likely this Manager (overloaded?) or "
                "the network than the workers, so none is judged lost and no replica is moved "
                "until fewer than %g%% are silent",
                silent,
                fleet,
                self.settings.worker_silence_share * 100,
            )
        self._silence = held
        return why

    async def _set_worker_state(
        self, worker: WorkerRecord, state: WorkerState, reason: str | None
    ) -> bool:
        """Write a liveness change unless a heartbeat came since the snapshot; True if written.

        Compare-and-set on the heartbeat time it was judged by, skipping a row a heartbeat holds:
        that heartbeat proves the worker alive, and neither side waits for the other.
        """
        judged = (
            select(Worker.id)
            .where(
                Worker.id == worker.id,
                Worker.last_heartbeat_at.is_not_distinct_from(worker.last_heartbeat_at),
            )
            .with_for_update(key_share=True, skip_locked=True)
            .scalar_subquery()
        )
        async with self.sessions() as session, session.begin():
            written = await session.execute(
                update(Worker)
                .where(Worker.id == judged)
                .values(state=state, state_reason=reason)
                .returning(Worker.id)
                .execution_options(synchronize_session=False)
            )
            if written.scalar_one_or_none() is None:
                return False
            if state != worker.state:  # not for the reason's count of seconds alone
                await notify.notify(session, notify.WORKERS, worker.id)  # the gateways' routes
            return True

    async def _reconcile(self, snapshot: Snapshot, workloads: list[planning.WorkloadView]) -> bool:
        """Plan each workload in turn (each plan claims its room in the snapshot, so the next
        sees it), then write the actions in transactions of up to ``WRITE_BATCH`` workloads.
        False when a workload failed: its failure is shown on it, and that generation of it is
        left out of later passes (a PATCH retries it); every other workload is still written."""
        plans: list[tuple[planning.WorkloadView, list[planning.Action]]] = []
        failed = False
        turns = Turns()
        for workload in workloads:
            if turns.due():
                await turns.give()  # planning a fleet is CPU: let requests in between
            if self._quarantined.get(workload.id) == workload.generation:
                continue  # failed at this generation already; its phase says so
            try:
                actions = planning.plan_workload(
                    workload,
                    snapshot.replicas_by_workload.get(workload.id, []),
                    snapshot.slots,
                    now=snapshot.now,
                    demand=snapshot.demand.get(workload.id, NO_DEMAND),
                    max_replicas=self.settings.max_replicas_per_workload,
                    scale_down_delay_s=self.settings.autoscale_scale_down_delay_s,
                    idle_s=self.settings.autoscale_idle_s,
                    slot_of=snapshot.slot_of,
                )
            except Exception as error:
                # Its plan may have claimed room in the snapshot that it never takes: the plans
                # made so far are still right, the rest are made afresh by the next pass.
                await self._quarantine(workload, error)
                failed = True
                break
            if actions:
                plans.append((workload, actions))
        if self._fleet is not None:  # what this pass claimed in the slots, written or not
            self._fleet.placed_on(
                action.worker_id
                for _, actions in plans
                for action in actions
                if isinstance(action, planning.CreateReplica)
            )
        for start in range(0, len(plans), WRITE_BATCH):
            batch = plans[start : start + WRITE_BATCH]
            for workload, _ in batch:
                self._changes.note(workload.id)  # read what was written at the next pass
            try:
                await self._apply(snapshot.now, batch)
            except Exception as error:
                if _of_the_moment(error):
                    # Written or not, and no fault of any workload's: the next pass reads it
                    # all again and plans afresh (never the same plan twice: it could place
                    # twice).
                    log.warning("writing a reconcile pass failed (%s); reading all again", error)
                    return False
                log.warning(
                    "writing %d workloads' actions in one transaction failed; writing each alone",
                    len(batch),
                    exc_info=True,
                )
                for workload, actions in batch:
                    try:
                        await self._apply(snapshot.now, [(workload, actions)])
                    except Exception as error:
                        if _of_the_moment(error):
                            log.warning("writing workload %s failed (%s)", workload.id, error)
                            return False
                        await self._quarantine(workload, error)
                        failed = True
        return not failed

    async def _quarantine(self, workload: planning.WorkloadView, error: Exception) -> None:
        log.error(
            "reconciling workload %s failed",
            workload.id,
            exc_info=error,
            extra=ids(workload_id=workload.id),
        )
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(Workload)
                .where(Workload.id == workload.id, Workload.generation == workload.generation)
                .values(
                    phase=WorkloadPhase.ERROR,
                    phase_reason=f"internal error: {type(error).__name__}; see the Manager log",
                )
                .execution_options(synchronize_session=False)
            )
            await notify.notify(session, notify.WORKLOAD_STATUS, workload.id)
        self._quarantined[workload.id] = workload.generation

    async def _apply(
        self,
        now: datetime,
        plans: list[tuple[planning.WorkloadView, list[planning.Action]]],
    ) -> None:
        """Write these workloads' actions in one transaction. Raises `CommitUnknown` when the
        commit itself failed: the database may have written it all the same."""
        async with self.sessions() as session:
            await self._write_plans(session, now, plans)
            try:
                await session.commit()
            except Exception as error:
                raise CommitUnknown(f"{type(error).__name__}: {error}") from error

    async def _write_plans(
        self,
        session: AsyncSession,
        now: datetime,
        plans: list[tuple[planning.WorkloadView, list[planning.Action]]],
    ) -> None:
        # These workloads' rows only, in id order. An API write holding one wins: its commit
        # notifies, and the next pass plans from what it wrote.
        stored = {
            row.id: row
            for row in await session.execute(
                select(Workload.id, Workload.generation, Workload.deleted_at)
                .where(one_of(Workload.id, [w.id for w, _ in plans]))
                .order_by(Workload.id)
                .with_for_update(key_share=True, skip_locked=True)
            )
        }
        # A workload changed since the snapshot is left out: its plan is for a spec that
        # is gone.
        current = [
            (workload, actions)
            for workload, actions in plans
            if (row := stored.get(workload.id)) is not None
            and (row.generation, row.deleted_at is not None)
            == (workload.generation, workload.deleted)
        ]
        doomed = sorted(
            {
                a.replica_id
                for _, actions in current
                for a in actions
                if isinstance(a, planning.StopReplica | planning.ForgetReplica)
            }
        )
        if doomed:
            # Replica rows in id order, as heartbeats take them: no deadlock between the two.
            await session.execute(
                select(Replica.id)
                .where(one_of(Replica.id, doomed))
                .order_by(Replica.id)
                .with_for_update()
            )
        touched: set[str] = set()
        notices: list[tuple[str, str]] = []
        # The workloads' own columns, by the set of columns written: one executemany each.
        statuses: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
        for workload, actions in current:
            status: dict[str, Any] = {}
            for action in actions:
                status |= await self._write(session, now, workload, action, touched)
            if status:
                statuses[frozenset(status)].append({"id": workload.id, **status})
            if "phase" in status:
                notices.append((notify.WORKLOAD_STATUS, workload.id))
        for rows in statuses.values():
            await session.execute(update(Workload), rows)  # by primary key
        notices.extend((notify.ASSIGNMENTS, worker_id) for worker_id in sorted(touched))
        await session.flush()  # the new replicas and events, before anyone is told
        await notify.notify_each(session, notices)

    async def _write(
        self,
        session: AsyncSession,
        now: datetime,
        workload: planning.WorkloadView,
        action: planning.Action,
        touched: set[str],
    ) -> dict[str, Any]:
        """One action's rows and events. Returns the workload columns it sets; ``touched``
        collects the workers whose assignments changed."""
        if isinstance(action, planning.ForgetReplica):
            # Only while its worker is still lost: one that came back keeps its replica (the
            # replacement planned with it is then one too many, and the next pass stops it).
            forgotten = await session.execute(
                delete(Replica)
                .where(
                    Replica.id == action.replica_id,
                    Replica.worker_id.in_(
                        select(Worker.id).where(Worker.state == WorkerState.LOST)
                    ),
                )
                .returning(Replica.id)
                .execution_options(synchronize_session=False)
            )
            if forgotten.scalar_one_or_none() is not None and action.was_running:
                await events.record(
                    session,
                    workload.id,
                    "replica_lost",
                    action.reason,
                    {"replica_id": action.replica_id, "worker_id": action.worker_id},
                )
            return {}
        if isinstance(action, planning.StopReplica):
            stopped = await session.execute(
                update(Replica)
                .where(Replica.id == action.replica_id, Replica.desired_state == DesiredState.RUN)
                .values(desired_state=DesiredState.STOP)
                .returning(Replica.id)
                .execution_options(synchronize_session=False)
            )
            if stopped.scalar_one_or_none() is not None:
                log.info(
                    "stopping replica %s: %s",
                    action.replica_id,
                    action.reason,
                    extra=ids(workload_id=workload.id, worker_id=action.worker_id),
                )
                touched.add(action.worker_id)
            return {}
        if isinstance(action, planning.CreateReplica):
            await self._create_replica(session, now, workload, action)
            touched.add(action.worker_id)
            return {}
        if isinstance(action, planning.SetPhase):
            await events.record(
                session,
                workload.id,
                "phase",
                f"{action.phase.value}: {action.reason}",
                {"phase": action.phase.value},
            )
            return {"phase": action.phase, "phase_reason": action.reason}
        counts: dict[str, Any] = {
            "desired_replicas": action.desired,
            "ready_replicas": action.ready,
        }
        if action.scaled:
            counts["last_scaled_at"] = now
            await events.record(
                session,
                workload.id,
                "scaled",
                action.reason,
                {"from": workload.desired_replicas, "to": action.desired},
            )
        return counts

    @staticmethod
    async def _create_replica(
        session: AsyncSession,
        now: datetime,
        workload: planning.WorkloadView,
        action: planning.CreateReplica,
    ) -> None:
        replica_id = new_id("rep")
        session.add(
            Replica(
                id=replica_id,
                workload_id=workload.id,
                worker_id=action.worker_id,
                generation=workload.generation,
                spec=dict(action.spec),
                gpu_resource_ids=list(action.gpu_ids),
                claim_memory_mb=action.claim_memory_mb,
                desired_state=DesiredState.RUN,
                state=ReplicaState.PENDING,
                created_at=now,
                updated_at=now,
            )
        )
        gpus = f" on GPU(s) {', '.join(action.gpu_ids)}" if action.gpu_ids else " (CPU)"
        await events.record(
            session,
            workload.id,
            "replica_placed",
            f"replica {replica_id} placed on {action.worker_name} ({action.worker_id}){gpus}",
            {
                "replica_id": replica_id,
                "worker_id": action.worker_id,
                "gpu_resource_ids": list(action.gpu_ids),
            },
        )
        for notice in action.notices:
            await events.record(session, workload.id, "command_adjusted", notice)


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Take a task's outcome, so an error of a read no pass took is not reported as lost; the
    pass that takes it says what it was."""
    if not task.cancelled():
        task.exception()


async def run_reconciler(reconciler: Reconciler) -> None:
    try:
        await reconciler.run_forever()
    finally:
        with contextlib.suppress(Exception):
            await reconciler.close()
