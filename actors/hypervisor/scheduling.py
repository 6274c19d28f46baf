"""The hypervisor's scheduling hypercalls: part of its pure state machine (:mod:`.state`).

Why a module of its own: ``sched_op``, ``set_timer_op``, ``vcpu_op``, the scheduler's
domctls and sysctls and the host's timer interrupt are one concept, the vCPUs' side of the
hypervisor, over :class:`~.vcpus.Vcpus` (which vCPU may run) and the scheduler it drives
(:mod:`.sched`). :class:`Scheduling` is a base of :class:`~.state.Hypervisor`: it uses the
state machine's clock, domain table, event channels, upcall routing and vCPU-message
``seq``, and turns the scheduler's context switches into :class:`~.effects.RunVcpu` effects.

Decisions (Xen's behaviour where it has one):

* A hypercall here has no current vCPU, so the ops that act on the caller's vCPU name it.
* ``SCHEDOP_block`` answers whether it blocked, with the last vCPU-message ``seq`` (older
  ones are stale to the guest from then on) and the upcalls sent for the vCPU.
* Timeouts more than 2^50 ns ahead become now + 2^32 ns (``do_set_timer_op``).
* Dom0 is not scheduled (:mod:`.vcpus`): its vCPU ops are -ENOSYS, ``is_up`` aside.
"""

from __future__ import annotations

from typing import Any

from actors.hypervisor.domains import Domain, Dying
from actors.hypervisor.effects import Effect, RunVcpu
from actors.hypervisor.sched import Switch
from protocols.cpumap import from_bitmap, to_bitmap
from protocols.errno import Errno, XenError
from protocols.hypercall import SchedCmd, SchedOp, VcpuOp, Virq
from protocols.shared_info import EVTCHN_2L_NR_CHANNELS


class Scheduling:
    """The scheduling part of :class:`~.state.Hypervisor` (module docstring)."""

    def next_deadline(self) -> int | None:
        """When :meth:`expire_timers` must next run (``time.monotonic_ns``), None: never."""
        return self.vcpus.next_deadline(self._clock_ns())

    def expire_timers(self) -> list[Effect]:
        """The host's timer interrupt: vCPU timers due raise ``VIRQ_TIMER``
        (``send_timer_event``), and the scheduler ticks if it is due. As in Xen, the VIRQ
        wakes a blocked vCPU only by its upcall: an unbound one is dropped, and a masked one
        wakes only a vCPU polling its port."""
        fired, switches = self.vcpus.expire(self._clock_ns())
        effects = self._switched(switches)
        for domid, vcpu in fired:
            effects += self._route(self.evtchn.send_virq(domid, Virq.TIMER, vcpu))
        return effects

    def _switched(self, switches: list[Switch]) -> list[Effect]:
        """What the scheduler's context switches mean to the domains' processes: the vCPU
        switched from stops at its next kernel entry, the one switched to may run."""
        effects: list[Effect] = []
        for sw in switches:
            for key, run in ((sw.prev, False), (sw.next, True)):
                if key is None:
                    continue
                ep = self._domu_endpoint.get(key[0])
                if ep is not None:
                    self._gate_seq += 1
                    effects.append(RunVcpu(ep, key[1], run, self._gate_seq))
        return effects

    def _check_pollers(self) -> list[Effect]:
        """``evtchn_check_pollers`` for every port an event-channel op made pending."""
        now, switches = self._clock_ns(), []
        for domid, port in self.evtchn.take_raised():
            switches += self.vcpus.check_pollers(domid, port, now)
        return self._switched(switches)

    def _set_running(self, dom: Domain) -> list[Effect]:
        """``vcpu_runnable``'s domain part changed (pause, shutdown, the process handed
        over): tell the scheduler."""
        running = (dom.domid in self._domu_endpoint and not dom.paused
                   and not dom.is_shutdown and dom.dying is Dying.ALIVE)
        return self._switched(self.vcpus.set_running(dom.domid, running, self._clock_ns()))

    def _vcpu_sched_op(self, dom: Domain, sub: int, args: dict) -> tuple[Any, list[Effect]]:
        """``sched_op``'s vCPU ops: block, yield, poll (shutdown is the state machine's)."""
        if sub == SchedOp.block:
            blocked, switches = self.vcpus.block(dom.domid, args["vcpu"], args["events"],
                                                 self._clock_ns())
            return self._block_answer(dom, args["vcpu"], blocked), self._switched(switches)
        if sub == SchedOp.yield_:
            self.vcpus.get(dom.domid, args["vcpu"])
            return 0, self._switched(self.vcpus.sched.yield_(dom.domid, args["vcpu"],
                                                             self._clock_ns()))
        if sub == SchedOp.poll:
            return self._poll(dom, args)
        raise XenError(Errno.ENOSYS)

    def _poll(self, dom: Domain, args: dict) -> tuple[Any, list[Effect]]:
        """``do_poll``: block until one of the ports is pending or the timeout (absolute ns,
        0: none). Xen's refusals: more than 128 ports or one beyond the domain's -EINVAL."""
        ports = frozenset(args["ports"])
        if any(p >= EVTCHN_2L_NR_CHANNELS for p in ports):
            raise XenError(Errno.EINVAL, "poll on a port beyond the 2-level ABI's")
        shared = self.evtchn.shared_info(dom.domid)
        if any(shared.is_pending(p) for p in ports):
            return self._block_answer(dom, args["vcpu"], False), []
        blocked, switches = self.vcpus.poll(dom.domid, args["vcpu"], ports,
                                            self._timeout(args["timeout"]), args["events"],
                                            self._clock_ns())
        return self._block_answer(dom, args["vcpu"], blocked), self._switched(switches)

    def _block_answer(self, dom: Domain, vcpu: int, blocked: bool) -> dict[str, Any]:
        """Blocked or not; the last vCPU-message seq (older ones are stale to the guest now);
        the upcalls sent for the vCPU (it waits for those in flight when it did not block)."""
        return {"blocked": blocked, "seq": self._gate_seq,
                "events": self.vcpus.get(dom.domid, vcpu).delivered}

    def _set_timer_op(self, dom, ep, sub, args):
        """``set_timer_op(timeout)``: the vCPU's one-shot timer, absolute ns on the host's
        clock (0: cancel). It raises ``VIRQ_TIMER`` (:meth:`expire_timers`)."""
        self.vcpus.set_timer(dom.domid, args["vcpu"], self._timeout(args["timeout"]))
        return 0, []

    def _timeout(self, timeout: int) -> int:
        """``do_set_timer_op``: a timeout more than 2^50 ns (13 days) ahead is a guest's
        "never" (Linux asks for ~0 when idle): it becomes now + 2^32 ns, as in Xen."""
        now = self._clock_ns()
        if timeout and timeout - now > 1 << 50:
            return now + (1 << 32)
        return timeout

    def _vcpu_op(self, dom, ep, sub, a):
        if a["vcpuid"] >= dom.max_vcpus:
            raise XenError(Errno.ENOENT, f"no vCPU {a['vcpuid']}")
        v, now = a["vcpuid"], self._clock_ns()
        scheduled = dom.domid in self.vcpus.domains
        if sub == VcpuOp.is_up:
            if scheduled:
                return int(self.vcpus.get(dom.domid, v).online), []
            return int(v < dom.online_vcpus), []
        if not scheduled:
            raise XenError(Errno.ENOSYS, "Dom0's vCPUs are not scheduled here")
        if sub == VcpuOp.get_runstate_info:
            return self.vcpus.sched.runstate(dom.domid, v, now), []
        if sub in (VcpuOp.up, VcpuOp.down):
            return 0, self._switched(self.vcpus.set_online(dom.domid, v, sub == VcpuOp.up, now))
        if sub == VcpuOp.set_singleshot_timer:
            self.vcpus.set_timer(dom.domid, v, self._timeout(a["timeout_abs_ns"]))
            return 0, []
        if sub == VcpuOp.stop_singleshot_timer:
            self.vcpus.set_timer(dom.domid, v, None)
            return 0, []
        raise XenError(Errno.ENOSYS)

    def _scheduler_op(self, target: Domain, a: dict) -> tuple[Any, list[Effect]]:
        """``XEN_DOMCTL_scheduler_op``: weight and cap of one domain. Xen's refusals: another
        scheduler's id -EINVAL; out-of-range values -EINVAL. For putinfo, weight 0 and cap
        0xFFFF leave the value as it is (``sched_credit_domain_set``)."""
        sched = self.vcpus.sched
        if a["sched_id"] != sched.sched_id or target.domid not in self.vcpus.domains:
            raise XenError(Errno.EINVAL, f"the host runs {sched.name} (id {sched.sched_id})")
        if a["cmd"] == SchedCmd.getinfo:
            return sched.get_params(target.domid), []
        if a["cmd"] != SchedCmd.putinfo:
            raise XenError(Errno.EINVAL, f"scheduler cmd {a['cmd']}")
        weight = a["weight"] or None
        cap = None if a["cap"] == 0xFFFF else a["cap"]
        try:
            switches = sched.set_params(target.domid, self._clock_ns(), weight=weight, cap=cap)
        except ValueError as e:
            raise XenError(Errno.EINVAL, str(e)) from e
        return 0, self._switched(switches)

    def _getvcpuinfo(self, target: Domain, vcpu: int) -> dict[str, Any]:
        """``XEN_DOMCTL_getvcpuinfo``: what ``xl vcpu-list`` shows."""
        v = self.vcpus.get(target.domid, vcpu)
        rs = self.vcpus.sched.runstate(target.domid, vcpu, self._clock_ns())
        cpu = self.vcpus.sched.where(target.domid, vcpu)
        return {"vcpu": vcpu, "online": int(v.online), "blocked": int(v.blocked),
                "running": int(rs["state"] == 0), "cpu_time": rs["time"][0],
                "cpu": -1 if cpu is None else cpu}

    def _setvcpuaffinity(self, target: Domain, a: dict) -> tuple[Any, list[Effect]]:
        """``XEN_DOMCTL_setvcpuaffinity`` (hard affinity): a mask with no online pCPU
        -EINVAL; the effective mask comes back."""
        cpus = from_bitmap(a["cpumap_hard"], self.pcpus)
        try:
            switches = self.vcpus.set_affinity(target.domid, a["vcpu"], cpus, self._clock_ns())
        except ValueError as e:
            raise XenError(Errno.EINVAL, str(e)) from e
        return {"cpumap_hard": to_bitmap(cpus, self.pcpus)}, self._switched(switches)

    def _sysctl_scheduler_op(self, a: dict) -> dict[str, Any]:
        """``XEN_SYSCTL_scheduler_op``: the host's (pool 0's) timeslice and ratelimit. A
        putinfo sets every value the scheduler has, as given (ratelimit 0: off), so libxl
        reads them first. Another scheduler's id or pool, or a value out of range (credit's
        timeslice 0 among them): -EINVAL."""
        sched = self.vcpus.sched
        if a["sched_id"] != sched.sched_id or a["cpupool_id"] != 0:
            raise XenError(Errno.EINVAL, f"the host runs {sched.name} in pool 0")
        if a["cmd"] == SchedCmd.putinfo:
            kw = {k: a[k] for k in sched.get_global()}
            try:
                sched.set_global(self._clock_ns(), **kw)
            except ValueError as e:
                raise XenError(Errno.EINVAL, str(e)) from e
        elif a["cmd"] != SchedCmd.getinfo:
            raise XenError(Errno.EINVAL, f"scheduler cmd {a['cmd']}")
        return {"sched": sched.name, **sched.get_global()}
