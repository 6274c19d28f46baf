"""xenwatch: the one kernel thread that runs every xenstore watch callback of the guest.

Linux ``drivers/xen/xenbus/xenbus_xs.c``: watch events are queued as they arrive
(``process_watch_event``) and the ``xenwatch`` thread runs their callbacks one at a time, so a
driver's callback never races another's (blkfront's and netfront's backend-state watches, the
PV control protocol's ``control/shutdown``, :mod:`.manage`). Here each callback also waits at
the run gate (:mod:`.rungate`): a paused domain runs no callback, and finds the events pending
when it runs again, as a paused Xen domain finds its event channels pending; a shut-down
domain runs none again.

Decisions:

* The xenstore client calls :meth:`Xenwatch.queue_event` from whatever thread delivers watch
  events (the actor's, or the caller of ``watch`` for the firing on registration); queueing
  never blocks, so xenstored's pushes are never held up by a slow callback.
* A callback that raises is logged and the thread goes on (Linux's xenwatch does not die with
  a driver's callback); :class:`~.rungate.Halted` ends it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from actors.domain.rungate import Halted, RunGate
from actors.runtime import Runtime


class XsWatches(Protocol):
    """The part of :class:`actors.transport.xs_client.XsClient` xenwatch uses."""

    def watch(self, path: str, token: str, callback: Callable[[str, str], None]) -> None: ...


class Xenwatch:
    """The watches of one kernel. :meth:`start` once (the thread comes from ``runtime``),
    then :meth:`register_watch` from any thread; ``stats["xs_events"]`` counts the events."""

    def __init__(self, xs: XsWatches, gate: RunGate, runtime: Runtime, log: Any) -> None:
        self.xs, self.gate, self.runtime, self.log = xs, gate, runtime, log
        self.stats = {"xs_events": 0}
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._handlers: dict[str, Callable[[], None]] = {}

    def start(self) -> None:
        self.runtime.spawn(self._xenwatch_thread, name="xenwatch")

    def register_watch(self, path: str, token: str, handler: Callable[[], None]) -> None:
        """``register_xenbus_watch``: ``handler()`` runs on the xenwatch thread, behind the
        gate, each time ``path`` (or a node under it) changes, and once on registration."""
        self._handlers[token] = handler
        self.xs.watch(path, token, self.queue_event)

    def queue_event(self, path: str, token: str) -> None:
        """A watch event from xenstored: queue it for the xenwatch thread."""
        with self._lock:
            self.stats["xs_events"] += 1
        self._events.put((path, token))

    def _xenwatch_thread(self) -> None:
        """Run watch callbacks one at a time, each only while the domain may run."""
        try:
            while True:
                path, token = self._events.get()
                self.gate.enter(vcpu=False)
                handler = self._handlers.get(token)
                if handler is None:
                    continue
                try:
                    handler()
                except Exception:
                    self.log.exception("watch callback failed", path=path, token=token)
        except Halted:
            pass
