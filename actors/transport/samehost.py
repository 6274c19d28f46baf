"""A client's transport on the same host as its hypervisor: hypercalls through a pipe.

The Ray transport stays for everything else (xenstored, the toolstack, other hosts); only
hypercalls to this host's hypervisor, and the upcalls and vCPU gates it posts back, cross the
shared-memory pipe (``actors.transport.hvpipe``). The hypervisor still mediates every event: a
backend's ``EVTCHNOP_send`` is a hypercall on its pipe, and the frontend's upcall comes
down the frontend's pipe.

Nobody owns the reading. Whichever thread needs something from the pipe (a caller its
reply, the dispatcher its next upcall) reads it if no other thread is reading, and hands
what it finds to whoever it is for (leader/follower). Upcalls and vCPU gates run on the
dispatcher thread in the order they were posted, as one vCPU takes interrupts; usually that
thread was the one waiting on the doorbell, so an upcall costs one wake-up. A handler may
itself make hypercalls (xenstored answers ``VIRQ_DOM_EXC`` with ``getdomaininfolist``) and
read its own reply; a caller blocked while the dispatcher runs a handler reads for itself,
so no lock a handler waits on can stop a reply from being read.

A hypercall whose result nobody reads (``HypercallClient.post``: an event-channel kick) goes
up the pipe without waiting; the pipe keeps it in order with the caller's others.

A pipe the hypervisor dropped (or that broke) is discarded and the next hypercall opens a new
one. The old one is closed (its doorbells and its mapping) once nobody uses it: every
read, write or look at its closed flag holds it (:meth:`SameHostTransport._hold`), and
whichever of the discarding thread and the last holder comes last closes it; a reader blocked
on its doorbell is woken by the discard, which rings it.

An idle process sleeps: the dispatcher blocks on the doorbell with no timeout (the
hypervisor rings it for every upcall, and when it drops the pipe), so an idle domain wakes
for nothing. Only a caller waiting for a reply checks, every ``LIVENESS_S``, that the
hypervisor is still there.

The pipe is opened, over Ray, on the first hypercall: a DomU's endpoint and process are
known to the hypervisor only once the toolstack has handed over its vCPUs. A refused open
(another domain's endpoint, a wrong secret) leaves the client on Ray.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from typing import Any, Callable

import structlog

from actors.transport import PeerGone, Transport
from actors.transport.hvpipe import HvPipe, HvPipeBroken
from actors.transport.hypercall_client import Credential

LIVENESS_S = 1.0  # how often a waiting caller checks the hypervisor is still there
FULL_RETRY_S = 0.001  # the up ring is full only while the hypervisor is stalled


class SameHostTransport:
    """Implements :class:`actors.transport.raycall.Transport`; ``fallback`` carries what is not ours."""

    def __init__(self, hypervisor: str, cred: Credential, deliver: Callable[..., Any],
                 fallback: Transport, log: Any = None) -> None:
        self.hypervisor = hypervisor
        self.cred = cred
        self.fallback = fallback
        self._deliver = deliver
        self.log = log or structlog.get_logger()
        self._pipe: HvPipe | None = None
        self._hv_pid = 0
        self._refused = False
        self._dispatching = False
        self._open_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._cv = threading.Condition()  # guards the four below (and the switch of _pipe)
        self._reading = False  # a thread is waiting on the doorbell or receiving
        self._replies: dict[int, tuple[bool, Any] | None] = {}  # seq -> (ok, value) once here
        self._events: collections.deque[tuple[str, list]] = collections.deque()
        self._holders: dict[HvPipe, int] = {}  # pipe -> the threads using it now

    # -- Transport ------------------------------------------------------------------------

    def call(self, dest: str, kind: str, *args: Any, timeout: float | None = None) -> Any:
        pipe = self._open() if dest == self.hypervisor and kind == "hypercall" else None
        if pipe is None:
            return self.fallback.call(dest, kind, *args, timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        seq = next(self._seq)
        with self._cv:
            self._replies[seq] = None
        try:
            self._write(pipe, memoryview(pipe.frame([seq, kind, list(args)])), dest,
                        kind, deadline)
            self._await(pipe, lambda: self._replies[seq] is not None, dest, kind, deadline)
            with self._cv:
                ok, value = self._replies[seq]
        except HvPipeBroken as e:
            self._discard(pipe)
            raise PeerGone(dest) from e
        finally:
            with self._cv:
                self._replies.pop(seq, None)
        if not ok:
            raise RuntimeError(f"{dest} failed {kind}: {value}")
        return value

    def send(self, dest: str, kind: str, *args: Any) -> None:
        pipe = self._open() if dest == self.hypervisor and kind == "hypercall" else None
        if pipe is None:
            self.fallback.send(dest, kind, *args)
            return
        frame = memoryview(pipe.frame([0, kind, list(args)]))
        try:
            self._write(pipe, frame, dest, kind, None)
        except (HvPipeBroken, PeerGone):
            self._discard(pipe)  # one-way: like an interrupt to a dead peer, it is lost

    def _write(self, pipe: HvPipe, frame: memoryview, dest: str, kind: str,
               deadline: float | None) -> None:
        if not self._hold(pipe):
            raise PeerGone(dest)  # dropped since the caller took it
        try:
            with self._write_lock:  # the pieces of one frame must not interleave
                while frame:
                    frame = frame[pipe.write(frame):]
                    if frame:
                        self._check(pipe, dest, kind, deadline)
                        time.sleep(FULL_RETRY_S)
        finally:
            self._let_go(pipe)

    def forget(self, dest: str) -> None:
        self.fallback.forget(dest)

    def prefetch(self, dest: str) -> None:
        self.fallback.prefetch(dest)

    # -- the pipe ----------------------------------------------------------------------

    def _open(self) -> HvPipe | None:
        if self._pipe is not None or self._refused:
            return self._pipe
        with self._open_lock:
            if self._pipe is None and not self._refused:
                c = self.cred
                answer = self.fallback.call(self.hypervisor, "open_hvpipe", c.domid, c.secret,
                                            c.endpoint, os.getpid())
                if answer["rc"] < 0:
                    self._refused = True
                    self.log.warning("no same-host pipe: staying on Ray", rc=answer["rc"])
                    return None
                pipe = HvPipe(answer["path"], hypervisor=False)
                self._hv_pid = answer["pid"]
                with self._cv:
                    self._pipe = pipe
                    self._cv.notify_all()
                if not self._dispatching:
                    self._dispatching = True
                    threading.Thread(target=self._dispatch, name="pipe-dispatch",
                                     daemon=True).start()
        return self._pipe

    def _check(self, pipe: HvPipe, dest: str, kind: str, deadline: float | None) -> None:
        """Raise if the call can never be answered (hypervisor gone, pipe dropped)."""
        try:
            os.kill(self._hv_pid, 0)
        except ProcessLookupError:
            raise PeerGone(dest) from None
        if not self._hold(pipe):
            raise PeerGone(dest)
        try:
            closed = pipe.closed
        finally:
            self._let_go(pipe)
        if closed:
            raise PeerGone(dest)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{dest} did not answer {kind} in time")

    def _discard(self, pipe: HvPipe) -> None:
        """Forget a dropped or broken pipe: the next hypercall opens a new one. It is closed
        now if nobody holds it, else by the last holder to let go."""
        with self._open_lock, self._cv:
            if self._pipe is not pipe:
                return  # discarded already
            self._pipe = None
            unused = pipe not in self._holders
            if not unused:  # held, so not closed yet: a reader blocked on it lets go
                pipe.wake_reader()
            self._cv.notify_all()
        if unused:
            pipe.close()

    def _hold(self, pipe: HvPipe) -> bool:
        """Keep ``pipe`` open while this thread uses it; False if it was discarded."""
        with self._cv:
            if self._pipe is not pipe:
                return False
            self._holders[pipe] = self._holders.get(pipe, 0) + 1
            return True

    def _let_go(self, pipe: HvPipe) -> None:
        """Done with ``pipe``: the last holder of a discarded pipe closes it."""
        with self._cv:
            left = self._holders[pipe] - 1
            if left:
                self._holders[pipe] = left
                return
            del self._holders[pipe]
            if self._pipe is pipe:
                return
        pipe.close()

    # -- reading: whoever needs to ---------------------------------------------------------

    def _await(self, pipe: HvPipe, ready: Callable[[], bool], dest: str, kind: str,
               deadline: float | None) -> None:
        """Return once ``ready()``: read the pipe while nobody else does, else wait for
        whoever does to hand over what it found."""
        while True:
            with self._cv:
                while not ready():
                    if self._pipe is not pipe:
                        raise PeerGone(dest)
                    if not self._reading:
                        self._reading = True
                        break
                    if not self._cv.wait(_slice(deadline)):
                        self._check(pipe, dest, kind, deadline)
                else:
                    return
            if not self._read_once(pipe, _slice(deadline)):
                self._check(pipe, dest, kind, deadline)

    def _read_once(self, pipe: HvPipe, timeout: float | None) -> bool:
        """Wait up to ``timeout`` for the doorbell and take what came (the caller set
        ``_reading``): replies to their callers, upcalls to the dispatcher's queue. False at
        once for a pipe discarded meanwhile."""
        messages: list = []
        held = dropped = False
        try:
            held = self._hold(pipe)
            if held:
                pipe.wait(timeout)
                messages = pipe.receive()
                dropped = pipe.closed
        except HvPipeBroken as e:
            self.log.error("hypervisor pipe broken", error=str(e))
            dropped = True
        finally:
            with self._cv:
                self._reading = False
                for m in messages:
                    if m[0]:
                        if m[0] in self._replies:
                            self._replies[m[0]] = (m[1], m[2])
                    else:
                        self._events.append((m[1], m[2]))
                self._cv.notify_all()
            if held:
                self._let_go(pipe)
        if dropped:
            self._discard(pipe)
        return bool(messages)

    def _dispatch(self) -> None:
        """Run upcalls and gates in order; read the pipe whenever there are none."""
        while True:
            with self._cv:
                pipe = self._pipe
                while not self._events and (pipe is None or self._reading):
                    self._cv.wait()
                    pipe = self._pipe
                event = self._events.popleft() if self._events else None
                if event is None:
                    self._reading = True
            if event is None:
                self._read_once(pipe, None)
                continue
            try:
                self._deliver(event[0], *event[1])
            except Exception:
                self.log.exception("handler failed", kind=event[0])


def _slice(deadline: float | None) -> float:
    """How long to block before re-checking liveness and the caller's deadline."""
    if deadline is None:
        return LIVENESS_S
    return max(0.0, min(LIVENESS_S, deadline - time.monotonic()))
