"""The hypervisor of one emulated host, as a pure state machine.

It manages CPU and memory only (DESIGN.md): the domain table, memory, event channels,
grant tables, and the vCPUs the host's scheduler runs (their hypercalls in
:mod:`.scheduling`, a base of :class:`Hypervisor`; ``memory_op`` in :mod:`.memops`). Every
request arrives as a msgpack hypercall with the caller's credential;
:meth:`Hypervisor.hypercall` returns the encoded ``[rc, result]`` plus the effects the Ray
shell must carry out. State changes only through :meth:`hypercall`, :meth:`boot_dom0`,
:meth:`vcpu_exited` and the timer interrupt (``expire_timers``); never touch the attributes
from outside.

Upcall routing: a port's upcall goes to the endpoint (actor) that bound or allocated it,
as ``/dev/xen/evtchn`` is per process in a real Dom0; a DomU has one endpoint, fixed by the
toolstack when it sets the vCPU context. When an upcall is due the hypervisor performs the
guest's part of the 2-level protocol on the domain's behalf (clear ``evtchn_upcall_pending``,
the selector, then each pending port, 19.1) and ships the dequeued ports with the upcall, so
no two processes ever read-modify-write the same bitmap word.

Log-dirty mode and the page types a saver asks for are :mod:`.paging`'s, another base of
:class:`Hypervisor`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

import msgpack

from actors.hypervisor.domains import Domain, DomainTable, Dying
from actors.hypervisor import memops
from actors.hypervisor import sched as schedulers
from actors.hypervisor.effects import (ConsoleLine, Deliver, Effect, GateVcpus, ReleaseMemory,
                                       WatchVcpu)
from actors.hypervisor.grants import Frames, Grants
from actors.hypervisor.logdirty import DirtyLog, NoDirtyLog
from actors.hypervisor.paging import Paging
from actors.hypervisor.scheduling import Scheduling
from actors.hypervisor.vcpus import Vcpus
from protocols import evtchn as ev
from protocols.cpumap import to_bitmap
from protocols.errno import Errno, XenError
from protocols.gnttab import GNTST
from protocols.hypercall import (DOMID_SELF, ConsoleIO, CreateDomainFlag, Domctl, EvtchnOp,
                                 GnttabOp, Hypercall, SchedOp, ShutdownReason, Sysctl, Virq,
                                 XenVersion, decode_call, encode_result)
from protocols.migration.vcpu import VGCF_IN_KERNEL, VGCF_ONLINE, VcpuContext
from protocols.page import PAGE_SIZE
from protocols.shared_info import EVTCHN_2L_NR_CHANNELS

XEN_VERSION = (4, 22)
GTSC_KHZ = 1_000_000  # the guest's TSC counts nanoseconds: a 1 GHz clock


class Hypervisor(Scheduling, Paging):
    def __init__(self, host: str, *, memory_mib: int, pcpus: int, mem_prefix: str,
                 frames: Frames, sched: str = schedulers.DEFAULT,
                 sched_params: dict | None = None, dirtylog: DirtyLog | None = None,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.host = host
        self.pcpus = pcpus
        self.vcpus = Vcpus(schedulers.make(sched, pcpus, **(sched_params or {})))
        self.mem_prefix = mem_prefix
        self.table = DomainTable(host_pages=memory_mib * 1024 * 1024 // PAGE_SIZE)
        self.evtchn = ev.EventChannels(hardware_domid=0)
        self.grants = Grants(frames, self.memory_path, self.mark_dirty)
        self.dirtylog = dirtylog if dirtylog is not None else NoDirtyLog()
        self._clock_ns = clock_ns
        self._created_ns: dict[int, int] = {}
        self._logdirty: dict[int, set[int]] = {}  # domains in log-dirty mode: pfns marked
        self._foreign: dict[int, set[int]] = {}  # pfns Dom0 mapped with add_to_physmap_batch
        self.zombies: set[int] = set()
        self._gate_seq = 0
        self._domu_endpoint: dict[int, str] = {}
        self._port_endpoint: dict[int, dict[int, str]] = {}  # domid -> port -> endpoint
        # Dom0's grant handles and ports by the process that made them (Linux's gntdev and
        # evtchn devices: closed when that process dies; process_exited)
        self._caller_pid = 0
        self._map_owner = _Owners()
        self._port_owner = _Owners()
        self.vcpu_pids: dict[int, int] = {}
        self.stats = {"hypercalls": 0, "refused": 0, "errors": 0, "upcalls": 0}
        self._handlers: dict[Hypercall, Callable[[Domain, str, Any, dict], tuple[Any, list]]] = {
            Hypercall.xen_version: self._xen_version,
            Hypercall.console_io: self._console_io,
            Hypercall.sched_op: self._sched_op,
            Hypercall.set_timer_op: self._set_timer_op,
            Hypercall.event_channel_op: self._event_channel_op,
            Hypercall.memory_op: self._memory_op,
            Hypercall.grant_table_op: self._grant_table_op,
            Hypercall.vcpu_op: self._vcpu_op,
            Hypercall.domctl: self._domctl,
            Hypercall.sysctl: self._sysctl,
        }

    # -- entry points ------------------------------------------------------------------

    def boot_dom0(self, *, memory_mib: int, vcpus: int = 1) -> Domain:
        """Xen's boot: build the one privileged domain, unpaused, owning its memory."""
        dom0 = self.table.create(domid=0, privileged=True, max_vcpus=vcpus)
        self.table.set_max_pages(0, memory_mib * 256)
        self.table.populate(0, memory_mib * 256)
        dom0.pause_count = 0
        self._created_ns[0] = self._clock_ns()
        # dom0_cfg.max_evtchn_port = -1: every port the ABI has (a backend per domain)
        self.evtchn.add_domain(0, privileged=True, max_vcpus=vcpus,
                               max_port=EVTCHN_2L_NR_CHANNELS - 1)
        return dom0

    def hypercall(self, domid: int, secret: str, endpoint: str,
                  data: bytes, pid: int = 0) -> tuple[bytes, list[Effect]]:
        """Authenticate the caller, decode, dispatch; every error becomes Xen's rc. ``pid``:
        the calling process, when the shell knows it (a same-host pipe's client)."""
        self.stats["hypercalls"] += 1
        self._caller_pid = pid
        if type(domid) is not int or not isinstance(secret, str) or \
                not isinstance(endpoint, str):  # a forged credential of the wrong type
            self.stats["refused"] += 1
            return encode_result(-Errno.EPERM), []
        dom = self.table.domains.get(domid)
        if dom is None or dom.dying is not Dying.ALIVE or not hmac.compare_digest(
                dom.secret, secret):
            self.stats["refused"] += 1
            return encode_result(-Errno.EPERM), []
        if not dom.privileged:
            endpoint = self._domu_endpoint.get(domid, endpoint)
        try:
            req = decode_call(data)
            handler = self._handlers.get(req.op)
            if handler is None:
                raise XenError(Errno.ENOSYS, f"hypercall {req.op.name} is not emulated")
            result, effects = handler(dom, endpoint, req.subop, req.args)
        except XenError as e:
            self.stats["errors"] += 1
            return encode_result(e.rc), []
        rc, value = result if isinstance(result, tuple) else (0, result)
        return encode_result(rc, value), effects

    def authorize_hvpipe(self, domid: int, secret: str, endpoint: str, pid: int) -> int:
        """May this caller have a same-host pipe for ``endpoint``? 0, or -EPERM.

        Dom0's processes name their own endpoints; a DomU gets a pipe only for the endpoint
        and process the toolstack handed over, so it can never receive another's upcalls."""
        dom = self.table.domains.get(domid)
        if dom is None or dom.dying is not Dying.ALIVE or not isinstance(secret, str) or \
                not hmac.compare_digest(dom.secret, secret):
            return -Errno.EPERM
        if not dom.privileged and (self._domu_endpoint.get(domid) != endpoint
                                   or self.vcpu_pids.get(domid) != pid):
            return -Errno.EPERM
        return 0

    def vcpu_exited(self, domid: int) -> list[Effect]:
        """The process running a domain's vCPUs died: unless it was being destroyed, crash."""
        dom = self.table.domains.get(domid)
        if dom is None or dom.dying is not Dying.ALIVE:
            return []
        return self._shutdown(dom, ShutdownReason.crash)

    def statistics(self) -> dict[str, Any]:
        es = self.evtchn.statistics()
        return {
            **self.stats,
            "domains": len(self.table.domains),
            "host_pages": self.table.host_pages,
            "free_pages": self.table.host_free_pages,
            "pressure_pages": self.table.pressure_pages,
            "evtchn_sends": es.sends,
            "evtchn_upcalls": es.upcalls,
            "evtchn_coalesced": es.coalesced,
            # what per-domain operations cost, in entries looked at (issue 13: flat in N)
            "evtchn_ports_probed": es.ports_probed,
            "domids_probed": self.table.domids_probed,
            "scheduler": {"name": self.vcpus.sched.name, **self.vcpus.sched.statistics()},
        }

    def port_endpoint(self, domid: int, port: int) -> str | None:
        """The endpoint that bound ``port`` of ``domid`` (where its upcalls go)."""
        return self._port_endpoint.get(domid, {}).get(port)

    def memory_path(self, domid: int) -> str:
        return f"{self.mem_prefix}-d{domid}"

    # -- upcall routing ----------------------------------------------------------------

    def _route(self, upcall: ev.Upcall | None) -> list[Effect]:
        """What an event-channel op's upcall (if any) means: Deliver it to the endpoints
        that bound its ports, then wake the vCPU, and pollers of the ports it raised."""
        if upcall is None:
            return self._check_pollers()
        ports = self.evtchn.shared_info(upcall.domid).guest_take_pending(upcall.vcpu)
        by_endpoint: dict[str, list[int]] = {}
        endpoints = self._port_endpoint.get(upcall.domid, {})
        for port in ports:
            ep = endpoints.get(port)
            if ep is not None:
                by_endpoint.setdefault(ep, []).append(port)
        self.stats["upcalls"] += len(by_endpoint)
        effects: list[Effect] = [Deliver(ep, upcall.domid, tuple(p), upcall.vcpu)
                                 for ep, p in by_endpoint.items()]
        if by_endpoint and upcall.domid in self.vcpus.domains:  # after it: the upcall first
            effects += self._switched(self.vcpus.delivered(upcall.domid, upcall.vcpu,
                                                           self._clock_ns()))
        return effects + self._check_pollers()

    def _own_port(self, domid: int, port: int, endpoint: str) -> None:
        self._port_endpoint.setdefault(domid, {})[port] = endpoint
        if domid == 0:
            self._port_owner.own(port, self._caller_pid)

    def _forget_port(self, domid: int, port: int) -> str | None:
        """The port is closed: its upcalls go nowhere now (its endpoint, if it had one)."""
        return self._port_endpoint.get(domid, {}).pop(port, None)

    def process_exited(self, pid: int) -> list[Effect]:
        """A Dom0 process died: what Linux does when it closes its gntdev and evtchn devices
        (``gntdev_release``, ``evtchn_release``): every grant it still maps is unmapped and
        every port it still has bound is closed, so a killed backend leaves no map that
        keeps a destroyed domain a zombie, and no port bound to nobody."""
        handles = self._map_owner.take(pid)
        ports = self._port_owner.take(pid)
        if handles:
            self.grants.op(0, True, GnttabOp.unmap_grant_ref, [
                {"host_addr": 0, "dev_bus_addr": 0, "handle": h} for h in handles])
        for port in ports:
            if self._forget_port(0, port) is not None:
                try:
                    self.evtchn.close(0, port)
                except XenError:
                    pass  # closed meanwhile by a hypercall that did not name its process
        return self._reap_zombies()

    # -- hypercall families ------------------------------------------------------------

    def _xen_version(self, dom, ep, sub, args):
        major, minor = XEN_VERSION
        answers = {
            XenVersion.version: major << 16 | minor,
            XenVersion.extraversion: "-xenray",
            XenVersion.capabilities: "xen-3.0-x86_64 hvm-3.0-x86_64",
            XenVersion.pagesize: PAGE_SIZE,
            XenVersion.get_features: 0,
            XenVersion.changeset: "xenray",
            XenVersion.compile_info: {"compiler": "python", "compile_by": "xenray"},
        }
        if sub not in answers:
            raise XenError(Errno.ENOSYS)
        return answers[sub], []

    def _console_io(self, dom, ep, sub, args):
        if sub == ConsoleIO.write:
            return 0, [ConsoleLine(dom.domid, args["buf"].decode("utf-8", "replace"))]
        raise XenError(Errno.ENOSYS, "CONSOLEIO_read has no input here")

    def _sched_op(self, dom, ep, sub, args):
        if sub == SchedOp.shutdown:
            return 0, self._shutdown(dom, _reason(args["reason"]))
        if sub == SchedOp.remote_shutdown:
            _privileged(dom)
            target = self.table.get(args["domain_id"])
            return 0, self._shutdown(target, _reason(args["reason"]))
        return self._vcpu_sched_op(dom, sub, args)

    def _shutdown(self, dom: Domain, reason: int) -> list[Effect]:
        """``domain_shutdown``: latch the first code, stop the vCPUs, tell Dom0 (DOM_EXC)."""
        if not self.table.shutdown(dom.domid, reason):
            return []
        effects: list[Effect] = self._set_running(dom)
        if dom.domid in self._domu_endpoint:
            effects.append(self._gate_effect(self._domu_endpoint[dom.domid], True))
        return effects + self._route(self.evtchn.send_global_virq(Virq.DOM_EXC))

    def _event_channel_op(self, dom, ep, sub, a):
        d, evc = dom.domid, self.evtchn
        if sub == EvtchnOp.alloc_unbound:
            owner = d if a["dom"] == DOMID_SELF else a["dom"]
            port = evc.alloc_unbound(d, a["dom"], a["remote_dom"])
            self._own_port(owner, port, ep if owner == d else self._domu_endpoint.get(owner, ep))
            return {"port": port}, []
        if sub == EvtchnOp.bind_interdomain:
            port, upcall = evc.bind_interdomain(d, a["remote_dom"], a["remote_port"])
            self._own_port(d, port, ep)
            return {"local_port": port}, self._route(upcall)
        if sub == EvtchnOp.bind_virq:
            port = evc.bind_virq(d, a["virq"], a["vcpu"])
            self._own_port(d, port, ep)
            return {"port": port}, []
        if sub == EvtchnOp.bind_ipi:
            port = evc.bind_ipi(d, a["vcpu"])
            self._own_port(d, port, ep)
            return {"port": port}, []
        if sub == EvtchnOp.send:
            return 0, self._route(evc.send(d, a["port"]))
        if sub == EvtchnOp.close:
            evc.close(d, a["port"])
            self._forget_port(d, a["port"])
            if d == 0:
                self._port_owner.drop(a["port"])
            return 0, []
        if sub == EvtchnOp.unmask:
            return 0, self._route(evc.unmask(d, a["port"]))
        if sub == EvtchnOp.status:
            s = evc.status(d, a["dom"], a["port"])
            return {"status": int(s.status), "vcpu": s.vcpu, "unbound_dom": s.unbound_dom,
                    "interdomain_dom": s.interdomain_dom,
                    "interdomain_port": s.interdomain_port, "virq": s.virq}, []
        if sub == EvtchnOp.bind_vcpu:
            evc.bind_vcpu(d, a["port"], a["vcpu"])
            return 0, []
        if sub == EvtchnOp.reset:
            target = d if a["dom"] == DOMID_SELF else a["dom"]
            evc.reset(d, a["dom"])
            self._port_endpoint.pop(target, None)
            return 0, []
        raise XenError(Errno.ENOSYS)

    def _memory_op(self, dom, ep, sub, a):
        """Reservations over each domain's p2m, memory maps, foreign maps (:mod:`.memops`)."""
        return memops.memory_op(self.table, self.grants, self._foreign, self.memory_path,
                                self.mark_extents_dirty, dom, sub, a)

    def _grant_table_op(self, dom, ep, sub, a):
        results = self.grants.op(dom.domid, dom.privileged, sub, a["ops"])
        if dom.domid == 0 and sub == GnttabOp.map_grant_ref:
            for r in results:
                if r["status"] == GNTST.okay:
                    self._map_owner.own(r["handle"], self._caller_pid)
        elif dom.domid == 0 and sub == GnttabOp.unmap_grant_ref:
            for e, r in zip(a["ops"], results):
                if r["status"] == GNTST.okay:
                    self._map_owner.drop(e["handle"])
        return (0, results), self._reap_zombies()

    def _target(self, dom: Domain, domid: int) -> Domain:
        """``DOMID_SELF`` or the caller itself; another domain only for a privileged caller."""
        if domid in (DOMID_SELF, dom.domid):
            return dom
        _privileged(dom)
        return self.table.get(domid)

    # -- privileged: domctl and sysctl -------------------------------------------------

    def _domctl(self, dom, ep, sub, a):
        _privileged(dom)
        if sub == Domctl.createdomain:
            flags = CreateDomainFlag(a["flags"])
            new = self.table.create(domid=a["domain"], hvm=bool(flags & CreateDomainFlag.hvm),
                                    max_vcpus=a["max_vcpus"] or 1, handle=a["handle"])
            max_port = a["max_evtchn_port"] or ev.MAX_EVENT_CHANNELS_DEFAULT
            self.evtchn.add_domain(new.domid, max_port=max_port, max_vcpus=new.max_vcpus)
            self._created_ns[new.domid] = self._clock_ns()
            # vCPU 0 only: the others are down until the guest brings them up (VCPUOP_up)
            self.vcpus.add_domain(new.domid, new.max_vcpus, 1, self._clock_ns())
            return {"domain": new.domid, "secret": new.secret}, []
        target = self.table.get(a["domain"])
        d = target.domid
        if sub == Domctl.getdomaininfo:
            return self._dominfo(target), []
        if sub == Domctl.pausedomain:
            self.table.pause(d, caller=dom.domid)
            return 0, self._gate(target)
        if sub == Domctl.unpausedomain:
            self.table.unpause(d, caller=dom.domid)
            return 0, self._gate(target)
        if sub == Domctl.max_mem:
            self.table.set_max_pages(d, a["max_memkb"] >> 2)
            return 0, []
        if sub == Domctl.setvcpucontext:
            return 0, self._set_vcpu_context(target, a["ctxt"])
        if sub == Domctl.resumedomain:
            self.table.resume(d)
            return 0, self._gate(target)
        if sub == Domctl.destroydomain:
            return 0, self._destroy(target)
        if sub == Domctl.shadow_op:
            return self._shadow_op(dom, target, a), []
        if sub == Domctl.getvcpucontext:
            return self._get_vcpu_context(dom, target, a["vcpu"]), []
        if sub == Domctl.scheduler_op:
            return self._scheduler_op(target, a)
        if sub == Domctl.getvcpuinfo:
            return self._getvcpuinfo(target, a["vcpu"]), []
        if sub == Domctl.setvcpuaffinity:
            return self._setvcpuaffinity(target, a)
        if sub == Domctl.getvcpuaffinity:
            self.vcpus.get(d, a["vcpu"])
            return {"cpumap_hard": to_bitmap(self.vcpus.get(d, a["vcpu"]).affinity, self.pcpus),
                    "cpumap_soft": to_bitmap(None, self.pcpus)}, []
        if sub == Domctl.gettscinfo:
            if target is dom:
                raise XenError(Errno.EINVAL, "gettscinfo on itself")
            now = self._clock_ns()
            return {"tsc_mode": 0, "gtsc_khz": GTSC_KHZ, "incarnation": 0,
                    "elapsed_nsec": max(0, now - self._created_ns.get(d, now))}, []
        if sub == Domctl.getpageframeinfo3:
            return self._getpageframeinfo3(target, a["num"], a["array"]), []
        raise XenError(Errno.ENOSYS)

    def _get_vcpu_context(self, dom: Domain, target: Domain, vcpu: int) -> dict[str, bytes]:
        """``XEN_DOMCTL_getvcpucontext``: vCPU ``vcpu``'s ``vcpu_guest_context`` (x86_64).

        A vCPU here is a process with no register file the hypervisor could read; what the
        migration stream needs of it is that it is online and in the guest kernel, with
        ``rax`` (the suspend hypercall's return value) 0. Xen pauses the vCPU itself; this
        answers only for a domain that is paused or shut down (else -EBUSY), as the saver asks
        after the guest suspended. Xen's refusals: vCPU beyond max or the caller itself
        -EINVAL, a vCPU never initialised (no process handed over) -ENODATA."""
        if vcpu >= target.max_vcpus or target is dom:
            raise XenError(Errno.EINVAL, f"no vCPU {vcpu} to read")
        if not (target.paused or target.is_shutdown):
            raise XenError(Errno.EBUSY, f"domain {target.domid} is running")
        if target.domid not in self.vcpu_pids:
            raise XenError(Errno.ENODATA, f"vCPU {vcpu} was never initialised")
        online = (self.vcpus.get(target.domid, vcpu).online if target.domid in
                  self.vcpus.domains else vcpu < target.online_vcpus)
        flags = VGCF_IN_KERNEL | (VGCF_ONLINE if online else 0)
        return {"ctxt": VcpuContext(flags=flags, rax=0).pack()}

    def _set_vcpu_context(self, target: Domain, ctxt: bytes) -> list[Effect]:
        """The toolstack hands over the process that runs the vCPUs, and its endpoint."""
        try:
            ctx = msgpack.unpackb(ctxt, raw=False)
            pid, endpoint = int(ctx["pid"]), str(ctx["endpoint"])
        except Exception as e:  # hostile bytes from Dom0 still only get -EINVAL
            raise XenError(Errno.EINVAL, "vCPU context needs pid and endpoint") from e
        self._domu_endpoint[target.domid] = endpoint
        endpoints = self._port_endpoint.get(target.domid, {})
        for port in endpoints:
            endpoints[port] = endpoint
        self.vcpu_pids[target.domid] = pid
        self.dirtylog.claim(target.domid, pid)
        return [WatchVcpu(target.domid, pid, endpoint), *self._set_running(target)]

    def _gate(self, target: Domain) -> list[Effect]:
        ep = self._domu_endpoint.get(target.domid)
        if ep is None:
            return []
        return [self._gate_effect(ep, target.paused or target.is_shutdown),
                *self._set_running(target)]

    def _gate_effect(self, endpoint: str, paused: bool) -> GateVcpus:
        self._gate_seq += 1
        return GateVcpus(endpoint, paused, self._gate_seq)

    def _destroy(self, target: Domain) -> list[Effect]:
        """``domain_kill``: close its event channels (peers go UNBOUND), free memory, DOM_EXC."""
        d = target.domid
        self.table.kill(d)
        effects: list[Effect] = self._switched(self.vcpus.remove_domain(d, self._clock_ns()))
        self.evtchn.remove_domain(d)
        self._port_endpoint.pop(d, None)
        self._domu_endpoint.pop(d, None)
        self.vcpu_pids.pop(d, None)
        self._logdirty.pop(d, None)
        self._foreign.pop(d, None)
        self._created_ns.pop(d, None)
        self.dirtylog.forget(d)
        self.grants.release(d)
        zombie = self.grants.in_use(d)  # its pages are still mapped by others
        self.table.reap(d, zombie=zombie)
        if zombie:
            self.zombies.add(d)
        else:
            self.grants.forget(d)
            effects.append(ReleaseMemory(self.memory_path(d)))
        return effects + self._reap_zombies() + self._route(
            self.evtchn.send_global_virq(Virq.DOM_EXC))

    def _reap_zombies(self) -> list[Effect]:
        """A zombie whose last mapped page was unmapped finally goes away. Only the granters
        some mapping of which was just released are looked at, not every zombie."""
        done = sorted(d for d in self.grants.unmapped_granters()
                      if d in self.zombies and not self.grants.in_use(d))
        for d in done:
            self.zombies.discard(d)
            self.grants.forget(d)
            del self.table.domains[d]
        return [ReleaseMemory(self.memory_path(d)) for d in done]

    def _dominfo(self, target: Domain) -> dict[str, Any]:
        now = self._clock_ns()
        return {
            "domain": target.domid,
            "flags": target.info_flags(self.vcpus.flags(target.domid, now)),
            "tot_pages": target.tot_pages,
            "max_pages": target.max_pages,
            "cpu_time": self.vcpus.cpu_time(target.domid, now),
            "nr_online_vcpus": (target.online_vcpus if (n := self.vcpus.online(target.domid))
                                is None else n),
            "max_vcpu_id": target.max_vcpus - 1,
            "handle": target.handle,
            "ssidref": 0,
            "cpupool": 0,
        }

    def _sysctl(self, dom, ep, sub, a):
        _privileged(dom)
        if sub == Sysctl.getdomaininfolist:
            doms = sorted(d for d in self.table.domains if d >= a["first_domain"])
            return [self._dominfo(self.table.domains[d]) for d in doms[:a["max_domains"]]], []
        if sub == Sysctl.physinfo:
            return {"nr_cpus": self.pcpus, "total_pages": self.table.host_pages,
                    "free_pages": self.table.host_free_pages, "host": self.host}, []
        if sub == Sysctl.sched_id:
            return {"sched_id": self.vcpus.sched.sched_id}, []
        if sub == Sysctl.scheduler_op:
            return self._sysctl_scheduler_op(a), []
        raise XenError(Errno.ENOSYS)

def _privileged(dom: Domain) -> None:
    if not dom.privileged:
        raise XenError(Errno.EPERM, "privileged operation")


def _reason(value: int) -> int:
    try:
        return ShutdownReason(value)
    except ValueError as e:
        raise XenError(Errno.EINVAL, f"shutdown reason {value}") from e


class _Owners:
    """Dom0's grant handles (or ports) by the process that made them, and each process's,
    so that a process's exit costs what it owned, not what all of Dom0's processes own."""

    def __init__(self) -> None:
        self._pid: dict[int, int] = {}
        self._keys: dict[int, set[int]] = {}

    def own(self, key: int, pid: int) -> None:
        """``key`` is ``pid``'s now (pid 0: a caller that named no process: nobody's)."""
        self.drop(key)
        if pid:
            self._pid[key] = pid
            self._keys.setdefault(pid, set()).add(key)

    def drop(self, key: int) -> None:
        pid = self._pid.pop(key, None)
        if pid is not None:
            keys = self._keys[pid]
            keys.discard(key)
            if not keys:
                del self._keys[pid]

    def take(self, pid: int) -> list[int]:
        """Everything ``pid`` owned, sorted, forgotten."""
        keys = sorted(self._keys.pop(pid, ()))
        for key in keys:
            del self._pid[key]
        return keys
