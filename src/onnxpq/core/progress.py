"""Progress bars for long steps, for a person at a terminal only.

Any long step (calibration, sensitivity, explore, per-layer error, latency)
wraps its loop in :func:`progress`::

    from onnxpq.core.progress import progress

    with progress("calibration", total=len(batches)) as bar:
        for batch in batches:
            ...
            bar.advance()

A bar draws on standard error (one line, redrawn in place with ``\\r``, at
most every ``min_interval`` seconds, and a final line when the step ends)
only when all of these hold:

* the switch is not off: :func:`set_progress` (the CLI sets it from ``-q``)
  or :func:`progress_switch` (scoped, e.g. ``optimize(progress=False)``);
* the stream is a terminal (``isatty()``);
* the environment does not say CI (``CI`` unset, empty, ``0``, ``false`` or ``no``).

Otherwise :func:`progress` yields a bar whose methods do nothing, so callers
never test whether progress is on. The switch is a :class:`contextvars.ContextVar`:
worker processes and threads start with it unset (auto), which is silent
wherever their standard error is not a terminal. Log lines are not
interleaved with the bar: the bar writes only to its stream and logging
goes through :mod:`logging` handlers, so a log record may land after a half
drawn bar line on a terminal; the bar's next redraw clears its own line.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterator
from typing import IO

__all__ = ["ProgressBar", "progress", "progress_allowed", "progress_switch", "set_progress", "in_ci"]

#: None: automatic (terminal and not CI); False: never; True: whenever the stream is a terminal and not CI.
_SWITCH: contextvars.ContextVar[bool | None] = contextvars.ContextVar("onnxpq_progress", default=None)

_BAR_WIDTH = 24
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


def set_progress(enabled: bool | None) -> contextvars.Token[bool | None]:
    """Set the switch for the current context (the CLI: ``set_progress(False)`` for ``-q``); None is automatic."""
    return _SWITCH.set(enabled)


@contextlib.contextmanager
def progress_switch(enabled: bool | None) -> Iterator[None]:
    """The switch for the duration of a ``with`` block, restored afterwards."""
    token = _SWITCH.set(enabled)
    try:
        yield
    finally:
        _SWITCH.reset(token)


def in_ci() -> bool:
    """True when the ``CI`` environment variable says so (any value but empty, 0, false, no, off)."""
    return os.environ.get("CI", "").strip().lower() not in _FALSE_WORDS


def progress_allowed(stream: IO[str] | None = None) -> bool:
    """Whether a bar may draw on ``stream`` (standard error by default): switch not off, a terminal, not CI."""
    if _SWITCH.get() is False:
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False
    return tty and not in_ci()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class ProgressBar:
    """One step's bar: ``label [#####......] done/total pct elapsed (eta)``; inert when not enabled."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: IO[str] | None = None,
        min_interval: float = 0.1,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = progress_allowed(self.stream) if enabled is None else enabled
        self.min_interval = min_interval
        self._start = time.monotonic()
        self._last_draw = -float("inf")
        self._drawn = False
        self._closed = False

    def advance(self, steps: int = 1) -> None:
        """``steps`` more units of work are done."""
        self.update(self.done + steps)

    def update(self, done: int, total: int | None = None) -> None:
        """Set the units done (and the total, when it becomes known)."""
        self.done = done
        if total is not None:
            self.total = total
        if not self.enabled or self._closed:
            return
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if finished or now - self._last_draw >= self.min_interval:
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the bar as it would be drawn now."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        if not self.total:
            return f"{self.label}: {self.done} ({_duration(elapsed)})"
        fraction = min(1.0, self.done / self.total)
        filled = int(round(fraction * _BAR_WIDTH))
        text = (
            f"{self.label} [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] "
            f"{self.done}/{self.total} {fraction:4.0%} {_duration(elapsed)}"
        )
        if 0 < fraction < 1:
            text += f" (eta {_duration(elapsed / fraction - elapsed)})"
        return text

    def _draw(self, now: float) -> None:
        self._last_draw = now
        try:
            self.stream.write("\r\x1b[2K" + self.line(now))
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: stop drawing, never fail the work
            self.enabled = False
            return
        self._drawn = True

    def close(self) -> None:
        """Draw the final state and end the line (only if anything was drawn)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled and self._drawn:
            try:
                self.stream.write("\r\x1b[2K" + self.line() + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass


@contextlib.contextmanager
def progress(
    label: str,
    total: int | None = None,
    *,
    stream: IO[str] | None = None,
    min_interval: float = 0.1,
) -> Iterator[ProgressBar]:
    """A bar for one long step; closed (final line, newline) when the block ends, even on error."""
    bar = ProgressBar(label, total, stream=stream, min_interval=min_interval)
    try:
        yield bar
    finally:
        bar.close()
