"""Where one host's xenstored keeps what it acknowledged, and how its next incarnation takes it
back (issue 12, "Recovery"). Xen's live update hands the new xenstored the same things
(``docs/designs/xenstore-migration.md``): every node, each connection with its watches and
transactions, and the replies not yet written; here they go through a journal
(:mod:`.journal`), since a SIGKILLed process hands nothing over.

* **Recording.** The server records each request that changed something (with its reply),
  each connection opened or closed and each domain introduced, shut down or gone; the
  connections record each domain's credential. A record is in the journal before its reply
  is sent, so whatever a client was told is durable.
* **Compaction.** Once the log holds ``compact_bytes``, a thread writes a checkpoint of the
  whole state (the connections' lock, then the server's: nothing changes meanwhile) and
  empties the log. Each boot and each recovery ends with one too.
* **Recovery.** The checkpoint, then the records after it, replayed by the same code that
  made them; then the Unix-socket clients are dropped (their sockets died with the process:
  they connect again), each transport connection serves its endpoint again, transactions
  that were open are doomed (EAGAIN at their commit: libxl-style callers run them again), and
  every watch fires once, as on registration, so a client that missed an event while
  xenstored was away looks again.

No Ray: the shell (``actor.py``) and the unit tests use it alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from actors.xenstored.connections import Connections, Push
from actors.xenstored.journal import Journal, JournalError
from actors.xenstored.server import XenstoredServer

# A checkpoint once the log holds this much: ~10 k small records, which a restart replays
# about as fast as they were served (0.25-0.35 ms each on a loaded 2-core machine here).
COMPACT_BYTES = 1 << 20


class DurableXenstored:
    """The journal of one xenstored under ``prefix`` (``<prefix>.log``, ``<prefix>.ckpt``).
    :meth:`boot` a fresh one, or :meth:`recover` the last one's state; :meth:`close` at the
    end."""

    def __init__(self, prefix: str, log: Any, *, compact_bytes: int = COMPACT_BYTES) -> None:
        self.journal = Journal(prefix)
        self.log, self.compact_bytes = log, compact_bytes
        self.connections: Connections | None = None
        self.stats: dict[str, Any] = {"checkpoints": 0, "recovered": None, "lost": None}
        self._due = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    def boot(self, push: Push, dom0_secret: str) -> Connections:
        """A new, empty xenstored, whatever the journal held."""
        self.journal.reset()
        server = XenstoredServer(log=self.log, record=self.record)
        return self._serve(Connections(server, push, dom0_secret, record=self.record))

    def recover(self, push: Push, dom0_secret: str,
                prefetch: Callable[[str], None]) -> Connections | None:
        """The last incarnation's xenstored, serving again (``prefetch``: the transport's, for
        the endpoints it pushes to); None if it left no checkpoint (it was killed before its
        first: nothing was acknowledged yet) or one that cannot be read (then the state is
        lost, which ``stats["lost"]`` says: better a new xenstored than none)."""
        t0 = time.perf_counter()
        try:
            state, records = self.journal.load()
        except JournalError as e:
            self.log.error("xenstored journal unreadable: starting empty", error=str(e))
            self.stats["lost"] = str(e)
            return None
        if self.journal.damage is not None:
            self.log.error("xenstored journal damaged: replaying what comes before",
                           damage=self.journal.damage)
        if state is None:
            return None
        server = XenstoredServer.recover(state["server"], log=self.log, record=self.record)
        connections = Connections(server, push, dom0_secret, record=self.record,
                                  credentials=state["credentials"])
        for record in records:
            connections.replay(record)
        connections.reconnect(prefetch)
        self._serve(connections)
        self.stats["recovered"] = {"records": len(records), "damage": self.journal.damage,
                                   "ms": round((time.perf_counter() - t0) * 1e3, 1),
                                   "at": time.time()}
        self.log.info("xenstored recovered", **self.stats["recovered"])
        return connections

    def record(self, record: list) -> None:
        """Journal one record (the server's and the connections' hook)."""
        self.journal.append(record)
        if self.journal.size >= self.compact_bytes:
            self._due.set()

    def checkpoint(self) -> None:
        """Compact: the whole state becomes the checkpoint, and the log is emptied."""
        assert self.connections is not None
        self.connections.checkpoint(self.journal.checkpoint)
        self.stats["checkpoints"] += 1

    def statistics(self) -> dict[str, Any]:
        return {**self.stats, "log_bytes": self.journal.size}

    def close(self) -> None:
        self._closing = True
        self._due.set()
        if self._thread is not None:
            self._thread.join()
        self.journal.close()

    def _serve(self, connections: Connections) -> Connections:
        self.connections = connections
        self.checkpoint()
        self._thread = threading.Thread(target=self._compact, name="xenstored-compact",
                                        daemon=True)
        self._thread.start()
        return connections

    def _compact(self) -> None:
        while True:
            self._due.wait()
            if self._closing:
                return
            self._due.clear()
            try:
                self.checkpoint()
            except Exception:  # the log goes on growing; the next record tries again
                self.log.exception("xenstored checkpoint failed")
