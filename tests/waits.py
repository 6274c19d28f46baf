"""Polling with a deadline, for unit tests whose component works on threads of its own (a vCPU,
the uplink sender, the same-host pipe's dispatcher): DESIGN.md's rule that no test sleeps a
fixed time waiting for something to happen. A test on the in-process host uses
``InProcessHost.until`` instead, which also delivers the host's messages while it waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.002


def wait_until(predicate: Callable[[], T], what: str, timeout: float = 10.0) -> T:
    """Poll ``predicate()`` until it holds and return its value; fail naming ``what`` once
    ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)
    return value
