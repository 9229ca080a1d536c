"""Progress of a running job, for people and for the dashboard.

On a terminal it draws a tqdm bar. Anywhere else (a log file, nohup, CI) it prints one plain
line at least every ``ROBUSTLAB_PROGRESS_EVERY`` seconds (20 by default; the runner's heartbeat
thread calls :meth:`Progress.tick` so a line appears even while one long batch computes) and one
at every epoch or stage: done/total, images per second, time left. The fraction done goes to
the run store for the dashboard.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from core.jobs.store import RunStore

STORE_EVERY_S = 1.0
IMAGE_UNITS = ("images", "steps")  # units whose rate is worth saying in images per second


def log_every_s() -> float:
    """Seconds between plain progress lines (``ROBUSTLAB_PROGRESS_EVERY``, default 20)."""
    return float(os.environ.get("ROBUSTLAB_PROGRESS_EVERY", "20"))


def fmt_duration(seconds: float | None) -> str:
    """'1 h 02 min', '3 min 05 s' or '42 s'."""
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class Progress:
    """Reports ``done`` of ``total`` units (steps, images, budgets) of one job."""

    def __init__(self, what: str, store: "RunStore | None" = None, run_id: str | None = None,
                 stream: TextIO | None = None, enabled: bool = True) -> None:
        self.what, self.store, self.run_id = what, store, run_id
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.total, self.unit, self.images_per_unit = 0, 0, "images", 1
        self.note = ""
        self.started = time.monotonic()
        self._stored = self._printed = 0.0
        self._bar = None
        self._lock = threading.Lock()

    def start(self, total: int, unit: str = "images", images_per_unit: int = 1,
              done: int = 0) -> None:
        """Begin (or restart) counting ``total`` units; ``done`` are already behind."""
        with self._lock:
            self.total, self.unit, self.images_per_unit = max(int(total), 0), unit, images_per_unit
            self.done, self._first_done = done, done
            self.started = time.monotonic()
        if self.tty:
            from tqdm import tqdm

            self.close()
            self._bar = tqdm(total=self.total, initial=done, unit=unit, desc=self.what,
                             dynamic_ncols=True, file=self.stream)

    def update(self, done: int, note: str = "") -> None:
        """``done`` units are complete; store the fraction (throttled) and redraw the bar."""
        with self._lock:
            self.done, self.note = done, note or self.note
        if self._bar is not None:
            self._bar.n = done
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.refresh()
        now = time.monotonic()
        if self.store and self.run_id and (now - self._stored >= STORE_EVERY_S
                                           or done >= self.total):
            self._stored = now
            self.store.log_metrics(self.run_id, [(done, None, "progress", self.fraction())])

    def fraction(self) -> float:
        """Share of the work done, in [0, 1]."""
        return min(self.done / self.total, 1.0) if self.total else 0.0

    def rate(self) -> float | None:
        """Images per second since :meth:`start` (None before the first unit)."""
        elapsed = time.monotonic() - self.started
        units = self.done - getattr(self, "_first_done", 0)
        return units * self.images_per_unit / elapsed if units > 0 and elapsed > 0 else None

    def seconds_left(self) -> float | None:
        """Estimated seconds to finish at the rate so far."""
        rate = self.rate()
        if rate is None:
            return None
        return (self.total - self.done) * self.images_per_unit / rate

    def status(self) -> str:
        """'120/470 steps (25.5%) · 512 img/s · 1 min 30 s left'."""
        rate = self.rate()
        speed = (f"{rate:,.0f} img/s" if self.unit in IMAGE_UNITS else None) if rate else "starting"
        return " · ".join([f"{int(self.done):,}/{self.total:,} {self.unit} ({self.fraction():.1%})"]
                          + ([speed] if speed else [])
                          + [self._left()])

    def _left(self) -> str:
        """'1 min 30 s left', or 'finishing' once the count is done and work remains (an
        epoch's evaluation, a report), never '0 s left'."""
        if self.total and self.done >= self.total:
            return "finishing"
        left = self.seconds_left()
        if left is not None and left < 1:
            return "under 1 s left"
        return f"{fmt_duration(left)} left"

    def line(self) -> str:
        """'train: 120/470 steps (25.5%) · 512 img/s · 1 min 30 s left · loss 0.231'."""
        return " · ".join([f"{self.what}: {self.status()}"] + ([self.note] if self.note else []))

    def say(self, text: str) -> None:
        """Print a line (an epoch's or a stage's result) above the bar, or plainly."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
        self._printed = time.monotonic()

    def tick(self) -> None:
        """Print the plain progress line when none was printed for ``log_every_s``."""
        if not self.enabled or self.tty or not self.total:
            return
        if time.monotonic() - self._printed >= log_every_s():
            self.say(self.line())

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Quiet(Progress):
    """A reporter that tells nobody (ranks other than 0, library calls)."""

    def __init__(self) -> None:
        super().__init__("", enabled=False)
