"""The hypervisor's shell: it carries out what the state machine decides.

:class:`HypervisorShell` turns ``deliver`` calls into state-machine calls and carries out the
returned effects: upcalls and vCPU gates go out (down the endpoint's same-host pipe if it has
one, else through the transport, one-way, like interrupts), memory files are sized and
removed, and each domain's vCPU process is watched through a pidfd so that its death becomes a
crash (``SHUTDOWN_crash``) exactly as if the guest had called it. It also listens on the
dirty-logging handover socket next to its memory files (``actors.hypervisor.logdirty``) and
hands the descriptors guest processes give it to the state machine's log-dirty mode. It is a
plain class, so the in-process test host runs this very shell; :class:`HypervisorActor` is it
as a Ray actor.
"""

from __future__ import annotations

import os
import pathlib
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from actors import log as xlog
from actors import memory, uffd
from actors.hypervisor.audit import audit
from actors.hypervisor import sched as schedulers
from actors.hypervisor.effects import (ConsoleLine, Deliver, Effect, GateVcpus, ReleaseMemory,
                                       PunchMemory, RunVcpu, SizeMemory, WatchVcpu)
from actors.hypervisor.hvpipes import HvPipeServer
from actors.hypervisor.logdirty import GuestTracker, HandoverServer, UffdDirtyLog
from actors.hypervisor.state import Hypervisor
from actors.runtime import THREADS, Runtime
from actors.transport import Endpoint, Transport
from actors.transport.naming import actor_name
from actors.transport.raycall import RayEndpoint, RayTransport
from protocols.page import PAGES_PER_MIB


TIMER_MAX_S = 3600.0  # the timer thread looks again at least this often (and never overflows)


class HypervisorShell(Endpoint):
    """One host's hypervisor: its state machine, its memory maps, its pipes, its pidfds.
    ``mem_prefix`` names its ``/dev/shm`` files; ``transport`` carries what has no pipe."""

    def __init__(self, host: str, memory_mib: int, pcpus: int, mem_prefix: str,
                 transport: Transport, log: Any, runtime: Runtime = THREADS,
                 sched: str = schedulers.DEFAULT, sched_params: dict | None = None) -> None:
        self.log, self.transport, self.runtime = log, transport, runtime
        self.lock = threading.RLock()  # effects can re-enter (a vCPU already gone at watch)
        self._mem_prefix = mem_prefix
        self._maps: dict[str, memory.Mapping] = {}
        self.dirtylog = UffdDirtyLog(log)
        self.state = Hypervisor(host, memory_mib=memory_mib, pcpus=pcpus, mem_prefix=mem_prefix,
                                frames=self._frames, sched=sched,
                                sched_params=sched_params, dirtylog=self.dirtylog)
        self._timer_cv = threading.Condition(self.lock)  # the timer thread waits here
        self._timer_until: int | None = None  # until when it sleeps (None: until woken)
        self.handovers: HandoverServer | None = None
        try:
            self.handovers = HandoverServer(uffd.handover_path(mem_prefix), self._on_handover,
                                            log, runtime)
        except OSError as e:  # the host runs on; its domains just cannot be live-migrated
            self.log.warning("no dirty-logging handover socket: log-dirty is unavailable",
                             error=str(e))
        self.pipes: HvPipeServer | None = None  # made on the first open: most tests need none
        self._pidfds: dict[int, Callable[[], None]] = {}  # pidfd -> what its death means
        self._wake_r, self._wake_w = os.pipe()
        # one epoll set for them all: watching one more costs the same with hundreds watched
        self._pid_poll = select.epoll()
        self._pid_poll.register(self._wake_r, select.EPOLLIN)
        self._stopping = False
        runtime.spawn(self._watch_pids, name="vcpu-watch")
        runtime.spawn(self._timer_interrupt, name="timer")
        # this process's first name lookup costs 0.2-0.4 s: pay it now, on the route every
        # domain's death takes (VIRQ_DOM_EXC to xenstored), not in a domain's first gate
        transport.prefetch(actor_name(host, "xenstored"))
        self.log.info("hypervisor up", memory_mib=memory_mib, pcpus=pcpus, sched=sched)

    # -- entry points -------------------------------------------------------------------

    def on_boot_dom0(self, memory_mib: int) -> str:
        with self.lock:
            dom0 = self.state.boot_dom0(memory_mib=memory_mib)
        self.log.info("dom0 built", memory_mib=memory_mib)
        return dom0.secret

    def on_hypercall(self, domid: int, secret: str, endpoint: str, data: bytes,
                     pid: int = 0) -> bytes:
        """``pid``: the calling process, given by a same-host pipe (which knows its client)."""
        with self.lock:
            reply, effects = self.state.hypercall(domid, secret, endpoint, data, pid)
            self._carry_out(effects)
        return reply

    def on_open_hvpipe(self, domid: int, secret: str, endpoint: str, pid: int) -> dict:
        """A same-host client asks for a pipe (``actors.transport.samehost``); rc -EPERM if
        refused."""
        with self.lock:
            rc = self.state.authorize_hvpipe(domid, secret, endpoint, pid)
            if rc < 0:
                return {"rc": rc}
            if self.pipes is None:
                self.pipes = HvPipeServer(self._mem_prefix, {"hypercall": self.on_hypercall},
                                          self.log, self.runtime)
            conn = self.pipes.open(endpoint, domid, pid)
        self._watch(pid, lambda: self._client_exited(conn))
        return {"rc": 0, "path": conn.pipe.path, "pid": os.getpid()}

    def _client_exited(self, conn: Any) -> None:
        """A pipe's client process died: drop its pipe; a Dom0 process's grant maps and
        ports go with it, as when Linux closes a dead process's gntdev and evtchn devices."""
        self.pipes.drop(conn, "client exited")
        if conn.domid == 0:
            with self.lock:
                self._carry_out(self.state.process_exited(conn.pid))

    def on_memory_pressure(self, mib: int) -> int:
        """A fault: take up to ``mib`` of the host's free memory away from Xen (0: give it
        back); the MiB taken."""
        with self.lock:
            taken = self.state.table.press(int(mib) * PAGES_PER_MIB) // PAGES_PER_MIB
        self.log.warning("memory pressure", taken_mib=taken)
        return taken

    def on_audit(self) -> dict:
        """What every domain holds (:mod:`actors.hypervisor.audit`), and the files named for this
        host's domains (``<mem_prefix>-d<domid>``, their memory, and what lies beside it: one
        left behind by a domain that is gone is a leak)."""
        with self.lock:
            view = audit(self.state)
        prefix = pathlib.Path(self._mem_prefix)
        files = sorted(str(f) for f in prefix.parent.glob(f"{prefix.name}-d*"))
        return {**view, "domain_files": files}

    def on_vcpu_pids(self) -> dict[int, int]:
        """The process running each domain's vCPUs (what it watches for a crash)."""
        with self.lock:
            return dict(self.state.vcpu_pids)

    def on_statistics(self) -> dict:
        with self.lock:
            pipes = self.pipes.statistics() if self.pipes is not None else {"open": 0}
            handovers = self.handovers.stats if self.handovers is not None else {}
            return {**self.state.statistics(), "pipes": pipes, "logdirty_handovers": handovers}

    def close(self) -> None:
        """Stop the threads and drop the maps and pipes (the host is going away)."""
        self._stopping = True
        os.write(self._wake_w, b"x")
        with self._timer_cv:
            self._timer_cv.notify_all()
        if self.pipes is not None:
            self.pipes.close()
        if self.handovers is not None:
            self.handovers.close()
        with self.lock:
            self.dirtylog.close()
            for m in self._maps.values():
                m.close()
            self._maps.clear()

    def _on_handover(self, domid: int, secret: str, pid: int, tracker: GuestTracker) -> int:
        """A guest process hands over its dirty logging (on the handover server's thread):
        kept for its pid, the domain's at once if the toolstack already named that pid."""
        with self.lock:
            rc = self.state.authorize_dirtylog(domid, secret, pid)
            if rc == 0:
                self.dirtylog.offer(domid, tracker)
                if self.state.vcpu_pids.get(domid) == pid:
                    self.dirtylog.claim(domid, pid)
            return rc

    # -- effects ----------------------------------------------------------------------

    def _carry_out(self, effects: list[Effect]) -> None:
        """Carry out ``effects`` (lock held); the timer thread is woken if whatever made them
        brought the next deadline forward."""
        deadline = self.state.next_deadline()
        if deadline is not None and (self._timer_until is None or deadline < self._timer_until):
            self._timer_cv.notify()
        for e in effects:
            match e:
                case Deliver(endpoint, domid, ports, vcpu):
                    self._send(endpoint, "upcall", domid, list(ports), vcpu)
                case GateVcpus(endpoint, paused, seq):
                    self._send(endpoint, "vcpu_gate", paused, seq)
                case RunVcpu(endpoint, vcpu, run, seq):
                    self._send(endpoint, "vcpu_run", vcpu, run, seq)
                case SizeMemory(path, nr_pages):
                    memory.create(path, nr_pages)
                case PunchMemory(path, runs):
                    try:
                        memory.punch(path, runs)
                    except OSError as err:  # the pages stay the host's cost, not the guest's
                        self.log.warning("cannot punch out pages given back", error=str(err))
                case ReleaseMemory(path):
                    if (m := self._maps.pop(path, None)) is not None:
                        m.close()
                    memory.remove(path)
                case WatchVcpu(domid, pid, endpoint):
                    if endpoint:
                        self.transport.prefetch(endpoint)
                    self._watch(pid, lambda d=domid: self._vcpu_exited(d))
                case ConsoleLine(domid, text):
                    self.log.info("console_io", domid=domid, text=text.rstrip("\n"))

    def _timer_interrupt(self) -> None:
        """The host's timer: sleep until the state machine's next deadline (vCPU timers, the
        scheduler's tick), then let it expire what is due. With every vCPU blocked and no
        timer set it sleeps until an effect wakes it: an idle host costs nothing."""
        with self._timer_cv:
            while not self._stopping:
                try:
                    deadline = self.state.next_deadline()
                    wait = None if deadline is None else (deadline - time.monotonic_ns()) / 1e9
                    if wait is None or wait > 0:
                        self._timer_until = deadline
                        self._timer_cv.wait(None if wait is None else min(wait, TIMER_MAX_S))
                        self._timer_until = None
                        continue
                    self._carry_out(self.state.expire_timers())
                except Exception:  # noqa: BLE001 - the host's clock must keep ticking
                    self._timer_until = None
                    self.log.exception("timer interrupt failed")

    def _frames(self, domid: int, pfn: int, count: int) -> memoryview:
        """Pages of a domain's memory, through one shared mapping of its file per domain."""
        path = self.state.memory_path(domid)
        m = self._maps.get(path)
        if m is None or pfn + count > m.nr_pages:  # first use, or the domain grew
            m = self._maps[path] = memory.Mapping(path)
        return m.pages(pfn, count)

    def _send(self, endpoint: str, kind: str, *args) -> None:
        """One-way, like an interrupt: down the endpoint's pipe if it has one, else the
        transport."""
        if self.pipes is None or not self.pipes.send(endpoint, kind, *args):
            self.transport.send(endpoint, kind, *args)

    def _watch(self, pid: int, on_exit: Callable[[], None]) -> None:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            on_exit()
            return
        self._pidfds[fd] = on_exit
        self._pid_poll.register(fd, select.EPOLLIN)

    def _vcpu_exited(self, domid: int) -> None:
        with self.lock:
            effects = self.state.vcpu_exited(domid)
            if effects:
                self.log.warning("vcpu process died: domain crashed", domid=domid)
            self._carry_out(effects)

    def _watch_pids(self) -> None:
        """Wait on every watched pidfd (vCPU and pipe clients); readable = the process died."""
        while not self._stopping:
            for fd, _ in self._pid_poll.poll():
                if fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                    continue
                on_exit = self._pidfds.pop(fd)
                self._pid_poll.unregister(fd)
                os.close(fd)
                try:
                    on_exit()
                except Exception:  # noqa: BLE001 - the other processes stay watched
                    self.log.exception("handling a watched process's exit failed")
        self._pid_poll.close()
        for fd in (*self._pidfds, self._wake_r, self._wake_w):
            os.close(fd)


@ray.remote(max_restarts=0)
class HypervisorActor(RayEndpoint, HypervisorShell):
    def __init__(self, host: str, memory_mib: int, pcpus: int, run_id: str,
                 log_dir: str | None = None, sched: str = schedulers.DEFAULT,
                 sched_params: dict | None = None) -> None:
        super().__init__(host, memory_mib, pcpus, str(memory.SHM_DIR / f"xenray-{run_id}-{host}"),
                         RayTransport(), xlog.setup(host=host, component="hypervisor",
                                                    log_dir=log_dir), sched=sched,
                         sched_params=sched_params)
