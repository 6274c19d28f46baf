"""The hypervisor's scheduling glue (actors.hypervisor.vcpus and its hypercalls in
state.py, issue 14) driven with real msgpack hypercalls on a fake clock: who is told to run,
SCHEDOP_block and its "events pending" check, wake-ups by upcalls and by VIRQ_TIMER,
runstates, getdomaininfo's r/b flags and cpu_time, the scheduler's and affinity's domctls.
The schedulers' own algorithms are tested in test_sched_*."""

import msgpack
import pytest

from actors.hypervisor.effects import Deliver, RunVcpu
from actors.hypervisor.state import Hypervisor
from protocols.cpumap import to_bitmap
from protocols.errno import Errno
from protocols.hypercall import (DOMID_ANY, Domctl, DomInfoFlag, EvtchnOp, Hypercall, MemoryOp,
                                 Runstate, SchedCmd, SchedOp, SchedulerId, Sysctl, TimerOp,
                                 VcpuOp, Virq)
from tests.unit.test_hypervisor_state import HANDLE, Caller, Memory

MS = 1_000_000


class Clock:
    def __init__(self):
        self.ns = 1_000 * MS

    def __call__(self):
        return self.ns


@pytest.fixture(params=["credit2", "credit"])
def world(request):
    clock = Clock()
    hv = Hypervisor("h1", memory_mib=64, pcpus=1, mem_prefix="/dev/shm/test", frames=Memory(),
                    sched=request.param, clock_ns=clock)
    hv.boot_dom0(memory_mib=16)
    return hv, clock


def start(hv, name="dom", *, unpause=True):
    """A domain with its process handed over (endpoint h1/NAME), unpaused."""
    xl = Caller(hv, 0, hv.table.domains[0].secret, "h1/xl")
    rc, res = xl(Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
                 handle=HANDLE, flags=0, max_vcpus=1, max_evtchn_port=1023,
                 max_grant_frames=-1, max_maptrack_frames=-1)
    domid = res["domain"]
    xl(Hypercall.domctl, Domctl.max_mem, domain=domid, max_memkb=4096)
    xl(Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=[], nr_extents=1024,
       extent_order=0, mem_flags=0, domid=domid)
    ctx = msgpack.packb({"pid": 4242 + domid, "endpoint": f"h1/{name}"})
    assert xl(Hypercall.domctl, Domctl.setvcpucontext, domain=domid, vcpu=0, ctxt=ctx)[0] == 0
    if unpause:
        assert xl(Hypercall.domctl, Domctl.unpausedomain, domain=domid)[0] == 0
    return domid, Caller(hv, domid, res["secret"], f"h1/{name}"), xl


def runs(effects):
    return [(e.endpoint, e.run) for e in effects if isinstance(e, RunVcpu)]


def test_the_first_unpause_gives_the_vcpu_the_pcpu(world):
    hv, clock = world
    domid, guest, xl = start(hv, unpause=False)
    xl(Hypercall.domctl, Domctl.unpausedomain, domain=domid)
    assert runs(xl.effects) == [("h1/dom", True)]
    info = hv._dominfo(hv.table.domains[domid])
    assert info["flags"] & DomInfoFlag.running and not info["flags"] & DomInfoFlag.blocked


def test_block_gives_the_pcpu_to_the_next_and_an_upcall_wakes_it(world):
    hv, clock = world
    a, ga, _ = start(hv, "a")
    b, gb, _ = start(hv, "b")  # runnable, waiting: one pCPU
    clock.ns += 5 * MS
    rc, answer = ga(Hypercall.sched_op, SchedOp.block, vcpu=0, events=0)
    assert rc == 0 and answer["blocked"]
    assert ("h1/b", True) in runs(ga.effects)
    assert hv._dominfo(hv.table.domains[a])["flags"] & DomInfoFlag.blocked
    # b notifies a: the upcall goes down first, then a is woken (not yet run: b holds it)
    port = ga(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=0x7FF0, remote_dom=b)[1]
    rport = gb(Hypercall.event_channel_op, EvtchnOp.bind_interdomain, remote_dom=a,
               remote_port=port["port"])[1]["local_port"]
    gb(Hypercall.event_channel_op, EvtchnOp.send, port=rport)
    assert isinstance(gb.effects[0], Deliver) and gb.effects[0].endpoint == "h1/a"
    assert hv.vcpus.get(a, 0).delivered == 1
    assert not hv.vcpus.get(a, 0).blocked
    state = hv.vcpus.sched.runstate(a, 0, clock.ns)["state"]
    assert state in (Runstate.running, Runstate.runnable)


def test_block_with_upcalls_in_flight_does_not_block(world):
    hv, clock = world
    a, ga, _ = start(hv, "a")
    hv.vcpus.get(a, 0).delivered = 3  # sent, not yet taken by the guest
    rc, answer = ga(Hypercall.sched_op, SchedOp.block, vcpu=0, events=2)
    assert answer == {"blocked": False, "seq": answer["seq"], "events": 3}
    assert not hv.vcpus.get(a, 0).blocked and runs(ga.effects) == []


def test_set_timer_op_raises_virq_timer_and_wakes_the_blocked_vcpu(world):
    hv, clock = world
    a, ga, _ = start(hv, "a")
    timer_port = ga(Hypercall.event_channel_op, EvtchnOp.bind_virq, virq=Virq.TIMER,
                    vcpu=0)[1]["port"]
    ga(Hypercall.set_timer_op, TimerOp.set, vcpu=0, timeout=clock.ns + 3 * MS)
    ga(Hypercall.sched_op, SchedOp.block, vcpu=0, events=0)
    assert hv.next_deadline() == clock.ns + 3 * MS  # nothing else is due: all blocked
    clock.ns += 3 * MS
    effects = hv.expire_timers()
    assert Deliver("h1/a", a, (timer_port,)) in effects
    assert ("h1/a", True) in runs(effects)
    assert hv.next_deadline() != clock.ns - 3 * MS


def test_an_unbound_or_masked_virq_timer_does_not_wake_a_blocked_vcpu(world):
    """send_timer_event: an unbound VIRQ_TIMER is dropped and a masked one sends no upcall,
    so neither unblocks the vCPU (only vcpu_kick does); a masked one still wakes a vCPU
    polling its port (evtchn_check_pollers)."""
    hv, clock = world
    a, ga, _ = start(hv, "a")
    ga(Hypercall.set_timer_op, TimerOp.set, vcpu=0, timeout=clock.ns + 3 * MS)
    ga(Hypercall.sched_op, SchedOp.block, vcpu=0, events=0)
    clock.ns += 3 * MS
    assert hv.expire_timers() == [] and hv.vcpus.get(a, 0).blocked  # unbound: dropped
    port = ga(Hypercall.event_channel_op, EvtchnOp.bind_virq, virq=Virq.TIMER,
              vcpu=0)[1]["port"]
    hv.evtchn.shared_info(a).mask(port)
    ga(Hypercall.set_timer_op, TimerOp.set, vcpu=0, timeout=clock.ns + 3 * MS)
    clock.ns += 3 * MS
    assert hv.expire_timers() == [] and hv.vcpus.get(a, 0).blocked  # masked: no upcall
    assert hv.evtchn.shared_info(a).is_pending(port)
    ga(Hypercall.event_channel_op, EvtchnOp.unmask, port=port)  # the upcall wakes it
    assert not hv.vcpus.get(a, 0).blocked
    hv.evtchn.shared_info(a).clear_pending(port)
    hv.evtchn.shared_info(a).mask(port)
    assert ga(Hypercall.sched_op, SchedOp.poll, vcpu=0, events=1, ports=[port],
              timeout=0)[1]["blocked"]  # events: the guest took the unmask's upcall
    ga(Hypercall.set_timer_op, TimerOp.set, vcpu=0, timeout=clock.ns + 3 * MS)
    clock.ns += 3 * MS
    hv.expire_timers()
    assert not hv.vcpus.get(a, 0).blocked  # ... but its poller wakes


def test_a_paused_domain_keeps_its_blocked_flag(world):
    """getdomaininfo reads r and b from the vCPUs whatever the pause: xl list shows an idle
    paused domain as -bp---, a busy one as --p---."""
    hv, clock = world
    a, ga, xl = start(hv, "a")
    b, gb, _ = start(hv, "b")
    ga(Hypercall.sched_op, SchedOp.block, vcpu=0, events=0)
    for domid in (a, b):
        assert xl(Hypercall.domctl, Domctl.pausedomain, domain=domid)[0] == 0
    flags = {d: hv._dominfo(hv.table.domains[d])["flags"] for d in (a, b)}
    both = DomInfoFlag.blocked | DomInfoFlag.paused
    assert flags[a] & both == both and not flags[a] & DomInfoFlag.running
    assert flags[b] & both == DomInfoFlag.paused and not flags[b] & DomInfoFlag.running


def test_an_idle_host_has_no_deadline(world):
    hv, clock = world
    a, ga, _ = start(hv, "a")
    ga(Hypercall.sched_op, SchedOp.block, vcpu=0, events=0)
    assert hv.next_deadline() is None


def test_cpu_time_and_runstate_come_from_the_scheduler(world):
    hv, clock = world
    a, ga, _ = start(hv, "a")
    clock.ns += 40 * MS
    rc, rs = ga(Hypercall.vcpu_op, VcpuOp.get_runstate_info, vcpuid=0)
    assert rc == 0 and rs["state"] == Runstate.running
    assert rs["time"][Runstate.running] == 40 * MS
    assert hv._dominfo(hv.table.domains[a])["cpu_time"] == 40 * MS
    ga(Hypercall.sched_op, SchedOp.block, vcpu=0, events=0)
    clock.ns += 10 * MS
    rs = ga(Hypercall.vcpu_op, VcpuOp.get_runstate_info, vcpuid=0)[1]
    assert rs["state"] == Runstate.blocked and rs["time"][Runstate.blocked] == 10 * MS


def test_pause_takes_the_pcpu_and_the_paused_domain_runs_nothing(world):
    hv, clock = world
    a, ga, xl = start(hv, "a")
    xl(Hypercall.domctl, Domctl.pausedomain, domain=a)
    assert ("h1/a", False) in runs(xl.effects)
    assert hv.vcpus.sched.runstate(a, 0, clock.ns)["state"] == Runstate.offline
    xl(Hypercall.domctl, Domctl.unpausedomain, domain=a)
    assert ("h1/a", True) in runs(xl.effects)


def test_scheduler_op_reads_and_sets_weight_and_cap(world):
    hv, clock = world
    a, ga, xl = start(hv, "a")
    sid = hv.vcpus.sched.sched_id
    assert sid == (SchedulerId.CREDIT2 if hv.vcpus.sched.name == "credit2"
                   else SchedulerId.CREDIT)
    assert xl(Hypercall.sysctl, Sysctl.sched_id)[1] == {"sched_id": sid}
    rc, _ = xl(Hypercall.domctl, Domctl.scheduler_op, domain=a, sched_id=sid,
               cmd=SchedCmd.putinfo, weight=512, cap=0xFFFF)  # cap left as it is
    assert rc == 0
    rc, params = xl(Hypercall.domctl, Domctl.scheduler_op, domain=a, sched_id=sid,
                    cmd=SchedCmd.getinfo, weight=0, cap=0)
    assert (params["weight"], params["cap"]) == (512, 0)
    other = SchedulerId.CREDIT if sid == SchedulerId.CREDIT2 else SchedulerId.CREDIT2
    rc, _ = xl(Hypercall.domctl, Domctl.scheduler_op, domain=a, sched_id=other,
               cmd=SchedCmd.getinfo, weight=0, cap=0)
    assert rc == -Errno.EINVAL
    # a guest may not set its own weight
    assert ga(Hypercall.domctl, Domctl.scheduler_op, domain=a, sched_id=sid,
              cmd=SchedCmd.putinfo, weight=9999, cap=0)[0] == -Errno.EPERM


def test_sysctl_scheduler_op_ratelimit_and_its_range(world):
    """A putinfo sets every value the scheduler has, as given (libxl reads them first):
    ratelimit 0 is off, and credit's timeslice 0 is out of its range."""
    hv, clock = world
    xl = Caller(hv, 0, hv.table.domains[0].secret, "h1/xl")
    sid = hv.vcpus.sched.sched_id

    def op(cmd, **values):
        return xl(Hypercall.sysctl, Sysctl.scheduler_op, cpupool_id=0, sched_id=sid, cmd=cmd,
                  **{"tslice_ms": 0, "ratelimit_us": 0, **values})

    current = op(SchedCmd.getinfo)[1]
    tslice = {"tslice_ms": current["tslice_ms"]} if "tslice_ms" in current else {}
    assert op(SchedCmd.putinfo, ratelimit_us=2000, **tslice)[0] == 0
    rc, got = op(SchedCmd.getinfo)
    assert got["ratelimit_us"] == 2000 and got["sched"] == hv.vcpus.sched.name
    assert op(SchedCmd.putinfo, ratelimit_us=99, **tslice)[0] == -Errno.EINVAL
    assert op(SchedCmd.putinfo, ratelimit_us=0, **tslice)[0] == 0
    assert op(SchedCmd.getinfo)[1]["ratelimit_us"] == 0
    if tslice:
        assert op(SchedCmd.putinfo, ratelimit_us=0)[0] == -Errno.EINVAL  # tslice 0


def test_vcpu_affinity_and_vcpuinfo(world):
    hv, clock = world
    a, ga, xl = start(hv, "a")
    rc, got = xl(Hypercall.domctl, Domctl.setvcpuaffinity, domain=a, vcpu=0, flags=1,
                 cpumap_hard=to_bitmap(frozenset({0}), 1), cpumap_soft=to_bitmap(None, 1))
    assert rc == 0 and got["cpumap_hard"] == b"\x01"
    rc, info = xl(Hypercall.domctl, Domctl.getvcpuinfo, domain=a, vcpu=0)
    assert info["online"] == 1 and info["running"] == 1 and info["cpu"] == 0
    assert xl(Hypercall.domctl, Domctl.setvcpuaffinity, domain=a, vcpu=0, flags=1,
              cpumap_hard=b"\x00", cpumap_soft=b"\x01")[0] == -Errno.EINVAL
    assert xl(Hypercall.domctl, Domctl.getvcpuinfo, domain=a, vcpu=5)[0] == -Errno.EINVAL


def test_hostile_sched_ops_get_xen_errors_and_touch_no_one_else(world):
    hv, clock = world
    a, ga, _ = start(hv, "a")
    b, gb, _ = start(hv, "b")
    before = hv.vcpus.sched.runstate(b, 0, clock.ns)
    assert ga(Hypercall.sched_op, SchedOp.block, vcpu=7, events=0)[0] == -Errno.EINVAL
    assert ga(Hypercall.sched_op, SchedOp.yield_, vcpu=1 << 31)[0] == -Errno.EINVAL
    assert ga(Hypercall.set_timer_op, TimerOp.set, vcpu=3, timeout=1)[0] == -Errno.EINVAL
    assert ga(Hypercall.sched_op, SchedOp.poll, vcpu=0, events=0, ports=[1 << 20],
              timeout=0)[0] == -Errno.EINVAL
    assert hv.vcpus.sched.runstate(b, 0, clock.ns)["state"] == before["state"]
    assert not hv.vcpus.get(b, 0).blocked


def test_destroy_frees_the_pcpu_for_the_next(world):
    hv, clock = world
    a, ga, xl = start(hv, "a")
    b, gb, _ = start(hv, "b")
    xl(Hypercall.domctl, Domctl.destroydomain, domain=a)
    assert ("h1/b", True) in runs(xl.effects)
    assert a not in hv.vcpus.domains


def test_a_timer_far_in_the_future_is_clamped_as_xen_does(world):
    hv, clock = world
    a, ga, _ = start(hv, "a")
    ga(Hypercall.sched_op, SchedOp.block, vcpu=0, events=0)
    assert ga(Hypercall.set_timer_op, TimerOp.set, vcpu=0, timeout=(1 << 64) - 1)[0] == 0
    assert hv.next_deadline() == clock.ns + (1 << 32)  # do_set_timer_op's "never"


def test_a_guest_re_arming_its_timer_does_not_grow_the_hypervisor(world):
    hv, clock = world
    a, ga, _ = start(hv, "a")
    for i in range(5000):  # each earlier than the last: no stale entry ever reaches the top
        ga(Hypercall.set_timer_op, TimerOp.set, vcpu=0, timeout=clock.ns + 10**12 - i)
    assert len(hv.vcpus._timers) < 200
    assert hv.vcpus._first_timer() == clock.ns + 10**12 - 4999


def test_a_stale_timer_of_a_destroyed_domain_is_dropped_when_its_domid_is_reused(world):
    hv, clock = world
    xl = Caller(hv, 0, hv.table.domains[0].secret, "h1/xl")

    def create(domid, vcpus):
        rc, res = xl(Hypercall.domctl, Domctl.createdomain, domain=domid, ssidref=0,
                     handle=HANDLE, flags=0, max_vcpus=vcpus, max_evtchn_port=1023,
                     max_grant_frames=-1, max_maptrack_frames=-1)
        assert rc == 0
        return Caller(hv, domid, res["secret"], f"h1/d{domid}")

    big = create(7, 2)
    assert big(Hypercall.set_timer_op, TimerOp.set, vcpu=1, timeout=clock.ns + MS)[0] == 0
    xl(Hypercall.domctl, Domctl.destroydomain, domain=7)
    create(7, 1)  # the same domid, fewer vCPUs
    assert hv.next_deadline() is None
    clock.ns += 2 * MS
    assert hv.expire_timers() == []


def test_a_poll_times_out_on_its_own_timer_not_the_vcpus(world):
    hv, clock = world
    a, ga, _ = start(hv, "a")
    ga(Hypercall.set_timer_op, TimerOp.set, vcpu=0, timeout=clock.ns + 50 * MS)
    rc, answer = ga(Hypercall.sched_op, SchedOp.poll, vcpu=0, events=0, ports=[5],
                    timeout=clock.ns + 2 * MS)
    assert rc == 0 and answer["blocked"]
    clock.ns += 2 * MS
    effects = hv.expire_timers()
    assert ("h1/a", True) in runs(effects)  # woken by the poll's timeout ...
    assert not any(isinstance(e, Deliver) for e in effects)  # ... with no VIRQ_TIMER
    assert hv.vcpus.get(a, 0).timer_ns == clock.ns + 48 * MS  # its own timer still armed


def _pair(hv, ga, gb, a, b):
    """An interdomain channel b -> a: (a's port, b's port)."""
    port = ga(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=0x7FF0,
              remote_dom=b)[1]["port"]
    rport = gb(Hypercall.event_channel_op, EvtchnOp.bind_interdomain, remote_dom=a,
               remote_port=port)[1]["local_port"]
    return port, rport


def test_a_poll_on_a_masked_port_wakes_when_it_is_raised_with_no_upcall(world):
    """evtchn_check_pollers: Linux polls masked ports (xen_poll_irq); a masked port raised
    sends no upcall, but wakes the vCPU polling it, and only that one's poller."""
    hv, clock = world
    a, ga, _ = start(hv, "a")
    b, gb, _ = start(hv, "b")
    (p1, r1), (p2, r2) = _pair(hv, ga, gb, a, b), _pair(hv, ga, gb, a, b)
    for p in (p1, p2):
        hv.evtchn.shared_info(a).mask(p)
    assert ga(Hypercall.sched_op, SchedOp.poll, vcpu=0, events=0, ports=[p1],
              timeout=0)[1]["blocked"]
    gb(Hypercall.event_channel_op, EvtchnOp.send, port=r2)  # not the port it polls
    assert hv.vcpus.get(a, 0).blocked and not any(isinstance(e, Deliver) for e in gb.effects)
    gb(Hypercall.event_channel_op, EvtchnOp.send, port=r1)
    assert not any(isinstance(e, Deliver) for e in gb.effects)  # masked: no upcall ...
    assert not hv.vcpus.get(a, 0).blocked  # ... but the poller is woken
    # a poll on several ports wakes on any port raised (Xen keeps no list: poll_evtchn -1)
    hv.evtchn.shared_info(a).clear_pending(p1)
    hv.evtchn.shared_info(a).clear_pending(p2)
    assert ga(Hypercall.sched_op, SchedOp.poll, vcpu=0, events=0, ports=[p1, 7],
              timeout=0)[1]["blocked"]
    gb(Hypercall.event_channel_op, EvtchnOp.send, port=r2)
    assert not hv.vcpus.get(a, 0).blocked


def test_a_poll_wakes_on_an_upcall_for_any_port_as_vcpu_kick_unblocks(world):
    hv, clock = world
    a, ga, _ = start(hv, "a")
    b, gb, _ = start(hv, "b")
    p, r = _pair(hv, ga, gb, a, b)
    assert ga(Hypercall.sched_op, SchedOp.poll, vcpu=0, events=0, ports=[p + 1],
              timeout=0)[1]["blocked"]
    gb(Hypercall.event_channel_op, EvtchnOp.send, port=r)
    assert Deliver("h1/a", a, (p,)) in gb.effects and not hv.vcpus.get(a, 0).blocked
