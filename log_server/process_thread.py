"""A daemon thread started on first use in each process.

Why: gunicorn and Granian fork their workers after the app may have been built, and a thread does
not survive a fork. An object that owns a background thread (the sequencer's writer, the WAL
checkpointer, the witness cosigner) therefore starts it in the process that uses it, once, even
when several request threads ask at the same moment, and again if it has ended.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class ProcessThread:
    """``target`` on a daemon thread of the calling process, started by `ensure_started`."""

    def __init__(self, target: Callable[[], None], name: str, before_start: Callable[[], None] = lambda: None) -> None:
        self._target = target
        self._name = name
        self._before_start = before_start  # resets the owner's per-thread state (queues, events)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def running_here(self) -> bool:
        """Whether the thread runs in this process (a forked child has none until it starts one)."""
        thread = self._thread
        return thread is not None and self._pid == os.getpid() and thread.is_alive()

    def ensure_started(self) -> None:
        """Start the thread unless it runs in this process already; cheap when it does."""
        if self.running_here():
            return
        with self._lock:
            if not self.running_here():
                self._before_start()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._target, name=self._name, daemon=True)
                self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the thread of this process to end (after the owner told it to)."""
        if self.running_here():
            self._thread.join(timeout)  # type: ignore[union-attr]
