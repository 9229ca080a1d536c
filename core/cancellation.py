"""Stopping a job on request: SIGINT (Ctrl-C), SIGTERM, or a cancel flag in the run store.

In one process a stop interrupts the job at once, wherever it is (a long attack batch
included): the signal handler raises :class:`Cancelled`, and a cancel found in the store by the
runner's heartbeat thread is delivered to the main thread as a SIGTERM. Under torchrun every
rank must stop at the same step, so the request is only recorded and the training loop checks
it at its logging points (:meth:`Cancellation.check`).
"""
from __future__ import annotations

import _thread
import signal
import threading
from typing import Any


class Cancelled(BaseException):
    """The job stopped because a stop was requested. A BaseException, as KeyboardInterrupt
    and asyncio's CancelledError are: a stop raised inside a library's ``except Exception``
    (an optional import's probe, a fallback) must not be swallowed and the job go on."""


class Interrupted(Cancelled, KeyboardInterrupt):
    """A stop by Ctrl-C (SIGINT): the job is cancelled, and whoever runs it in-process (a
    test under pytest, a notebook) still sees the KeyboardInterrupt it expects and stops."""


class Cancellation:
    """The process's stop request: whether one came, why, and how it is delivered."""

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self.immediate = True
        self._previous: dict[int, Any] = {}

    def install(self, immediate: bool = True) -> bool:
        """Handle SIGINT and SIGTERM (main thread only); False when already installed or not
        on the main thread."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return False
        self.requested, self.reason, self.immediate = False, "", immediate
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return True

    def uninstall(self) -> None:
        """Restore the previous handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.requested = True
        self.reason = self.reason or signal.Signals(signum).name
        if self.immediate:
            raise (Interrupted if signum == signal.SIGINT else Cancelled)(self.reason)

    def request(self, reason: str) -> None:
        """A stop asked for from another thread (the store's cancel flag)."""
        if self.requested:
            return
        self.requested, self.reason = True, reason
        if self.immediate and self._previous:
            _thread.interrupt_main(signal.SIGTERM)

    def raise_pending(self) -> None:
        """Raise a stop that was requested but never surfaced. Python drops an exception that
        a signal handler raises while a finalizer (a ``__del__``, a weakref callback) runs,
        and the job would go on; attack iterations and training steps call this (one process
        only: under torchrun the ranks agree on a step first, at :meth:`check`'s points)."""
        if self.requested and self.immediate and self._previous:
            raise (Interrupted if self.reason == "SIGINT" else Cancelled)(self.reason)

    def check(self) -> None:
        """Raise Cancelled when a stop was requested (for cooperative checks)."""
        if self.requested:
            raise Cancelled(self.reason)


STATE = Cancellation()
