"""Threads and timers, handed to the logic that needs them rather than created inside it.

A vCPU that runs an init program, xenwatch running watch callbacks, netback's credit timer,
the uplinks' delivery schedule: logic modules start work elsewhere or later through a
:class:`Runtime` they are given (``spawn``, ``call_later``, ``monotonic``), as Trio's
``MockClock`` lets its tests drive time. The shells hand them :data:`THREADS`; a test hands
them a runtime whose clock it advances itself (``tests/clock.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None:
        """Stop the call if it has not run yet (harmless afterwards)."""


class Runtime(Protocol):
    def spawn(self, fn: Callable[..., Any], *args: Any, name: str) -> None:
        """Run ``fn(*args)`` on a thread of its own, named ``name``, that does not keep the
        process alive."""

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` once, ``delay`` seconds from now, on another thread."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (what ``call_later`` counts in)."""


class Threads:
    """The real :class:`Runtime`: daemon threads and ``threading.Timer``."""

    def spawn(self, fn: Callable[..., Any], *args: Any, name: str) -> None:
        threading.Thread(target=fn, args=args, name=name, daemon=True).start()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        timer = threading.Timer(delay, fn, args)
        timer.daemon = True
        timer.start()
        return timer

    def monotonic(self) -> float:
        return time.monotonic()


THREADS = Threads()
