"""The progress display ``wait_until_ready`` shows by default, usable on its own too."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from .enums import ReadinessPhase
from .wire import ReadinessEvent

# The phases that get a dot, in the order a workload goes through them.
DOT_PHASES = (
    ReadinessPhase.SCHEDULING.value,
    ReadinessPhase.PROVISIONING.value,
    ReadinessPhase.BOOTSTRAPPING.value,
    ReadinessPhase.READY.value,
)
REACHED, NOT_REACHED, FAILED = "●", "○", "✗"
# Back to the start of the line and erase it.
_REDRAW = "\r\x1b[2K"


class ProgressRenderer:
    """Shows readiness events: one redrawn line on a terminal, one line per event otherwise.

    On a terminal the line holds a dot per phase (scheduling, provisioning, bootstrapping,
    ready: ● reached, ○ not yet, ✗ where it failed), the seconds elapsed and the message.
    Elsewhere (a log, CI) each event is a line ``[<s>s] <phase>[ [step]]: <message>``.
    Writes to ``stream``, by default ``sys.stderr``.

    ``ManagementClient.wait_until_ready`` uses one when given no ``on_progress``; pass your
    own to write elsewhere:

    >>> import io
    >>> log = io.StringIO()
    >>> render = ProgressRenderer(log)
    >>> render(ReadinessEvent(phase="bootstrapping", message="loading weights",
    ...                       elapsed_ms=12500, step="model_load"))
    >>> print(log.getvalue(), end="")
    [12.5s] bootstrapping [model_load]: loading weights
    >>> mgmt.wait_until_ready("support-bot", on_progress=render)  # doctest: +SKIP
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.is_terminal = self.stream.isatty()
        self._last: ReadinessEvent | None = None
        self._last_at = 0.0
        self._furthest = -1  # index in DOT_PHASES of the furthest phase reached
        self._line_open = False

    def __call__(self, event: ReadinessEvent) -> None:
        """Show one event."""
        self._last, self._last_at = event, time.monotonic()
        if event.phase in DOT_PHASES:
            self._furthest = max(self._furthest, DOT_PHASES.index(event.phase))
        if self.is_terminal:
            self._draw()
        else:
            self._write(f"[{event.elapsed_ms / 1000:.1f}s] {_describe(event)}\n")

    def tick(self) -> None:
        """Advance the terminal line's clock; call it about once a second between events."""
        if self.is_terminal and self._last is not None:
            self._draw()

    def close(self) -> None:
        """End the terminal line, so that later output starts on a line of its own."""
        if self._line_open:
            self._line_open = False
            self._write("\n")

    def _draw(self) -> None:
        assert self._last is not None
        seconds = self._last.elapsed_ms / 1000 + (time.monotonic() - self._last_at)
        line = f"{self._dots()}  {seconds:.0f}s  {_describe(self._last)}"
        # A line that wraps could no longer be redrawn in place.
        width = shutil.get_terminal_size().columns
        if len(line) >= width:
            line = line[: max(width - 2, 0)] + "…"
        self._line_open = True
        self._write(_REDRAW + line)

    def _dots(self) -> str:
        failed = self._last is not None and self._last.phase == ReadinessPhase.ERROR.value
        failed_at = min(self._furthest + 1, len(DOT_PHASES) - 1) if failed else -1
        return " ".join(
            FAILED if i == failed_at else REACHED if i <= self._furthest else NOT_REACHED
            for i in range(len(DOT_PHASES))
        )

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _describe(event: ReadinessEvent) -> str:
    step = f" [{event.step}]" if event.step else ""
    return f"{event.phase}{step}: {event.message}"
