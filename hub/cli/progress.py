"""Progress lines on stderr for long CLI work (transfers, a remote merge): only on a terminal.

Scripts and tests that capture the output get none of it, so their stdout and stderr stay
the one-line results and refusals.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

import click

# Redraws closer together than this only cost terminal writes.
REDRAW_S = 0.1


def duration(seconds: float) -> str:
    """45s, 2m51s, 1h05m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def human_bytes(count: float) -> str:
    """512 B, 1.5 KiB, 12.0 MiB, 3.2 GiB."""
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


class ByteProgress:
    """A transfer's bytes done of its total, its rate and the time left, redrawn in place."""

    def __init__(self, label: str, total: int, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = max(int(total), 0)
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.clock = clock
        self.started = clock()
        self.done = 0
        self.drawn_at: float | None = None
        self.width = 0

    def __enter__(self) -> "ByteProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.finish()

    def update(self, count: int) -> None:
        """Count `count` more bytes; redraw at most every REDRAW_S seconds."""
        self.done += count
        now = self.clock()
        if self.enabled and (self.drawn_at is None or now - self.drawn_at >= REDRAW_S):
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the line: label, bytes done of total, percent, rate, time left."""
        now = self.clock() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        percent = int(100 * self.done / self.total) if self.total else 100
        text = (f"{self.label} {human_bytes(self.done)} / {human_bytes(self.total)} "
                f"{percent:3d}% {human_bytes(rate)}/s")
        if self.done < self.total and rate > 0:
            text += f", about {duration((self.total - self.done) / rate)} left"
        return text

    def finish(self) -> None:
        """Draw the final line and end it, when anything was drawn."""
        if self.enabled and self.drawn_at is not None:
            self._draw(self.clock(), end=True)

    def _draw(self, now: float, end: bool = False) -> None:
        text = self.line(now)
        # Pad over what the previous, longer line left behind.
        click.echo("\r" + text.ljust(self.width), err=True, nl=end)
        self.width = len(text)
        self.drawn_at = now


class MergeProgress:
    """A remote merge's state while the CLI waits: queued, then modules done and time left."""

    def __init__(self, merge_id: str, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.merge_id = merge_id
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.clock = clock
        #: (time, fraction) when the merge was first seen running: the rate's origin, so
        #: time spent queued does not count as slow merging.
        self.origin: tuple[float, float] | None = None
        self.text = ""
        self.width = 0

    def line(self, merge: dict, now: float | None = None) -> str:
        """The text for a Merge: queued, or modules done of total, percent and time left."""
        now = self.clock() if now is None else now
        head = f"merge {self.merge_id}"
        if merge["status"] == "queued":
            position = merge.get("queue_position")
            return f"{head} queued" + (f", {position} in line" if position else "")
        fraction = min(max(float(merge.get("progress") or 0.0), 0.0), 1.0)
        if self.origin is None:
            self.origin = (now, fraction)
        total = merge.get("modules")
        done = f"{round(fraction * total)}/{total} modules " if total else ""
        text = f"{head} running: {done}{int(fraction * 100):3d}%"
        started, first = self.origin
        # A guess from under a couple of seconds of progress is noise.
        if fraction > first and fraction < 1 and now - started >= 2:
            left = (now - started) * (1 - fraction) / (fraction - first)
            text += f", about {duration(left)} left"
        return text

    def update(self, merge: dict) -> None:
        """Redraw the line for this poll's Merge, when it changed."""
        text = self.line(merge)
        if self.enabled and text != self.text:
            click.echo("\r" + text.ljust(self.width), err=True, nl=False)
            self.text, self.width = text, len(text)

    def finish(self) -> None:
        """End the line, when anything was drawn, so what follows starts on its own."""
        if self.enabled and self.text:
            click.echo("", err=True)
            self.text = ""
