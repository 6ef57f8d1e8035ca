"""Stopping a Manager process in bounded time, saying what held it up.

uvicorn gives open connections ``timeout_graceful_shutdown`` and then runs the lifespan's
shutdown with no limit at all: one step of it that never ends (a pool waiting for a connection
that is never released, a task that does not end when cancelled) keeps the process alive until
it is killed, and nothing says why. So each step of the Manager's shutdown is waited for at most
``STEP_S``; one that takes longer is cancelled and left behind, and a warning names it and
where it was waiting. (A task that ignores its cancellation still holds the process: asyncio
waits for every task as its loop closes. The warning names it.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any

log = logging.getLogger("inferencekey.manager")

# How long one step of stopping (the background tasks ending, a pool closing) may take. Each
# takes milliseconds when all is well.
STEP_S = 3.0


def where(task: asyncio.Task[object]) -> str:
    """Where ``task`` waits: each coroutine down the chain it awaits (asyncio's own stack of a
    suspended task stops at the first), then the future at the bottom."""
    lines = []
    awaited: object = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:  # a future, or an async generator's step (which shows no frame)
            break
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    waiter = getattr(task, "_fut_waiter", None)  # the future it waits for, if any
    if waiter is not None:
        lines.append(f"  waiting for {waiter!r}")
    return "It was at:\n" + "\n".join(lines)


def background(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task of the process's own, whose failure is logged the moment it ends by one (a task
    nobody awaits until the stop would otherwise fail unseen until then)."""
    task = asyncio.create_task(work, name=name)
    task.add_done_callback(_say_if_failed)
    return task


def _say_if_failed(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (failure := task.exception()) is not None:
        log.error("the task %r failed and ended", task.get_name(), exc_info=failure)


async def tasks_ended(tasks: Iterable[asyncio.Task[Any]], seconds: float = STEP_S) -> None:
    """Cancel ``tasks`` and wait up to ``seconds`` for them to end; warn of each that has not,
    with where it is."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=seconds)
    for task in still:
        log.warning(
            "stopping: the task %r did not end within %g s of being cancelled; left running. %s",
            task.get_name(),
            seconds,
            where(task),
        )


async def step(name: str, stopping: Awaitable[None], seconds: float = STEP_S) -> None:
    """Await one step of stopping for up to ``seconds``; one that takes longer is cancelled and
    left (with a warning saying where it was); one that fails is logged. Never raises but for
    this task's own cancellation."""
    task = asyncio.ensure_future(stopping)
    try:
        await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.done():
        log.warning(
            "stopping %s took over %g s; cancelled it and went on. %s", name, seconds, where(task)
        )
        task.cancel()
        return
    if not task.cancelled() and task.exception() is not None:
        log.error("stopping %s failed", name, exc_info=task.exception())
