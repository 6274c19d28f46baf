"""Secondary vCPUs: bringing them up and down, and running an init's work on each.

Why: a PV Linux guest learns how many vCPUs it may have by probing ``VCPUOP_is_up`` until
-ENOENT (``xen_fill_possible_map``), brings up those the toolstack marked
``cpu/N/availability`` = ``online`` (``VCPUOP_up``), and follows that node for ``xl vcpu-set``
(``drivers/xen/cpu_hotplug.c``: ``handle_vcpu_hotplug_event``). Here each vCPU is a thread of
the domain's process that runs guest code only while the scheduler gives it a pCPU (the run
gate); an idle secondary vCPU blocks in the hypervisor. An init spreads work over the vCPUs
with :meth:`Smp.run_on_each` (what a multithreaded program does): vCPU 0 runs its share on
its own thread, each online secondary runs its share on its own.

Decisions:

* A vCPU taken offline finishes the work it is running first (Linux migrates the tasks of a
  CPU going down; there is nowhere to migrate a share to here), then goes down
  (``VCPUOP_down``) and its thread ends. vCPU 0 never goes down, as on Linux.
* All vCPU threads run Python under the process's one interpreter lock: the scheduler's shares
  are what the hypervisor grants each vCPU, while the host runs a guest's Python on one core
  at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.domain.rungate import Halted, RunGate, VcpuCondition
from actors.runtime import Runtime
from protocols.errno import XenError
from protocols.hypercall import XEN_LEGACY_MAX_VCPUS, Hypercall, VcpuOp

Work = Callable[[int], Any]


class Smp:
    """The domain's vCPUs beyond vCPU 0. ``ports`` binds a vCPU's timer and reschedule IPI
    before it comes up (``bind(n)``) and closes them once it is down (``unbind(n)``)."""

    def __init__(self, gate: RunGate, hypercall: Callable[..., Any], xs: Any,
                 runtime: Runtime, log: Any, ports: Any) -> None:
        self.gate, self.hypercall, self.xs = gate, hypercall, xs
        self.runtime, self.log, self.ports = runtime, log, ports
        self.possible = 1
        self.cv = VcpuCondition()  # guards the sets below; secondaries wait on it for work
        self.online: set[int] = {0}  # up, until VCPUOP_down and its ports closed
        self._going_down: set[int] = set()  # asked to go down (cancelled by an up)
        self._exiting: set[int] = set()  # its thread has left its work loop
        self._reup: set[int] = set()  # wanted up again while exiting: up once it is down
        self._work: dict[int, Work] = {}
        self._results: dict[int, tuple[bool, Any]] = {}

    def probe(self) -> int:
        """``xen_fill_possible_map``: the vCPUs this domain may have."""
        n = 1
        while n < XEN_LEGACY_MAX_VCPUS:
            try:
                self.hypercall(Hypercall.vcpu_op, VcpuOp.is_up, vcpuid=n)
            except XenError:
                break
            n += 1
        self.possible = n
        self.gate.add_vcpus(n)
        return n

    def watch(self, register_watch: Callable[[str, str, Callable[[], None]], None]) -> None:
        """``setup_cpu_watcher``: bring the vCPUs to what ``cpu/N/availability`` says, now
        (a watch fires once when set) and whenever it changes."""
        if self.possible > 1:
            register_watch("cpu", "cpu-hotplug", self.follow)

    def follow(self) -> None:
        """``vcpu_hotplug`` for every possible vCPU but 0."""
        for n in range(1, self.possible):
            try:
                want = self.xs.read(f"cpu/{n}/availability").decode() == "online"
            except XenError:
                continue  # no such node: as Linux, leave the vCPU as it is
            with self.cv:
                up = n in self.online
                if want and n in self._exiting:
                    self._reup.add(n)  # up again as soon as it is down
                    continue
                if want and n in self._going_down:
                    self._going_down.discard(n)  # not yet left its loop: it stays
                    continue
                if not want:
                    self._reup.discard(n)
            if want and not up:
                self._up(n)
            elif up and not want:
                self._down(n)

    def _up(self, n: int) -> None:
        try:
            self.ports.bind(n)
            self.hypercall(Hypercall.vcpu_op, VcpuOp.up, vcpuid=n)
        except XenError as e:
            self.log.warning("vCPU did not come up", vcpu=n, error=str(e))
            return
        with self.cv:
            self.online.add(n)
        self.runtime.spawn(lambda: self._secondary(n), name=f"vcpu{n}")
        self.log.info("vCPU up", vcpu=n)

    def _down(self, n: int) -> None:
        with self.cv:
            self._going_down.add(n)
            self.cv.notify_all()

    def _secondary(self, n: int) -> None:
        """A secondary vCPU: run the work it is given, block in Xen while it has none."""
        self.gate.on_vcpu_thread(n)
        try:
            self.gate.enter()
            while True:
                with self.cv:
                    self.cv.wait_for(lambda: n in self._work or n in self._going_down)
                    if n not in self._work:
                        self._exiting.add(n)
                        break
                    work = self._work[n]
                try:
                    self.gate.enter()
                    result = (True, work(n))
                except Halted:
                    raise
                except Exception as e:  # noqa: BLE001 - the init hears of it on vCPU 0
                    result = (False, e)
                with self.cv:
                    del self._work[n]
                    self._results[n] = result
                    self.cv.notify_all()
        except Halted:
            return
        finally:
            self.gate.vcpu_stopped()
        try:
            self.hypercall(Hypercall.vcpu_op, VcpuOp.down, vcpuid=n)
            self.ports.unbind(n)
        except XenError as e:
            self.log.warning("VCPUOP_down failed", vcpu=n, error=str(e))
        with self.cv:
            self.online.discard(n)
            self._going_down.discard(n)
            self._exiting.discard(n)
            reup = n in self._reup
            self._reup.discard(n)
            self.cv.notify_all()
        self.log.info("vCPU down", vcpu=n)
        if reup:
            self._up(n)

    def vcpus(self) -> list[int]:
        with self.cv:
            return sorted(self.online - self._going_down - self._exiting)

    def run_on_each(self, fn: Work) -> list[Any]:
        """``fn(n)`` on every online vCPU at once (vCPU 0: the caller), their results in vCPU
        order once all are done; the first exception raised is raised here."""
        with self.cv:
            others = sorted(self.online - self._going_down - self._exiting - {0})
            for n in others:
                self._work[n] = fn
            self.cv.notify_all()
        results: dict[int, tuple[bool, Any]] = {}
        try:
            results[0] = (True, fn(0))
        except Exception as e:  # noqa: BLE001 - raised below, once the others are done
            results[0] = (False, e)
        with self.cv:
            self.cv.wait_for(lambda: all(n in self._results for n in others))
            results.update((n, self._results.pop(n)) for n in others)
        for ok, value in results.values():
            if not ok:
                raise value
        return [results[n][1] for n in sorted(results)]

