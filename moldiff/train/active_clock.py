"""The wall time a process actually ran: a clock that leaves out the time it was stopped.

A training leg is paused with ``kill -STOP`` so that a timing or an evaluation can run on an idle
machine (docs/training.md). The wall clock keeps running meanwhile, so a record built on it counts
the pause as training time. A daemon thread ticks once a second. While the process is stopped the
thread is stopped too, so when it wakes it sees a gap far longer than its tick, and it books the gap
as paused. Shorter gaps (under ``threshold``) count as running, because a busy machine, or a long
call that holds the GIL, can delay a tick by seconds.
"""

from __future__ import annotations

import threading
import time


class ActiveClock:
    def __init__(self, tick: float = 1.0, threshold: float = 60.0, now=time.monotonic):
        if not 0 < tick < threshold:
            raise ValueError(f"ActiveClock: need 0 < tick < threshold, got tick={tick}, threshold={threshold}")
        self.tick, self.threshold, self._now = float(tick), float(threshold), now
        self.paused = 0.0
        self._start = self._last = now()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ActiveClock:
        self._thread = threading.Thread(target=self._run, name="moldiff-active-clock", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _run(self) -> None:
        while not self._done.wait(self.tick):
            self.observe()

    def observe(self) -> None:
        """Book the time since the last look as paused if it is a gap no tick could explain."""
        with self._lock:
            t = self._now()
            gap, self._last = t - self._last, t
            if gap > self.threshold:
                self.paused += gap - self.tick

    def elapsed(self) -> float:
        """Seconds since the clock was made, less the time the process was stopped."""
        self.observe()
        with self._lock:
            return self._last - self._start - self.paused
