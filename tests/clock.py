"""A :class:`actors.runtime.Runtime` whose clock the test moves (Trio's ``MockClock``).

``spawn`` still starts a real thread (a vCPU, xenwatch: code that blocks), but time is the
test's: ``call_later`` callbacks run only when :meth:`ManualRuntime.advance` moves the clock
past their due time, in due order, on the test's thread, and ``monotonic`` reads that clock.
So a timer-driven behaviour (netback's credit timer, the uplinks' delivery schedule) is tested
without sleeping and without depending on how loaded the machine is.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from typing import Any

from actors.runtime import THREADS


class _Call:
    __slots__ = ("due", "fn", "args", "cancelled")

    def __init__(self, due: float, fn: Callable[..., Any], args: tuple) -> None:
        self.due, self.fn, self.args, self.cancelled = due, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class ManualRuntime:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()
        self._due: list[tuple[float, int, _Call]] = []
        self._seq = itertools.count()

    def spawn(self, fn: Callable[..., Any], *args: Any, name: str) -> None:
        THREADS.spawn(fn, *args, name=name)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> _Call:
        with self._lock:
            call = _Call(self.now + max(0.0, delay), fn, args)
            heapq.heappush(self._due, (call.due, next(self._seq), call))
        return call

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def pending(self) -> int:
        """Calls scheduled and not yet run or cancelled."""
        with self._lock:
            return sum(not c.cancelled for _, _, c in self._due)

    def advance(self, seconds: float) -> int:
        """Move the clock ``seconds`` on, running every call that falls due, in order (a call
        scheduled by one that runs is run too if it is due); returns how many ran."""
        with self._lock:
            target = self.now + seconds
        ran = 0
        while True:
            with self._lock:
                if not self._due or self._due[0][0] > target:
                    self.now = target
                    return ran
                due, _, call = heapq.heappop(self._due)
                self.now = max(self.now, due)
            if not call.cancelled:
                call.fn(*call.args)
                ran += 1
