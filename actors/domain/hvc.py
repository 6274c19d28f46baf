"""The guest's console driver: its output into the shared console page, for xenconsoled.

Linux ``drivers/tty/hvc/hvc_xen.c`` for a PV domU: the console page and event channel come from
start_info (``console.domU.mfn``/``evtchn``); ``domU_write_console`` puts bytes in the page's
``out`` ring (reference 7.4, 11.2) and ``notify_daemon`` kicks the event channel after every
piece, so xenconsoled (``tools/console/daemon/io.c``) drains it and signals back. A writer
that finds the ring full waits for that signal, as the hvc tty waits for its interrupt.

Decisions:

* Program output (:meth:`HvcConsole.write_console`, the init's ``print``) never loses a
  byte: on a full ring it blocks the vCPU, a state a pause accepts (:mod:`.rungate`). A
  suspend waits for the write to end (``RunGate.no_freeze``): the rest of the bytes are on the
  vCPU's stack, which a migration does not carry, so a write is all before a suspend or all
  after it. Kernel messages (:meth:`HvcConsole.printk`) are best effort, as Linux's
  printk to a stuck console: what does not fit is dropped and counted, and a writer holding
  the console longer than :data:`PRINTK_LOCK_TIMEOUT_S` makes the message be dropped rather
  than waited for.
* A blocked writer re-kicks xenconsoled after :data:`CONSOLE_RECHECK_S` without a signal back
  (xenconsoled restarted and missed the last kick, or just came up), then re-checks the ring.
"""

from __future__ import annotations

import threading
from typing import Any

from actors.domain.rungate import RunGate
from protocols.console import ConsoleInterface
from protocols.errno import XenError
from protocols.hypercall import EvtchnOp, Hypercall

CONSOLE_RECHECK_S = 0.25  # re-check a full console ring this often, signal or not
PRINTK_LOCK_TIMEOUT_S = 1.0  # kernel messages give up rather than wait on a stuck writer


class HvcConsole:
    """The console of one domU: ``intf`` over its console page, ``evtchn`` its console port
    (the kernel sets both from start_info when it boots or resumes; None before).

    The vCPU calls :meth:`write_console`; any thread may call :meth:`printk`; the kernel's
    upcall path calls :meth:`interrupt` when the console port fires. ``stats`` counts
    ``console_bytes`` (put in the ring), ``console_waits`` (full ring) and ``console_dropped``
    (kernel messages that did not fit)."""

    def __init__(self, intf: ConsoleInterface, evtchn: int | None, hypercall: Any,
                 gate: RunGate, log: Any, *, recheck_s: float = CONSOLE_RECHECK_S) -> None:
        self.intf, self.evtchn = intf, evtchn
        self.hypercall, self.gate, self.log = hypercall, gate, log
        self.recheck_s = recheck_s
        self.stats = dict.fromkeys(("console_bytes", "console_waits", "console_dropped"), 0)
        self._lock = threading.Lock()  # one writer in the ring at a time
        self._kicked = False  # xenconsoled signalled back (under gate.cv)

    def write_console(self, data: bytes) -> None:
        """Put all of ``data`` in the ring, kicking xenconsoled after each piece; on a full
        ring, block until it drains (its signal back, or a re-check). vCPU only."""
        view = memoryview(data)
        with self.gate.no_freeze(), self._lock:  # a suspend never splits a write
            while view:
                n = self.intf.write_out(view)
                view = view[n:]
                if n:
                    self.stats["console_bytes"] += n
                    self.notify_daemon()
                if view:
                    self._wait_for_space()

    def flush(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` s, until xenconsoled has taken every byte of the ring
        (its signal back wakes the wait). A suspend does this first, so the lines printed
        before it are logged on this host and not again, from the migrated ring, on the
        destination. True if the ring is empty."""
        ring = self.intf.out_ring
        with self.gate.cv:
            return self.gate.cv.wait_for(lambda: ring.cons == ring.prod, timeout)

    def printk(self, text: str) -> None:
        """A kernel message: best effort, never waits for ring space or a stuck writer."""
        data = (text + "\n").encode()
        if not self._lock.acquire(timeout=PRINTK_LOCK_TIMEOUT_S):
            self.stats["console_dropped"] += len(data)
            return
        try:
            n = self.intf.write_out(data)
            self.stats["console_bytes"] += n
            self.stats["console_dropped"] += len(data) - n
            if n:
                self.notify_daemon()
        except Exception:
            self.log.exception("console write failed", text=text)
        finally:
            self._lock.release()

    def interrupt(self) -> None:
        """The console port fired: xenconsoled consumed output, so there may be room."""
        with self.gate.cv:
            self._kicked = True
            self.gate.cv.notify_all()

    def notify_daemon(self) -> None:
        """``notify_remote_via_evtchn``: Linux ignores what the send returns. A domain being
        destroyed gets EPERM here while it still prints."""
        try:
            self.hypercall(Hypercall.event_channel_op, EvtchnOp.send, port=self.evtchn)
        except XenError:
            pass

    def _wait_for_space(self) -> None:
        """Block until xenconsoled signals back; after a quiet spell kick it again, in case
        it missed the last kick, then re-check the ring either way."""
        with self.gate.cv:
            self.stats["console_waits"] += 1
            kicked = self.gate.wait_event(lambda: self._kicked, self.recheck_s)
            self._kicked = False
        self.gate.enter()
        if not kicked:
            self.notify_daemon()
