"""Xen's event channels, 2-level ABI, for all domains of one host (``xen/common/event_channel.c``,
``xen/include/public/event_channel.h``; reference sections 3, 4, 5 and 19.1).

Why: an event channel is the only interrupt a Xen guest has. A port is a slot in one domain's
table; a send sets one pending bit in the receiver's shared-info page, and the receiver gets an
upcall only when that bit goes 0 -> 1 on an unmasked port, so repeated sends coalesce. The
hypervisor actor of each host holds one :class:`EventChannels`; every operation that can raise an
interrupt returns the :class:`Upcall` the actor must deliver (wake that domain's actor), or None.

Decisions where the reference is silent (checked against ``event_channel.c``):

* Ports are valid up to the end of the last allocated bucket of ``EVTCHNS_PER_BUCKET`` ports
  (``port_is_valid``); unmask or status on a valid free port works, beyond it gives -EINVAL.
* ``alloc_unbound`` stores ``remote_dom`` without looking it up, as Xen does: it may name a
  domain that does not exist yet; ``bind_interdomain`` checks it.
* Global VIRQs can be bound only by their handler: the domain set by
  ``set_global_virq_handler``, else the hardware domain (``hardware_domid``, 0); anyone else
  gets -EBUSY, and the handler cannot change while its binding exists (-EBUSY), as in
  current Xen (``get_global_virq_handler``, ``set_global_virq_handler``).
* An upcall is reported whenever Xen would kick the vCPU (``evtchn_upcall_pending`` 0 -> 1),
  whatever ``evtchn_upcall_mask`` says: the guest honours its mask when it takes the upcall.
* ``remove_domain`` (``evtchn_destroy``) notifies nobody: peers' ports just become UNBOUND.
  Raising ``VIRQ_DOM_EXC`` is the hypervisor's separate ``send_global_virq``.
* Xen also refuses ``EVTCHNOP_reset`` of another domain that is not paused (-EINVAL); pause
  counts belong to the hypervisor actor, which checks that before calling :meth:`reset`.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass

from protocols.errno import Errno, XenError
from protocols.hypercall import DOMID_FIRST_RESERVED, DOMID_SELF, NR_VIRQS, Virq
from protocols.shared_info import (EVTCHN_2L_NR_CHANNELS, SHARED_INFO_SIZE, XEN_LEGACY_MAX_VCPUS,
                                   SetPending, SharedInfo)

EVTCHNS_PER_BUCKET = 64  # PAGE_SIZE / sizeof(struct evtchn), rounded: the emulator's choice
MAX_EVENT_CHANNELS_DEFAULT = 1023  # xl.cfg max_event_channels


class ECS(enum.IntEnum):
    """Per-port states (``xen/include/xen/sched.h`` ``ECS_*``)."""

    FREE = 0
    RESERVED = 1
    UNBOUND = 2
    INTERDOMAIN = 3
    PIRQ = 4
    VIRQ = 5
    IPI = 6


class EvtchnStat(enum.IntEnum):
    """``EVTCHNSTAT_*`` returned by ``EVTCHNOP_status`` (``event_channel.h``)."""

    closed = 0
    unbound = 1
    interdomain = 2
    pirq = 3
    virq = 4
    ipi = 5


class VirqType(enum.Enum):
    """Xen's ``enum virq_type``: V per-vCPU, D per-domain, G global (reference section 3)."""

    VCPU = "V"
    DOMAIN = "D"
    GLOBAL = "G"


_PER_VCPU = frozenset({Virq.TIMER, Virq.DEBUG, Virq.XENOPROF, Virq.XENPMU})


def get_virq_type(virq: int) -> VirqType:
    """``get_virq_type``: unnamed numbers and x86's ARCH VIRQs are global, as in Xen."""
    if virq in _PER_VCPU:
        return VirqType.VCPU
    return VirqType.DOMAIN if virq == Virq.ARGO else VirqType.GLOBAL


@dataclass(frozen=True, slots=True)
class Upcall:
    """An interrupt to deliver: ``vcpu`` of ``domid`` must be kicked, because of ``port``."""

    domid: int
    vcpu: int
    port: int


@dataclass(frozen=True, slots=True)
class EvtchnStatus:
    """OUT part of ``struct evtchn_status`` (``event_channel.h``), union ``u`` flattened."""

    status: EvtchnStat
    vcpu: int
    unbound_dom: int = 0  # u.unbound.dom
    interdomain_dom: int = 0  # u.interdomain.dom
    interdomain_port: int = 0  # u.interdomain.port
    pirq: int = 0  # u.pirq
    virq: int = 0  # u.virq


@dataclass(frozen=True, slots=True)
class EvtchnStatistics:
    """Counters since creation. ``sends`` counts successful ``EVTCHNOP_send`` calls and
    ``dropped`` those on an UNBOUND port; ``upcalls`` and ``coalesced`` count every
    ``evtchn_2l_set_pending`` or unmask that kicked a vCPU / found the port already pending.
    ``ports_probed`` counts the candidates ``get_free_port`` looked at: what allocating has
    cost."""

    ports_in_use: dict[int, int]
    sends: int
    upcalls: int
    coalesced: int
    dropped: int
    ports_probed: int


class _Evtchn:
    """``struct evtchn``: ``remote_dom`` is ``u.unbound.remote_domid`` or ``u.interdomain``'s."""

    __slots__ = ("state", "notify_vcpu_id", "remote_dom", "remote_port", "virq", "pirq")

    def __init__(self) -> None:
        self.free()

    def free(self) -> None:
        self.state = ECS.FREE
        self.notify_vcpu_id = self.remote_dom = self.remote_port = self.virq = self.pirq = 0


class _Domain:
    __slots__ = ("domid", "max_port", "max_vcpus", "privileged", "shared_info", "chns",
                 "virq_to_evtchn", "free", "queued")

    def __init__(self, domid: int, max_port: int, max_vcpus: int, privileged: bool,
                 shared_info: SharedInfo) -> None:
        self.domid, self.max_port, self.max_vcpus = domid, max_port, max_vcpus
        self.privileged, self.shared_info = privileged, shared_info
        self.chns: list[_Evtchn] = []
        self.virq_to_evtchn = [[0] * NR_VIRQS for _ in range(max_vcpus)]
        # every FREE port (and maybe some taken since), lowest first: get_free_port's
        # candidates, so that it need not walk the ports in use (Dom0 has some per domain)
        self.free: list[int] = []  # a heap
        self.queued: set[int] = set()  # what is in it

    def queue_free(self, port: int) -> None:
        if port not in self.queued:
            self.queued.add(port)
            heapq.heappush(self.free, port)


def _in_use(chn: _Evtchn) -> bool:
    return chn.state > ECS.RESERVED


class EventChannels:
    """The event channels of every domain of one host; ``caller`` is always the calling domid.

    Not thread-safe: the hypervisor actor serialises all calls (see ``protocols.shared_info``).
    """

    def __init__(self, *, hardware_domid: int = 0) -> None:
        self._domains: dict[int, _Domain] = {}
        self._hardware_domid = hardware_domid
        self._global_virq_handlers: dict[int, int] = {}
        self._sends = self._upcalls = self._coalesced = self._dropped = 0
        self.ports_probed = 0  # candidates get_free_port looked at: its cost
        self._raised: list[tuple[int, int]] = []  # (domid, port) newly pending, for pollers

    # -- domains ------------------------------------------------------------------------------

    def add_domain(self, domid: int, *, max_port: int = MAX_EVENT_CHANNELS_DEFAULT,
                   max_vcpus: int = 1, privileged: bool = False,
                   shared_info_buf: bytearray | memoryview | None = None) -> SharedInfo:
        """``evtchn_init``: port 0 becomes RESERVED. ``max_port`` is ``max_evtchn_port``,
        capped by the 2-level ABI at 4095; pending and mask bits live in ``shared_info_buf``
        (a private zeroed page if None)."""
        if not 0 <= domid < DOMID_FIRST_RESERVED:
            raise XenError(Errno.EINVAL, f"domid {domid} is reserved")
        if domid in self._domains:
            raise XenError(Errno.EEXIST, f"domain {domid} already has event channels")
        if max_port < 0 or not 1 <= max_vcpus <= XEN_LEGACY_MAX_VCPUS:
            raise XenError(Errno.EINVAL, "max_port must be >= 0 and max_vcpus 1..32")
        page = SharedInfo(bytearray(SHARED_INFO_SIZE) if shared_info_buf is None
                          else shared_info_buf)
        d = _Domain(domid, min(max_port, EVTCHN_2L_NR_CHANNELS - 1), max_vcpus, privileged, page)
        self._get_free_port(d)
        d.chns[0].state = ECS.RESERVED
        self._domains[domid] = d
        return page

    def remove_domain(self, domid: int) -> None:
        """``evtchn_destroy``: close every port (peers become UNBOUND naming the dead domain)
        and forget the domain's global VIRQ handler roles."""
        d = self._dom(domid)
        for port in range(len(d.chns) - 1, 0, -1):
            if _in_use(d.chns[port]):
                self._close(d, port)
        del self._domains[domid]
        for virq in [v for v, h in self._global_virq_handlers.items() if h == domid]:
            del self._global_virq_handlers[virq]

    def shared_info(self, domid: int) -> SharedInfo:
        return self._dom(domid).shared_info

    # -- EVTCHNOP_* ---------------------------------------------------------------------------

    def alloc_unbound(self, caller: int, dom: int, remote_dom: int) -> int:
        """``EVTCHNOP_alloc_unbound``: a port of ``dom`` that ``remote_dom`` may bind."""
        if not 0 <= remote_dom <= 0xFFFF:
            raise XenError(Errno.EINVAL, f"remote_dom {remote_dom} is not a domid_t")
        c = self._dom(caller)
        d = self._dom(caller if dom == DOMID_SELF else dom)
        port = self._get_free_port(d)
        self._check_target(c, d)
        chn = d.chns[port]
        chn.state = ECS.UNBOUND
        chn.remote_dom = caller if remote_dom == DOMID_SELF else remote_dom
        return port

    def bind_interdomain(self, caller: int, remote_dom: int,
                         remote_port: int) -> tuple[int, Upcall | None]:
        """``EVTCHNOP_bind_interdomain``: returns the local port and, because Xen always marks
        the new local port pending (the peer may already have signalled), maybe an upcall."""
        ld = self._dom(caller)
        rd = self._dom(caller if remote_dom == DOMID_SELF else remote_dom)
        lport = self._get_free_port(ld)
        rchn = self._chn(rd, remote_port)
        if rchn.state is not ECS.UNBOUND or rchn.remote_dom != caller:
            raise XenError(Errno.EINVAL, f"port {remote_port} of domain {rd.domid} is not "
                                         f"unbound for domain {caller}")
        lchn = ld.chns[lport]
        lchn.state, lchn.remote_dom, lchn.remote_port = ECS.INTERDOMAIN, rd.domid, remote_port
        rchn.state, rchn.remote_port = ECS.INTERDOMAIN, lport
        return lport, self._set_pending(ld, lchn.notify_vcpu_id, lport)

    def bind_virq(self, caller: int, virq: int, vcpu: int) -> int:
        """``EVTCHNOP_bind_virq``: per-vCPU VIRQs once per vCPU, others on vCPU 0 only."""
        d = self._dom(caller)
        if not 0 <= virq < NR_VIRQS:
            raise XenError(Errno.EINVAL, f"virq {virq} >= NR_VIRQS")
        kind = get_virq_type(virq)
        if kind is not VirqType.VCPU and vcpu != 0:
            raise XenError(Errno.EINVAL, f"virq {virq} is not per-vCPU: bind it on vCPU 0")
        self._check_vcpu(d, vcpu)
        if kind is VirqType.GLOBAL and self._global_virq_handler(virq) != caller:
            raise XenError(Errno.EBUSY, f"domain {caller} is not the handler of virq {virq}")
        if d.virq_to_evtchn[vcpu][virq]:
            raise XenError(Errno.EEXIST, f"virq {virq} already bound on vCPU {vcpu}")
        port = self._get_free_port(d)
        chn = d.chns[port]
        chn.state, chn.notify_vcpu_id, chn.virq = ECS.VIRQ, vcpu, virq
        d.virq_to_evtchn[vcpu][virq] = port
        return port

    def bind_ipi(self, caller: int, vcpu: int) -> int:
        """``EVTCHNOP_bind_ipi``: a port that notifies ``vcpu`` of the caller itself."""
        d = self._dom(caller)
        self._check_vcpu(d, vcpu)
        port = self._get_free_port(d)
        chn = d.chns[port]
        chn.state, chn.notify_vcpu_id = ECS.IPI, vcpu
        return port

    def send(self, caller: int, port: int) -> Upcall | None:
        """``EVTCHNOP_send`` (``evtchn_send``)."""
        ld = self._dom(caller)
        lchn = self._chn(ld, port)
        state = lchn.state
        if state is ECS.INTERDOMAIN:
            self._sends += 1
            rd = self._domains[lchn.remote_dom]
            rport = lchn.remote_port
            return self._set_pending(rd, rd.chns[rport].notify_vcpu_id, rport)
        if state is ECS.IPI:
            self._sends += 1
            return self._set_pending(ld, lchn.notify_vcpu_id, port)
        if state is ECS.UNBOUND:  # silently dropped, returns 0
            self._sends += 1
            self._dropped += 1
            return None
        raise XenError(Errno.EINVAL, f"cannot send on a {state.name} port ({port})")

    def close(self, caller: int, port: int) -> None:
        """``EVTCHNOP_close``: an INTERDOMAIN peer goes back to UNBOUND, naming the closer."""
        self._close(self._dom(caller), port)

    def status(self, caller: int, dom: int, port: int) -> EvtchnStatus:
        """``EVTCHNOP_status`` of a port of ``dom`` (only the caller's own unless privileged)."""
        d = self._dom(caller if dom == DOMID_SELF else dom)
        chn = self._chn(d, port)
        self._check_target(self._dom(caller), d)
        state, vcpu = chn.state, chn.notify_vcpu_id
        if state is ECS.UNBOUND:
            return EvtchnStatus(EvtchnStat.unbound, vcpu, unbound_dom=chn.remote_dom)
        if state is ECS.INTERDOMAIN:
            return EvtchnStatus(EvtchnStat.interdomain, vcpu, interdomain_dom=chn.remote_dom,
                                interdomain_port=chn.remote_port)
        if state is ECS.PIRQ:
            return EvtchnStatus(EvtchnStat.pirq, vcpu, pirq=chn.pirq)
        if state is ECS.VIRQ:
            return EvtchnStatus(EvtchnStat.virq, vcpu, virq=chn.virq)
        if state is ECS.IPI:
            return EvtchnStatus(EvtchnStat.ipi, vcpu)
        return EvtchnStatus(EvtchnStat.closed, vcpu)

    def unmask(self, caller: int, port: int) -> Upcall | None:
        """``EVTCHNOP_unmask``: clear the mask bit; re-raise the port if it is pending."""
        d = self._dom(caller)
        vcpu = self._chn(d, port).notify_vcpu_id
        if d.shared_info.evtchn_2l_unmask(vcpu, port):
            self._upcalls += 1
            return Upcall(caller, vcpu, port)
        return None

    def bind_vcpu(self, caller: int, port: int, vcpu: int) -> None:
        """``EVTCHNOP_bind_vcpu``: move notifications of UNBOUND, INTERDOMAIN, PIRQ and
        non-per-vCPU VIRQ ports; IPI and per-vCPU VIRQ ports cannot move (-EINVAL)."""
        d = self._dom(caller)
        self._check_vcpu(d, vcpu)
        chn = self._chn(d, port)
        movable = (chn.state in (ECS.UNBOUND, ECS.INTERDOMAIN, ECS.PIRQ)
                   or chn.state is ECS.VIRQ and get_virq_type(chn.virq) is not VirqType.VCPU)
        if not movable:
            raise XenError(Errno.EINVAL, f"a {chn.state.name} port cannot change vCPU")
        chn.notify_vcpu_id = vcpu

    def reset(self, caller: int, dom: int) -> None:
        """``EVTCHNOP_reset``: close every port of ``dom`` (only the caller's own unless
        privileged)."""
        d = self._dom(caller if dom == DOMID_SELF else dom)
        self._check_target(self._dom(caller), d)
        for port, chn in enumerate(d.chns):
            if _in_use(chn):
                self._close(d, port)

    # -- hypervisor side ----------------------------------------------------------------------

    def send_virq(self, domid: int, virq: int, vcpu: int = 0) -> Upcall | None:
        """``send_guest_vcpu_virq`` / ``send_guest_domain_virq``: dropped if not bound."""
        d = self._dom(domid)
        if not 0 <= virq < NR_VIRQS:
            raise XenError(Errno.EINVAL, f"virq {virq} >= NR_VIRQS")
        per_vcpu = get_virq_type(virq) is VirqType.VCPU
        if not per_vcpu and vcpu != 0:
            raise XenError(Errno.EINVAL, f"virq {virq} is bound on vCPU 0")
        self._check_vcpu(d, vcpu)
        port = d.virq_to_evtchn[vcpu][virq]
        if not port:
            return None
        return self._set_pending(d, vcpu if per_vcpu else d.chns[port].notify_vcpu_id, port)

    def send_global_virq(self, virq: int) -> Upcall | None:
        """``send_global_virq`` (e.g. ``VIRQ_DOM_EXC``) to the handler, if it bound it."""
        if not 0 <= virq < NR_VIRQS or get_virq_type(virq) is not VirqType.GLOBAL:
            raise XenError(Errno.EINVAL, f"virq {virq} is not global")
        handler = self._global_virq_handler(virq)
        return self.send_virq(handler, virq) if handler in self._domains else None

    def set_global_virq_handler(self, domid: int, virq: int) -> None:
        """``XEN_DOMCTL_set_virq_handler``: -EBUSY while the current handler has it bound."""
        self._dom(domid)
        self._check_handler_change(domid, virq)
        self._global_virq_handlers[virq] = domid

    def _check_handler_change(self, domid: int, virq: int) -> None:
        if not 0 <= virq < NR_VIRQS or get_virq_type(virq) is not VirqType.GLOBAL:
            raise XenError(Errno.EINVAL, f"virq {virq} is not global")
        current = self._domains.get(self._global_virq_handler(virq))
        if current is not None and current.domid != domid and current.virq_to_evtchn[0][virq]:
            raise XenError(Errno.EBUSY, f"domain {current.domid} has virq {virq} bound")

    def _global_virq_handler(self, virq: int) -> int:
        return self._global_virq_handlers.get(virq, self._hardware_domid)

    # -- guest side (the guest's own shared-info page) ----------------------------------------

    def mask(self, domid: int, port: int) -> None:
        self._dom(domid).shared_info.mask(port)

    def pending_ports(self, domid: int) -> list[int]:
        return self._dom(domid).shared_info.pending_ports()

    def clear_pending(self, domid: int, port: int) -> None:
        self._dom(domid).shared_info.clear_pending(port)

    # -- statistics, save, restore ------------------------------------------------------------

    def statistics(self) -> EvtchnStatistics:
        return EvtchnStatistics(
            ports_in_use={domid: sum(map(_in_use, d.chns)) for domid, d in self._domains.items()},
            sends=self._sends, upcalls=self._upcalls, coalesced=self._coalesced,
            dropped=self._dropped, ports_probed=self.ports_probed)

    def save(self, domid: int) -> dict:
        """One domain's port table as plain (msgpack-able) data. ``ports`` rows are
        ``[port, ECS, notify_vcpu_id, a, b]``: UNBOUND (remote_dom, 0), INTERDOMAIN
        (remote_dom, remote_port), VIRQ (virq, 0), PIRQ (pirq, 0), IPI (0, 0)."""
        d = self._dom(domid)
        ports = []
        for port, chn in enumerate(d.chns):
            if _in_use(chn):
                a = chn.virq if chn.state is ECS.VIRQ else (
                    chn.pirq if chn.state is ECS.PIRQ else chn.remote_dom)
                ports.append([port, int(chn.state), chn.notify_vcpu_id, a, chn.remote_port])
        return {"domid": domid, "max_port": d.max_port, "max_vcpus": d.max_vcpus,
                "privileged": d.privileged, "valid_evtchns": len(d.chns), "ports": ports,
                "global_virq_handlers": sorted(v for v, h in self._global_virq_handlers.items()
                                               if h == domid),
                "shared_info": bytes(d.shared_info.buffer)}

    def restore(self, state: dict, *,
                shared_info_buf: bytearray | memoryview | None = None) -> None:
        """Re-create a domain from :meth:`save`. Given a buffer, it is the live page and is left
        as it is; else the saved page is copied into a private one. An INTERDOMAIN port whose
        peer is absent becomes UNBOUND naming the peer (as if the peer had died); restoring the
        peer later re-links the pair, so domains may be restored in any order."""
        try:
            domid, nr = int(state["domid"]), int(state["valid_evtchns"])
            rows = [tuple(int(x) for x in row) for row in state["ports"]]
            handlers = [int(virq) for virq in state["global_virq_handlers"]]
            page = bytes(state["shared_info"])
            limits = {"max_port": int(state["max_port"]), "max_vcpus": int(state["max_vcpus"]),
                      "privileged": bool(state["privileged"])}
        except (KeyError, TypeError, ValueError) as e:
            raise XenError(Errno.EINVAL, f"malformed saved event channels: {e!r}") from e
        if len(page) != SHARED_INFO_SIZE or nr % EVTCHNS_PER_BUCKET or not (
                0 < nr <= EVTCHN_2L_NR_CHANNELS) or any(len(row) != 5 for row in rows):
            raise XenError(Errno.EINVAL, "saved shared_info, valid_evtchns or ports malformed")
        self.add_domain(domid, shared_info_buf=shared_info_buf, **limits)
        try:
            d = self._domains[domid]
            for virq in handlers:
                self._check_handler_change(domid, virq)
            relink = self._fill(d, nr, rows, handlers)
        except XenError:
            del self._domains[domid]
            raise
        for virq in handlers:
            self._global_virq_handlers[virq] = domid
        for port in relink:
            chn = d.chns[port]
            rd = self._domains.get(chn.remote_dom)
            peer = rd.chns[chn.remote_port] if rd and chn.remote_port < len(rd.chns) else None
            if peer is not None and peer.state is ECS.UNBOUND and peer.remote_dom == domid:
                peer.state, peer.remote_port = ECS.INTERDOMAIN, port
            else:
                chn.state, chn.remote_port = ECS.UNBOUND, 0
        if shared_info_buf is None:
            d.shared_info.buffer[:] = page

    def _fill(self, d: _Domain, nr: int, rows: list[tuple[int, ...]],
              handlers: list[int]) -> list[int]:
        """Load saved port rows into a fresh domain; returns its ports with a foreign peer."""
        d.chns.extend(_Evtchn() for _ in range(nr - len(d.chns)))
        relink = []
        for port, state, vcpu, a, b in rows:
            if not (0 < port < nr and 0 <= vcpu < d.max_vcpus and ECS.RESERVED < state <= ECS.IPI
                    and not _in_use(d.chns[port]) and 0 <= a <= 0xFFFF
                    and 0 <= b < EVTCHN_2L_NR_CHANNELS):
                raise XenError(Errno.EINVAL, f"bad saved port row {[port, state, vcpu, a, b]}")
            chn = d.chns[port]
            chn.state, chn.notify_vcpu_id = ECS(state), vcpu
            if chn.state is ECS.VIRQ:
                kind = get_virq_type(a)
                v = vcpu if kind is VirqType.VCPU else 0
                handler = a in handlers or self._global_virq_handler(a) == d.domid
                if a >= NR_VIRQS or d.virq_to_evtchn[v][a] or (
                        kind is VirqType.GLOBAL and not handler):
                    raise XenError(Errno.EINVAL, f"bad saved binding of virq {a}")
                chn.virq, d.virq_to_evtchn[v][a] = a, port
            elif chn.state is ECS.PIRQ:
                chn.pirq = a
            else:
                chn.remote_dom, chn.remote_port = a, b
                if chn.state is ECS.INTERDOMAIN and a != d.domid:
                    relink.append(port)
        for port, chn in enumerate(d.chns):  # the two ends of a loopback pair
            if chn.state is ECS.INTERDOMAIN and chn.remote_dom == d.domid:
                peer = d.chns[chn.remote_port] if chn.remote_port < nr else _Evtchn()
                if (peer.state, peer.remote_dom, peer.remote_port) != (
                        ECS.INTERDOMAIN, d.domid, port):
                    raise XenError(Errno.EINVAL, f"saved loopback port {port} has no partner")
        for port, chn in enumerate(d.chns):
            if chn.state is ECS.FREE:
                d.queue_free(port)
        return relink

    # -- internals ----------------------------------------------------------------------------

    def _dom(self, domid: int) -> _Domain:
        d = self._domains.get(domid)
        if d is None:
            raise XenError(Errno.ESRCH, f"no domain {domid}")
        return d

    @staticmethod
    def _check_target(c: _Domain, d: _Domain) -> None:
        """XSM_TARGET: a domain may act on itself; only a privileged one on another."""
        if c is not d and not c.privileged:
            raise XenError(Errno.EPERM, f"domain {c.domid} may not act on domain {d.domid}")

    @staticmethod
    def _check_vcpu(d: _Domain, vcpu: int) -> None:
        if not 0 <= vcpu < d.max_vcpus:
            raise XenError(Errno.ENOENT, f"domain {d.domid} has no vCPU {vcpu}")

    @staticmethod
    def _chn(d: _Domain, port: int) -> _Evtchn:
        if not 0 <= port < len(d.chns):
            raise XenError(Errno.EINVAL, f"port {port} is not valid in domain {d.domid}")
        return d.chns[port]

    def _get_free_port(self, d: _Domain) -> int:
        """``get_free_port``: the lowest FREE port, allocating a new bucket when needed.
        The port stays a candidate until it is seen taken: a caller may still fail after
        choosing it (-EPERM, -EINVAL), leaving it FREE."""
        chns, free = d.chns, d.free
        while free:
            self.ports_probed += 1
            port = free[0]
            if chns[port].state is ECS.FREE:
                if port <= d.max_port:
                    return port
                break  # the lowest FREE port is beyond the limit
            d.queued.discard(heapq.heappop(free))
        port = len(chns)
        if port > d.max_port:
            raise XenError(Errno.ENOSPC, f"domain {d.domid} has no free port <= {d.max_port}")
        chns.extend(_Evtchn() for _ in range(EVTCHNS_PER_BUCKET))
        for new in range(port, port + EVTCHNS_PER_BUCKET):
            d.queue_free(new)
        return port

    def _close(self, d1: _Domain, port1: int) -> None:
        """``evtchn_close`` then ``evtchn_free``."""
        chn = self._chn(d1, port1)
        state = chn.state
        if not _in_use(chn):
            raise XenError(Errno.EINVAL, f"port {port1} is {state.name}")
        if state is ECS.VIRQ:
            vcpu = chn.notify_vcpu_id if get_virq_type(chn.virq) is VirqType.VCPU else 0
            d1.virq_to_evtchn[vcpu][chn.virq] = 0
        elif state is ECS.INTERDOMAIN:
            chn2 = self._domains[chn.remote_dom].chns[chn.remote_port]
            chn2.state, chn2.remote_dom, chn2.remote_port = ECS.UNBOUND, d1.domid, 0
        d1.shared_info.clear_pending(port1)
        chn.free()
        d1.queue_free(port1)

    def take_raised(self) -> list[tuple[int, int]]:
        """The (domid, port)s newly made pending since the last call, masked or not: Xen
        runs ``evtchn_check_pollers`` for each (a ``SCHEDOP_poll`` on a masked port wakes
        on it, with no upcall)."""
        raised, self._raised = self._raised, []
        return raised

    def _set_pending(self, d: _Domain, vcpu: int, port: int) -> Upcall | None:
        done = d.shared_info.evtchn_2l_set_pending(vcpu, port)
        if done is not SetPending.COALESCED:
            self._raised.append((d.domid, port))
        if done is SetPending.KICK:
            self._upcalls += 1
            return Upcall(d.domid, vcpu, port)
        if done is SetPending.COALESCED:
            self._coalesced += 1
        return None
