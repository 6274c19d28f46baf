"""The hypervisor's end of every same-host pipe (``actors.transport.hvpipe``).

It creates a pipe when a client process asks (``open_hvpipe``, authenticated by the
state machine), serves the hypercalls that arrive on any of them from one thread waiting on
all their doorbells (epoll), and posts upcalls and vCPU gates down them.

The hypervisor never waits for a guest. What does not fit in the client's ring (a stopped or
hostile client, a big reply) waits in that pipe's backlog, in order, and the serving
thread retries it; a backlog past ``MAX_BACKLOG`` frames, or a client that writes
something other than frames, loses its pipe (it may open a new one), as xenstored drops
a connection with a broken ring. Nothing it does touches another client's pipe.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import select
import threading
from collections.abc import Callable, Mapping
from typing import Any

from actors.runtime import THREADS, Runtime
from actors.transport import hvpipe
from actors.transport.hvpipe import HvPipe, HvPipeBroken

MAX_BACKLOG = 65536  # frames waiting for one client before its pipe is dropped
BACKLOG_RETRY_S = 0.05


@dataclasses.dataclass(eq=False)
class Conn:
    """One open pipe: who opened it (endpoint, domid, client pid) and its send state."""

    endpoint: str
    domid: int
    pid: int
    pipe: HvPipe
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    backlog: collections.deque = dataclasses.field(default_factory=collections.deque)
    dropped: bool = False


class HvPipeServer:
    """``calls[kind](*args, pid=<the client's pid>)`` runs a client's call on the serving
    thread; its value is the reply. A kind not in ``calls`` is refused (the hypervisor offers only ``hypercall``: the
    one way into it from a guest)."""

    def __init__(self, prefix: str, calls: Mapping[str, Callable[..., Any]], log: Any,
                 runtime: Runtime = THREADS) -> None:
        self._prefix = prefix
        self._calls = dict(calls)
        self.log = log
        self._lock = threading.Lock()
        self._by_endpoint: dict[str, Conn] = {}
        self._by_fd: dict[int, Conn] = {}
        self._doomed: list[Conn] = []
        self._backlogged: set[Conn] = set()  # pipes with frames waiting for room
        self._ids = itertools.count()
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self.stats = collections.Counter()
        self._stopping = False
        runtime.spawn(self._run, name="hvpipes")

    # -- opening and dropping -----------------------------------------------------------

    def open(self, endpoint: str, domid: int, pid: int) -> Conn:
        """A new pipe for ``endpoint`` (already authorised); it replaces any older one."""
        path = f"{self._prefix}-pipe{next(self._ids)}"
        hvpipe.create(path)
        conn = Conn(endpoint, domid, pid, HvPipe(path, hypervisor=True))
        with self._lock:
            old = self._by_endpoint.get(endpoint)
            self._by_endpoint[endpoint] = conn
            self._by_fd[conn.pipe.fileno()] = conn
            self._epoll.register(conn.pipe.fileno(), select.EPOLLIN)
        if old is not None:
            self.drop(old, "replaced")
        self.stats["opened"] += 1
        return conn

    def drop(self, conn: Conn, reason: str) -> None:
        """Stop using a pipe; the serving thread closes and removes it."""
        with self._lock:
            if conn.dropped:
                return
            conn.dropped = True
            if self._by_endpoint.get(conn.endpoint) is conn:
                del self._by_endpoint[conn.endpoint]
        with conn.lock:
            conn.pipe.mark_closed()  # the client learns now; the serving thread closes it
        with self._lock:
            self._doomed.append(conn)  # only after: closing races nothing
        if reason not in ("replaced", "client exited"):
            self.log.warning("pipe dropped", endpoint=conn.endpoint, reason=reason)
        self.stats["dropped"] += 1
        self._wake()

    def close(self) -> None:
        """Drop every pipe and stop serving (the hypervisor is going away)."""
        with self._lock:
            conns = list(self._by_endpoint.values())
        for conn in conns:
            self.drop(conn, "hypervisor stopping")
        self._stopping = True
        self._wake()

    # -- posting ------------------------------------------------------------------------

    def send(self, endpoint: str, kind: str, *args: Any) -> bool:
        """Post a one-way message if ``endpoint`` has a pipe; False if it has none."""
        conn = self._by_endpoint.get(endpoint)
        if conn is None:
            return False
        self._post(conn, [0, kind, list(args)])
        self.stats["posted"] += 1
        return True

    def _post(self, conn: Conn, message: list) -> None:
        with conn.lock:
            if conn.dropped:
                return
            frame = conn.pipe.frame(message)
            try:
                n = 0 if conn.backlog else conn.pipe.write(frame)
            except HvPipeBroken as e:
                overflow = str(e)
            else:
                if n == len(frame):
                    return
                conn.backlog.append(memoryview(frame)[n:])
                self.stats["backlogged"] += 1
                if len(conn.backlog) == 1:  # the serving thread starts retrying it
                    self._backlogged.add(conn)
                    self._wake()
                if len(conn.backlog) <= MAX_BACKLOG:
                    return
                overflow = f"{len(conn.backlog)} messages the client did not read"
        self.drop(conn, overflow)

    def _flush(self, conn: Conn) -> None:
        """Move backlog into the ring while it fits."""
        with conn.lock:
            try:
                while conn.backlog and not conn.dropped:
                    head = conn.backlog[0]
                    n = conn.pipe.write(head)
                    if n < len(head):
                        conn.backlog[0] = head[n:]
                        return
                    conn.backlog.popleft()
            except HvPipeBroken as e:
                reason = str(e)
            else:
                self._backlogged.discard(conn)  # under conn.lock: no append can slip in
                return
        self.drop(conn, reason)

    # -- the serving thread -------------------------------------------------------------

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _run(self) -> None:
        while not self._stopping:
            events = self._epoll.poll(BACKLOG_RETRY_S if self._backlogged else -1)
            for fd, _ in events:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                conn = self._by_fd.get(fd)
                if conn is not None and not conn.dropped:
                    self._serve(conn)
            with self._lock:
                doomed, self._doomed = self._doomed, []
            for conn in doomed:
                self._backlogged.discard(conn)
                self._close(conn)
            for conn in list(self._backlogged):
                self._flush(conn)
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _serve(self, conn: Conn) -> None:
        try:
            messages = conn.pipe.receive()
        except HvPipeBroken as e:
            self.drop(conn, str(e))
            return
        for m in messages:
            if not (isinstance(m, list) and len(m) == 3 and isinstance(m[0], int) and m[0] >= 0
                    and isinstance(m[1], str) and isinstance(m[2], list)):
                self.drop(conn, "a message that is not [seq, kind, args]")
                return
            seq, kind, args = m  # seq 0: posted, nobody waits for the reply
            self.stats["calls" if seq else "posted_calls"] += 1
            handler = self._calls.get(kind)
            if handler is None:
                reply = [seq, False, f"{kind!r} cannot be called on a pipe"]
            else:
                try:
                    reply = [seq, True, handler(*args, pid=conn.pid)]
                except Exception as e:  # hostile arguments, or a bug: an error, we go on
                    self.log.warning("pipe call failed", kind=kind, error=repr(e))
                    reply = [seq, False, repr(e)]
            if seq:
                self._post(conn, reply)

    def _close(self, conn: Conn) -> None:
        with self._lock:
            self._by_fd.pop(conn.pipe.fileno(), None)
        try:
            self._epoll.unregister(conn.pipe.fileno())
        except (OSError, ValueError):
            pass
        with conn.lock:
            conn.pipe.close()
        hvpipe.unlink(conn.pipe.path)

    def statistics(self) -> dict[str, int]:
        with self._lock:
            open_ = len(self._by_endpoint)
        return {"open": open_, **{k: self.stats[k] for k in (
            "opened", "dropped", "calls", "posted_calls", "posted", "backlogged")}}
