"""Reference sections 3 (VIRQs), 5 (event channels) and 19.1 (pending is one bit)."""

import msgpack
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from protocols.errno import Errno, XenError
from protocols.evtchn import (DOMID_SELF, ECS, NR_VIRQS, EventChannels, EvtchnStat, EvtchnStatus,
                              Upcall, Virq, VirqType, get_virq_type)


def _host(*domus: int, **kw) -> EventChannels:
    """Dom0 (privileged, the hardware domain) plus unprivileged domains."""
    ev = EventChannels()
    ev.add_domain(0, privileged=True, max_vcpus=2)
    for domid in domus:
        ev.add_domain(domid, max_vcpus=2, **kw)
    return ev


def _pair(ev: EventChannels, front: int = 1, back: int = 0) -> tuple[int, int]:
    """front allocates a port for back, back binds it: (front port, back port)."""
    fport = ev.alloc_unbound(front, DOMID_SELF, back)
    bport, _ = ev.bind_interdomain(back, front, fport)
    return fport, bport


def _errno(fn, *args, **kw) -> Errno:
    with pytest.raises(XenError) as e:
        fn(*args, **kw)
    return e.value.errno


# -- section 5: port numbering ----------------------------------------------------------------

def test_evtchn_5_port_0_reserved_and_allocation_is_lowest_free_from_1():
    ev = _host(1)
    assert ev.status(1, DOMID_SELF, 0).status is EvtchnStat.closed
    assert [ev.alloc_unbound(1, DOMID_SELF, 0) for _ in range(3)] == [1, 2, 3]
    ev.close(1, 2)
    assert ev.bind_ipi(1, 0) == 2
    assert ev.bind_ipi(1, 1) == 4
    assert _errno(ev.close, 1, 0) == Errno.EINVAL  # RESERVED


def test_evtchn_5_running_out_of_ports_is_enospc():
    ev = _host(1, max_port=3)
    assert [ev.bind_ipi(1, 0) for _ in range(3)] == [1, 2, 3]
    assert _errno(ev.bind_ipi, 1, 0) == Errno.ENOSPC
    assert _errno(ev.alloc_unbound, 0, 1, 0) == Errno.ENOSPC
    ev.close(1, 2)
    assert ev.bind_ipi(1, 0) == 2


def test_evtchn_4_two_level_abi_caps_ports_at_4096():
    ev = EventChannels()
    ev.add_domain(1, max_port=100_000)
    ports = [ev.bind_ipi(1, 0) for _ in range(4095)]
    assert ports[-1] == 4095
    assert _errno(ev.bind_ipi, 1, 0) == Errno.ENOSPC
    assert _errno(ev.status, 1, 1, 4096) == Errno.EINVAL


def test_evtchn_5_ports_past_the_allocated_buckets_are_einval():
    ev = _host(1)
    assert ev.status(1, 1, 63).status is EvtchnStat.closed  # first bucket exists
    for op in (ev.send, ev.close, ev.unmask):
        assert _errno(op, 1, 64) == Errno.EINVAL
        assert _errno(op, 1, -1) == Errno.EINVAL
    assert _errno(ev.status, 1, 1, 64) == Errno.EINVAL


# -- section 5: alloc_unbound / bind_interdomain ----------------------------------------------

def test_evtchn_5_alloc_unbound_resolves_domid_self_in_both_fields():
    ev = _host(1)
    port = ev.alloc_unbound(1, DOMID_SELF, DOMID_SELF)
    assert ev.status(1, 1, port) == EvtchnStatus(EvtchnStat.unbound, 0, unbound_dom=1)
    lport, _ = ev.bind_interdomain(1, DOMID_SELF, port)  # loopback
    assert ev.status(1, 1, lport).interdomain_dom == 1
    assert ev.status(1, 1, port).interdomain_port == lport


def test_evtchn_5_alloc_unbound_remote_dom_is_not_looked_up():
    ev = _host(1)
    port = ev.alloc_unbound(1, DOMID_SELF, 7)  # domain 7 does not exist yet
    assert ev.status(1, 1, port).unbound_dom == 7
    ev.add_domain(7)
    lport, _ = ev.bind_interdomain(7, 1, port)
    assert ev.status(1, 1, port).interdomain_dom == 7 and lport == 1


def test_evtchn_5_alloc_unbound_for_another_domain_needs_privilege():
    ev = _host(1, 2)
    assert _errno(ev.alloc_unbound, 1, 2, 1) == Errno.EPERM
    assert ev.statistics().ports_in_use[2] == 0
    port = ev.alloc_unbound(0, 2, 1)  # the toolstack allocates for domain 2
    assert ev.status(2, 2, port).unbound_dom == 1
    assert _errno(ev.alloc_unbound, 0, 9, 1) == Errno.ESRCH


def test_evtchn_5_bind_interdomain_needs_an_unbound_port_naming_the_caller():
    ev = _host(1, 2)
    port = ev.alloc_unbound(1, DOMID_SELF, 0)
    assert _errno(ev.bind_interdomain, 2, 1, port) == Errno.EINVAL  # names domain 0
    assert _errno(ev.bind_interdomain, 0, 1, port + 1) == Errno.EINVAL  # free port
    assert _errno(ev.bind_interdomain, 0, 1, 5000) == Errno.EINVAL  # invalid port
    assert _errno(ev.bind_interdomain, 0, 9, port) == Errno.ESRCH
    ev.bind_interdomain(0, 1, port)
    assert _errno(ev.bind_interdomain, 0, 1, port) == Errno.EINVAL  # already bound


def test_evtchn_19_1_bind_interdomain_always_marks_the_new_local_port_pending():
    ev = _host(1)
    fport = ev.alloc_unbound(1, DOMID_SELF, 0)
    bport, upcall = ev.bind_interdomain(0, 1, fport)
    assert upcall == Upcall(domid=0, vcpu=0, port=bport)
    assert ev.pending_ports(0) == [bport]
    assert ev.pending_ports(1) == []


def test_evtchn_5_bound_ports_point_at_each_other():
    ev = _host(1)
    fport, bport = _pair(ev)
    assert ev.status(1, 1, fport) == EvtchnStatus(EvtchnStat.interdomain, 0, interdomain_dom=0,
                                                  interdomain_port=bport)
    assert ev.status(0, 0, bport) == EvtchnStatus(EvtchnStat.interdomain, 0, interdomain_dom=1,
                                                  interdomain_port=fport)


# -- section 5 / 19.1: send ---------------------------------------------------------------------

def test_evtchn_19_1_send_on_unbound_port_is_dropped():
    ev = _host(1)
    port = ev.alloc_unbound(1, DOMID_SELF, 0)
    assert ev.send(1, port) is None
    assert ev.pending_ports(0) == [] and ev.pending_ports(1) == []
    assert ev.statistics().dropped == 1


def test_evtchn_5_send_sets_the_remote_port_pending_on_its_notify_vcpu():
    ev = _host(1)
    fport, bport = _pair(ev)
    ev.bind_vcpu(1, fport, 1)
    assert ev.send(0, bport) == Upcall(domid=1, vcpu=1, port=fport)
    assert ev.shared_info(1).pending_sel(1) == 1 and ev.shared_info(1).pending_sel(0) == 0


def test_evtchn_19_1_repeated_sends_coalesce():
    ev = _host(1)
    fport, bport = _pair(ev)
    upcalls = [ev.send(0, bport) for _ in range(5)]
    assert upcalls[0] == Upcall(1, 0, fport) and upcalls[1:] == [None] * 4
    assert ev.pending_ports(1) == [fport]
    assert ev.statistics().coalesced == 4
    assert ev.shared_info(1).guest_take_pending(0) == [fport]
    assert ev.send(0, bport) == Upcall(1, 0, fport)  # a new 0 -> 1 after the guest took it


def test_evtchn_19_1_masked_send_sets_pending_without_upcall_and_unmask_reraises():
    ev = _host(1)
    fport, bport = _pair(ev)
    ev.mask(1, fport)
    assert ev.send(0, bport) is None
    assert ev.pending_ports(1) == [fport]
    assert ev.unmask(1, fport) == Upcall(1, 0, fport)
    assert ev.unmask(1, fport) is None  # already unmasked


def test_evtchn_4_clearing_the_mask_in_memory_gives_no_upcall():
    ev = _host(1)
    fport, bport = _pair(ev)
    ev.mask(1, fport)
    ev.send(0, bport)
    ev.shared_info(1).clear_mask(fport)  # not EVTCHNOP_unmask: the edge is lost
    assert ev.shared_info(1).upcall_pending(0) == 0
    assert ev.send(0, bport) is None  # still pending: coalesced, so still no upcall
    assert ev.pending_ports(1) == [fport]


def test_evtchn_5_ipi_send_notifies_the_callers_own_vcpu():
    ev = _host(1)
    port = ev.bind_ipi(1, 1)
    assert ev.send(1, port) == Upcall(1, 1, port)
    assert ev.status(1, 1, port) == EvtchnStatus(EvtchnStat.ipi, 1)


def test_evtchn_5_send_on_a_closed_or_virq_port_is_einval():
    ev = _host(1)
    virq_port = ev.bind_virq(1, Virq.TIMER, 0)
    for port in (0, 5, virq_port):
        assert _errno(ev.send, 1, port) == Errno.EINVAL
    assert _errno(ev.send, 9, 1) == Errno.ESRCH


def test_evtchn_5_guest_clears_pending_not_xen():
    ev = _host(1)
    fport, bport = _pair(ev)
    ev.send(0, bport)
    ev.clear_pending(1, fport)
    assert ev.pending_ports(1) == []


# -- section 5: close ---------------------------------------------------------------------------

def test_evtchn_19_1_close_turns_the_peer_unbound_and_it_can_be_bound_again():
    ev = _host(1, 2)
    fport, bport = _pair(ev)
    ev.close(0, bport)
    assert ev.status(1, 1, fport) == EvtchnStatus(EvtchnStat.unbound, 0, unbound_dom=0)
    assert ev.send(1, fport) is None  # dropped
    assert _errno(ev.bind_interdomain, 2, 1, fport) == Errno.EINVAL  # names the closer only
    ev.remove_domain(0)
    ev.add_domain(0)  # a new domain with the closer's domid
    port, upcall = ev.bind_interdomain(0, 1, fport)
    assert ev.status(1, 1, fport).interdomain_port == port and upcall is not None


def test_evtchn_5_freeing_a_port_clears_pending_and_resets_notify_vcpu():
    ev = _host(1)
    fport, bport = _pair(ev)
    ev.bind_vcpu(1, fport, 1)
    ev.send(0, bport)
    ev.close(1, fport)
    assert ev.pending_ports(1) == []
    assert ev.status(1, 1, fport) == EvtchnStatus(EvtchnStat.closed, 0)


def test_evtchn_5_close_of_a_free_or_reserved_port_is_einval():
    ev = _host(1)
    port = ev.bind_ipi(1, 0)
    ev.close(1, port)
    assert _errno(ev.close, 1, port) == Errno.EINVAL
    assert _errno(ev.close, 1, 0) == Errno.EINVAL


def test_evtchn_5_closing_a_virq_port_frees_the_binding():
    ev = _host(1)
    port = ev.bind_virq(1, Virq.TIMER, 1)
    ev.close(1, port)
    assert ev.bind_virq(1, Virq.TIMER, 1) == port


# -- section 5: bind_vcpu -------------------------------------------------------------------------

@pytest.mark.parametrize("make, allowed", [
    (lambda ev: ev.alloc_unbound(1, DOMID_SELF, 0), True),
    (lambda ev: _pair(ev)[0], True),
    (lambda ev: ev.bind_virq(1, Virq.ARGO, 0), True),  # per-domain
    (lambda ev: ev.bind_virq(1, Virq.TIMER, 0), False),  # per-vCPU
    (lambda ev: ev.bind_ipi(1, 0), False),
    (lambda ev: 5, False),  # free
], ids=["unbound", "interdomain", "virq-domain", "virq-vcpu", "ipi", "free"])
def test_evtchn_5_bind_vcpu_rules(make, allowed):
    ev = _host(1)
    port = make(ev)
    if allowed:
        ev.bind_vcpu(1, port, 1)
        assert ev.status(1, 1, port).vcpu == 1
    else:
        assert _errno(ev.bind_vcpu, 1, port, 1) == Errno.EINVAL
        assert ev.status(1, 1, port).vcpu == 0


def test_evtchn_5_bind_vcpu_to_a_missing_vcpu_is_enoent():
    ev = _host(1)
    port = ev.alloc_unbound(1, DOMID_SELF, 0)
    assert _errno(ev.bind_vcpu, 1, port, 2) == Errno.ENOENT
    assert _errno(ev.bind_ipi, 1, 2) == Errno.ENOENT


# -- section 3: VIRQs ------------------------------------------------------------------------

def test_evtchn_3_virq_kinds_match_xen_h():
    kinds = {v: get_virq_type(v) for v in Virq}
    assert [v for v, k in kinds.items() if k is VirqType.VCPU] == [
        Virq.TIMER, Virq.DEBUG, Virq.XENOPROF, Virq.XENPMU]
    assert [v for v, k in kinds.items() if k is VirqType.DOMAIN] == [Virq.ARGO]
    assert Virq.DOM_EXC == 3 and get_virq_type(Virq.DOM_EXC) is VirqType.GLOBAL
    assert NR_VIRQS == 24 and get_virq_type(5) is VirqType.GLOBAL


def test_evtchn_3_per_vcpu_virq_binds_once_per_vcpu():
    ev = _host(1)
    p0 = ev.bind_virq(1, Virq.TIMER, 0)
    p1 = ev.bind_virq(1, Virq.TIMER, 1)
    assert p0 != p1
    assert _errno(ev.bind_virq, 1, Virq.TIMER, 1) == Errno.EEXIST
    assert ev.status(1, 1, p1) == EvtchnStatus(EvtchnStat.virq, 1, virq=Virq.TIMER)
    assert ev.send_virq(1, Virq.TIMER, 1) == Upcall(1, 1, p1)


def test_evtchn_3_domain_and_global_virqs_bind_on_vcpu0_only():
    ev = _host(1)
    assert _errno(ev.bind_virq, 1, Virq.ARGO, 1) == Errno.EINVAL
    assert _errno(ev.bind_virq, 0, Virq.DOM_EXC, 1) == Errno.EINVAL
    port = ev.bind_virq(1, Virq.ARGO, 0)
    assert _errno(ev.bind_virq, 1, Virq.ARGO, 0) == Errno.EEXIST
    ev.bind_vcpu(1, port, 1)  # moved later: delivered to the new vCPU
    assert ev.send_virq(1, Virq.ARGO) == Upcall(1, 1, port)
    assert _errno(ev.bind_virq, 1, NR_VIRQS, 0) == Errno.EINVAL
    assert _errno(ev.bind_virq, 1, Virq.TIMER, 2) == Errno.ENOENT


def test_evtchn_3_global_virq_has_one_holder_at_a_time():
    ev = _host(1, 2)
    assert _errno(ev.bind_virq, 1, Virq.DOM_EXC, 0) == Errno.EBUSY  # dom0 is the handler
    port = ev.bind_virq(0, Virq.DOM_EXC, 0)
    assert ev.send_global_virq(Virq.DOM_EXC) == Upcall(0, 0, port)
    assert _errno(ev.set_global_virq_handler, 1, Virq.DOM_EXC) == Errno.EBUSY
    ev.close(0, port)
    ev.set_global_virq_handler(1, Virq.DOM_EXC)  # e.g. a xenstore stub domain
    assert _errno(ev.bind_virq, 0, Virq.DOM_EXC, 0) == Errno.EBUSY
    assert _errno(ev.bind_virq, 2, Virq.DOM_EXC, 0) == Errno.EBUSY
    port = ev.bind_virq(1, Virq.DOM_EXC, 0)
    assert ev.send_global_virq(Virq.DOM_EXC) == Upcall(1, 0, port)
    assert _errno(ev.set_global_virq_handler, 1, Virq.ARGO) == Errno.EINVAL


def test_evtchn_3_virq_sent_while_unbound_is_dropped():
    ev = _host(1)
    assert ev.send_virq(1, Virq.TIMER, 1) is None
    assert ev.send_global_virq(Virq.DOM_EXC) is None  # dom0 has not bound it
    assert ev.pending_ports(0) == [] and ev.pending_ports(1) == []
    assert _errno(ev.send_global_virq, Virq.TIMER) == Errno.EINVAL


def test_evtchn_3_a_dead_handler_gives_the_global_virq_back_to_the_hardware_domain():
    ev = _host(1)
    ev.set_global_virq_handler(1, Virq.DOM_EXC)
    ev.bind_virq(1, Virq.DOM_EXC, 0)
    ev.remove_domain(1)
    port = ev.bind_virq(0, Virq.DOM_EXC, 0)
    assert ev.send_global_virq(Virq.DOM_EXC) == Upcall(0, 0, port)


# -- section 5: destroy, reset, status, privilege ---------------------------------------------

def test_evtchn_5_remove_domain_leaves_peers_unbound():
    ev = _host(1, 2)
    fport, bport = _pair(ev, front=1, back=0)
    f2, b2 = _pair(ev, front=2, back=1)
    ev.remove_domain(1)
    assert ev.status(0, 0, bport) == EvtchnStatus(EvtchnStat.unbound, 0, unbound_dom=1)
    assert ev.status(2, 2, f2).unbound_dom == 1
    assert ev.send(0, bport) is None and ev.send(2, f2) is None
    assert _errno(ev.send, 1, fport) == Errno.ESRCH
    assert 1 not in ev.statistics().ports_in_use


def test_evtchn_5_reset_closes_every_port_and_needs_privilege_for_another_domain():
    ev = _host(1, 2)
    fport, bport = _pair(ev)
    ev.bind_virq(1, Virq.TIMER, 0)
    assert _errno(ev.reset, 2, 1) == Errno.EPERM
    assert ev.statistics().ports_in_use[1] == 2
    ev.reset(0, 1)
    assert ev.statistics().ports_in_use[1] == 0
    assert ev.status(0, 0, bport).status is EvtchnStat.unbound
    ev.bind_ipi(2, 0)
    ev.reset(2, DOMID_SELF)
    assert ev.statistics().ports_in_use[2] == 0
    assert _errno(ev.reset, 0, 9) == Errno.ESRCH


def test_evtchn_5_status_of_another_domain_needs_privilege():
    ev = _host(1, 2)
    port = ev.bind_ipi(2, 0)
    assert _errno(ev.status, 1, 2, port) == Errno.EPERM
    assert ev.status(0, 2, port).status is EvtchnStat.ipi
    assert _errno(ev.status, 1, 9, port) == Errno.ESRCH


def test_evtchn_5_domains_are_checked_on_creation():
    ev = _host()
    assert _errno(ev.add_domain, 0) == Errno.EEXIST
    assert _errno(ev.add_domain, DOMID_SELF) == Errno.EINVAL
    assert _errno(ev.add_domain, 3, max_vcpus=33) == Errno.EINVAL
    assert _errno(ev.remove_domain, 3) == Errno.ESRCH


def test_evtchn_statistics_count_sends_upcalls_coalesced_and_dropped():
    ev = _host(1)
    fport, bport = _pair(ev)  # bind: one upcall for dom0
    unbound = ev.alloc_unbound(1, DOMID_SELF, 0)
    ev.send(0, bport)
    ev.send(0, bport)
    ev.send(1, unbound)
    stats = ev.statistics()
    assert (stats.sends, stats.upcalls, stats.coalesced, stats.dropped) == (3, 2, 1, 1)
    assert stats.ports_in_use == {0: 1, 1: 2}


# -- save / restore ----------------------------------------------------------------------------

def _through_msgpack(state: dict) -> dict:
    return msgpack.unpackb(msgpack.packb(state))


def test_evtchn_save_restore_round_trips_a_host_in_any_order():
    ev = _host(1, 2)
    fport, bport = _pair(ev)
    loop = ev.alloc_unbound(2, DOMID_SELF, DOMID_SELF)
    lport, _ = ev.bind_interdomain(2, 2, loop)
    unbound = ev.alloc_unbound(2, DOMID_SELF, 7)
    timer = ev.bind_virq(2, Virq.TIMER, 1)
    dom_exc = ev.bind_virq(0, Virq.DOM_EXC, 0)
    ev.send(0, bport)
    saved = {d: _through_msgpack(ev.save(d)) for d in (0, 1, 2)}
    before = {(d, p): ev.status(0, d, p) for d in (0, 1, 2) for p in range(8)}
    fresh = EventChannels()
    for d in (1, 2, 0):  # dom1's peer (dom0) comes last
        fresh.restore(saved[d])
    assert {(d, p): fresh.status(0, d, p) for d in (0, 1, 2) for p in range(8)} == before
    assert fresh.pending_ports(1) == [fport]
    assert fresh.send(1, fport) is None  # bport still pending from the bind: coalesced
    assert fresh.send_virq(2, Virq.TIMER, 1) == Upcall(2, 1, timer)
    assert fresh.send_global_virq(Virq.DOM_EXC) is None  # dom0's upcall is still pending
    assert fresh.shared_info(0).guest_take_pending(0) == [bport, dom_exc]
    assert fresh.status(0, 2, unbound).unbound_dom == 7 and lport != loop


def test_evtchn_restore_without_the_peer_leaves_the_port_unbound():
    ev = _host(1)
    fport, _ = _pair(ev)
    fresh = EventChannels()
    fresh.restore(ev.save(1))
    assert fresh.status(1, 1, fport) == EvtchnStatus(EvtchnStat.unbound, 0, unbound_dom=0)


def test_evtchn_restore_keeps_a_live_shared_info_page():
    ev = _host(1)
    saved = ev.save(1)
    live = bytearray(4096)
    live[2048] = 0b100  # port 2 pending in the live page
    fresh = EventChannels()
    fresh.restore(saved, shared_info_buf=live)
    assert fresh.pending_ports(1) == [2]


@pytest.mark.parametrize("corrupt", [
    lambda s: s.pop("ports"),
    lambda s: s["ports"].append([0, int(ECS.IPI), 0, 0, 0]),  # port 0 is reserved
    lambda s: s["ports"].append([9, 42, 0, 0, 0]),  # no such state
    lambda s: s["ports"].append([9, int(ECS.IPI), 5, 0, 0]),  # no vCPU 5
    lambda s: s["ports"].append([9, int(ECS.VIRQ), 0, int(Virq.DOM_EXC), 0]),  # not handler
    lambda s: s["ports"].append([9, int(ECS.INTERDOMAIN), 0, 1, 30]),  # half a loopback
    lambda s: s["ports"].append([9, int(ECS.IPI), 0]),
    lambda s: s.update(shared_info=b"short"),
], ids=["missing", "port0", "state", "vcpu", "global-virq", "loopback", "row", "page"])
def test_evtchn_restore_rejects_a_malformed_state_and_changes_nothing(corrupt):
    ev = _host(1)
    state = _through_msgpack(ev.save(1))
    corrupt(state)
    fresh = _host()
    assert _errno(fresh.restore, state) == Errno.EINVAL
    assert 1 not in fresh.statistics().ports_in_use


# -- a reference model, driven by hypothesis ---------------------------------------------------

DOMS = (0, 1, 2, 3)  # domain 0 is privileged
MAX_PORT, VCPUS = 8, 2
_doms = st.sampled_from(DOMS)
_dom_args = st.sampled_from(DOMS + (DOMID_SELF,))
_ports = st.integers(0, MAX_PORT + 2) | st.just(64)
_vcpus = st.integers(0, VCPUS)
_STAT = {ECS.UNBOUND: EvtchnStat.unbound, ECS.INTERDOMAIN: EvtchnStat.interdomain,
         ECS.IPI: EvtchnStat.ipi}


class _RefDom:
    """What the reference says one domain's ports and shared-info bits are."""

    def __init__(self, privileged: bool) -> None:
        self.privileged = privileged
        self.chn: dict[int, list] = {0: [ECS.RESERVED, 0, 0, 0]}  # [state, vcpu, dom, port]
        self.pending: set[int] = set()
        self.masked: set[int] = set()
        self.sel = [set() for _ in range(VCPUS)]
        self.upcall = [False] * VCPUS

    def free_port(self) -> int | None:
        return next((p for p in range(1, MAX_PORT + 1) if p not in self.chn), None)


class EvtchnMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ev = EventChannels()
        self.ref: dict[int, _RefDom] = {}
        self.upcalls = 0
        for domid in DOMS:
            self._add(domid)

    # -- the reference's rules, from reference sections 4 and 5 --

    def _add(self, domid: int) -> None:
        self.ev.add_domain(domid, max_port=MAX_PORT, max_vcpus=VCPUS, privileged=domid == 0)
        self.ref[domid] = _RefDom(privileged=domid == 0)

    def _set_pending(self, domid: int, vcpu: int, port: int) -> Upcall | None:
        r = self.ref[domid]
        if port in r.pending:
            return None  # coalesced
        r.pending.add(port)
        if port in r.masked or port // 64 in r.sel[vcpu]:
            return None
        r.sel[vcpu].add(port // 64)
        if r.upcall[vcpu]:
            return None
        r.upcall[vcpu] = True
        self.upcalls += 1
        return Upcall(domid, vcpu, port)

    def _close(self, domid: int, port: int) -> None:
        r = self.ref[domid]
        state, _, rdom, rport = r.chn.pop(port)
        if state is ECS.INTERDOMAIN:
            peer = self.ref[rdom].chn[rport]
            peer[0], peer[2], peer[3] = ECS.UNBOUND, domid, 0
        r.pending.discard(port)

    def _call(self, err: Errno | None, fn, *args):
        if err is None:
            return fn(*args)
        with pytest.raises(XenError) as e:
            fn(*args)
        assert e.value.errno == err, (fn.__name__, args)
        return None

    def _port(self, data, domid: int, masked: bool = False) -> int:
        """Mostly a port the domain uses (or has masked), sometimes any port."""
        r = self.ref.get(domid)
        used = [] if r is None else sorted(r.masked) if masked and r.masked else sorted(r.chn)[1:]
        return data.draw(st.sampled_from(used) | _ports if used else _ports)

    def _state(self, domid: int, port: int) -> ECS:
        return self.ref[domid].chn.get(port, [ECS.FREE])[0]

    def _alloc_unbound(self, caller: int, dom: int, remote: int) -> int | None:
        target = caller if dom == DOMID_SELF else dom
        err = port = None
        if caller not in self.ref or target not in self.ref:
            err = Errno.ESRCH
        elif (port := self.ref[target].free_port()) is None:
            err = Errno.ENOSPC
        elif caller != target and not self.ref[caller].privileged:
            err = Errno.EPERM
        got = self._call(err, self.ev.alloc_unbound, caller, dom, remote)
        if err is None:
            assert got == port
            self.ref[target].chn[port] = [
                ECS.UNBOUND, 0, caller if remote == DOMID_SELF else remote, 0]
        return got

    def _bind_interdomain(self, caller: int, remote_dom: int, remote_port: int) -> None:
        rdom = caller if remote_dom == DOMID_SELF else remote_dom
        err = lport = None
        if caller not in self.ref or rdom not in self.ref:
            err = Errno.ESRCH
        elif (lport := self.ref[caller].free_port()) is None:
            err = Errno.ENOSPC
        elif remote_port >= 64 or self._state(rdom, remote_port) is not ECS.UNBOUND or \
                self.ref[rdom].chn[remote_port][2] != caller:
            err = Errno.EINVAL
        got = self._call(err, self.ev.bind_interdomain, caller, remote_dom, remote_port)
        if err is None:
            self.ref[caller].chn[lport] = [ECS.INTERDOMAIN, 0, rdom, remote_port]
            peer = self.ref[rdom].chn[remote_port]
            peer[0], peer[2], peer[3] = ECS.INTERDOMAIN, caller, lport
            assert got == (lport, self._set_pending(caller, 0, lport))

    # -- rules --

    @precondition(lambda self: len(self.ref) < len(DOMS))
    @rule(data=st.data())
    def add_domain(self, data) -> None:
        self._add(data.draw(st.sampled_from(sorted(set(DOMS) - set(self.ref)))))

    @precondition(lambda self: self.ref)
    @rule(data=st.data(), really=st.integers(0, 3))
    def remove_domain(self, data, really) -> None:
        if really:  # rarely: it wipes a quarter of the state
            return
        domid = data.draw(st.sampled_from(sorted(self.ref)))
        for port in sorted(self.ref[domid].chn, reverse=True)[:-1]:
            self._close(domid, port)
        del self.ref[domid]
        self.ev.remove_domain(domid)

    @precondition(lambda self: self.ref)
    @rule(data=st.data())
    def save_remove_restore(self, data) -> None:
        """Dying closes every port (peers go UNBOUND); restoring re-links them: no change."""
        domid = data.draw(st.sampled_from(sorted(self.ref)))
        saved = _through_msgpack(self.ev.save(domid))
        self.ev.remove_domain(domid)
        self.ev.restore(saved)

    @rule(caller=_doms, dom=_dom_args, remote=st.sampled_from(DOMS + (DOMID_SELF, 9)))
    def alloc_unbound(self, caller, dom, remote) -> None:
        self._alloc_unbound(caller, dom, remote)

    @rule(caller=_doms, remote_dom=_dom_args, data=st.data())
    def bind_interdomain(self, caller, remote_dom, data) -> None:
        rdom = caller if remote_dom == DOMID_SELF else remote_dom
        self._bind_interdomain(caller, remote_dom, self._port(data, rdom))

    @rule(front=_doms, back=_doms)
    def connect(self, front, back) -> None:
        """The usual pattern: the frontend allocates for its backend, which binds."""
        port = self._alloc_unbound(front, DOMID_SELF, back)
        if port is not None:
            self._bind_interdomain(back, DOMID_SELF if front == back else front, port)

    @rule(caller=_doms, vcpu=_vcpus)
    def bind_ipi(self, caller, vcpu) -> None:
        err = port = None
        if caller not in self.ref:
            err = Errno.ESRCH
        elif vcpu >= VCPUS:
            err = Errno.ENOENT
        elif (port := self.ref[caller].free_port()) is None:
            err = Errno.ENOSPC
        if self._call(err, self.ev.bind_ipi, caller, vcpu) is not None:
            self.ref[caller].chn[port] = [ECS.IPI, vcpu, 0, 0]

    @rule(caller=_doms, data=st.data())
    def send(self, caller, data) -> None:
        port = self._port(data, caller)
        err = expected = None
        if caller not in self.ref:
            err = Errno.ESRCH
        elif port >= 64 or self._state(caller, port) not in _STAT:
            err = Errno.EINVAL
        else:
            state, vcpu, rdom, rport = self.ref[caller].chn[port]
            if state is ECS.INTERDOMAIN:
                expected = self._set_pending(rdom, self.ref[rdom].chn[rport][1], rport)
            elif state is ECS.IPI:
                expected = self._set_pending(caller, vcpu, port)
        assert self._call(err, self.ev.send, caller, port) == expected

    @rule(caller=_doms, data=st.data())
    def close(self, caller, data) -> None:
        port = self._port(data, caller)
        err = None
        if caller not in self.ref:
            err = Errno.ESRCH
        elif port >= 64 or self._state(caller, port) not in _STAT:
            err = Errno.EINVAL
        self._call(err, self.ev.close, caller, port)
        if err is None:
            self._close(caller, port)

    @rule(data=st.data())
    def unmask(self, data) -> None:
        masking = sorted(d for d, r in self.ref.items() if r.masked)
        caller = data.draw(st.sampled_from(masking) | _doms if masking else _doms)
        port = self._port(data, caller, masked=True)
        err = expected = None
        if caller not in self.ref:
            err = Errno.ESRCH
        elif port >= 64:
            err = Errno.EINVAL
        elif port in (r := self.ref[caller]).masked:
            r.masked.discard(port)
            vcpu = r.chn.get(port, [0, 0])[1]
            if port in r.pending and port // 64 not in r.sel[vcpu]:
                r.sel[vcpu].add(port // 64)
                if not r.upcall[vcpu]:
                    r.upcall[vcpu] = True
                    self.upcalls += 1
                    expected = Upcall(caller, vcpu, port)
        assert self._call(err, self.ev.unmask, caller, port) == expected

    @rule(domid=_doms, data=st.data())
    def mask(self, domid, data) -> None:
        port = self._port(data, domid)
        err = None if domid in self.ref else Errno.ESRCH
        self._call(err, self.ev.mask, domid, port)
        if err is None:
            self.ref[domid].masked.add(port)

    @precondition(lambda self: self.ref)
    @rule(data=st.data(), vcpu=st.integers(0, VCPUS - 1))
    def guest_take_pending(self, data, vcpu) -> None:
        domid = data.draw(st.sampled_from(sorted(self.ref)))
        r = self.ref[domid]
        ready = sorted(p for p in r.pending if p // 64 in r.sel[vcpu] and p not in r.masked)
        r.upcall[vcpu] = False
        r.sel[vcpu].clear()
        r.pending.difference_update(ready)
        assert self.ev.shared_info(domid).guest_take_pending(vcpu) == ready

    @rule(caller=_doms, vcpu=_vcpus, data=st.data())
    def bind_vcpu(self, caller, vcpu, data) -> None:
        port = self._port(data, caller)
        err = None
        if caller not in self.ref:
            err = Errno.ESRCH
        elif vcpu >= VCPUS:
            err = Errno.ENOENT
        elif port >= 64 or self._state(caller, port) not in (ECS.UNBOUND, ECS.INTERDOMAIN):
            err = Errno.EINVAL
        self._call(err, self.ev.bind_vcpu, caller, port, vcpu)
        if err is None:
            self.ref[caller].chn[port][1] = vcpu

    @rule(caller=_doms, dom=_dom_args, really=st.integers(0, 3))
    def reset(self, caller, dom, really) -> None:
        if really:  # rarely, as remove_domain
            return
        target = caller if dom == DOMID_SELF else dom
        err = None
        if caller not in self.ref or target not in self.ref:
            err = Errno.ESRCH
        elif caller != target and not self.ref[caller].privileged:
            err = Errno.EPERM
        self._call(err, self.ev.reset, caller, dom)
        if err is None:
            for port in sorted(self.ref[target].chn)[1:]:
                self._close(target, port)

    # -- invariants --

    @invariant()
    def ports_match_the_reference_and_port_0_is_never_in_use(self) -> None:
        for domid, r in self.ref.items():
            for port in range(MAX_PORT + 3):
                state, vcpu, rdom, rport = r.chn.get(port, [ECS.FREE, 0, 0, 0])
                got = self.ev.status(domid, domid, port)
                if state in (ECS.FREE, ECS.RESERVED):
                    assert got == EvtchnStatus(EvtchnStat.closed, 0)
                else:
                    assert (got.status, got.vcpu) == (_STAT[state], vcpu)
                    assert (got.unbound_dom if state is ECS.UNBOUND else got.interdomain_dom,
                            got.interdomain_port) == (rdom, rport)
            assert r.chn[0][0] is ECS.RESERVED

    @invariant()
    def bound_pairs_point_at_each_other(self) -> None:
        for domid in self.ref:
            for port in range(1, MAX_PORT + 1):
                s = self.ev.status(domid, domid, port)
                if s.status is EvtchnStat.interdomain:
                    peer = self.ev.status(s.interdomain_dom, s.interdomain_dom, s.interdomain_port)
                    assert peer.status is EvtchnStat.interdomain
                    assert (peer.interdomain_dom, peer.interdomain_port) == (domid, port)

    @invariant()
    def pending_bits_and_upcalls_match_the_reference(self) -> None:
        for domid, r in self.ref.items():
            si = self.ev.shared_info(domid)
            assert si.pending_ports() == sorted(r.pending)
            for vcpu in range(VCPUS):
                assert si.upcall_pending(vcpu) == r.upcall[vcpu]
                assert si.pending_sel(vcpu) == sum(1 << w for w in r.sel[vcpu])
        assert self.ev.statistics().upcalls == self.upcalls


EvtchnMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50)
test_evtchn_5_19_1_random_operations_agree_with_a_reference_model = EvtchnMachine.TestCase
