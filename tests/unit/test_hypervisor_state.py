"""The hypervisor state machine, driven with real msgpack hypercalls and no Ray."""

import msgpack
import pytest

from actors.hypervisor.effects import Deliver, GateVcpus, ReleaseMemory, SizeMemory, WatchVcpu
from actors.hypervisor.state import Hypervisor
from protocols.errno import Errno, XenError
from protocols.hypercall import (DOMID_ANY, DOMID_SELF, Domctl, DomInfoFlag, EvtchnOp, Hypercall,
                                 MemoryOp, SchedOp, ShutdownReason, Sysctl, Virq, XenVersion,
                                 decode_result, dominf_shutdown_code, encode_call)

HANDLE = bytes(range(16))


class Caller:
    def __init__(self, hv, domid, secret, endpoint, pid=0):
        self.hv, self.domid, self.secret, self.endpoint = hv, domid, secret, endpoint
        self.pid = pid  # the calling process, as a same-host pipe names it
        self.effects = []

    def __call__(self, op, subop, **args):
        reply, effects = self.hv.hypercall(self.domid, self.secret, self.endpoint,
                                           encode_call(op, subop, args), self.pid)
        self.effects = effects
        res = decode_result(reply)
        return res.rc, res.result


class Memory:
    """Domain memory as bytearrays: what the actor maps from /dev/shm files."""

    def __init__(self):
        self.pages = {}

    def __call__(self, domid, pfn, count):
        buf = self.pages.setdefault(domid, bytearray(64 * 4096))
        return memoryview(buf)[pfn * 4096:(pfn + count) * 4096]


@pytest.fixture
def hv():
    h = Hypervisor("h1", memory_mib=64, pcpus=2, mem_prefix="/dev/shm/test", frames=Memory())
    h.boot_dom0(memory_mib=16)
    return h


def dom0(hv, endpoint="h1/xl"):
    return Caller(hv, 0, hv.table.domains[0].secret, endpoint)


def create(hv, mib=8):
    xl = dom0(hv)
    rc, res = xl(Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
                 handle=HANDLE, flags=0, max_vcpus=1, max_evtchn_port=1023,
                 max_grant_frames=-1, max_maptrack_frames=-1)
    assert rc == 0
    domid = res["domain"]
    assert xl(Hypercall.domctl, Domctl.max_mem, domain=domid, max_memkb=mib * 1024)[0] == 0
    rc, done = xl(Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=[],
                  nr_extents=mib * 256, extent_order=0, mem_flags=0, domid=domid)
    return domid, res["secret"], rc, xl.effects


def test_hypervisor_12_2_new_domain_is_paused_once_and_gets_memory(hv):
    domid, _, rc, effects = create(hv)
    assert domid == 1 and rc == 8 * 256
    assert effects == [SizeMemory("/dev/shm/test-d1", 8 * 256)]
    info = hv._dominfo(hv.table.domains[domid])
    assert info["flags"] & DomInfoFlag.paused


def test_hypervisor_memory_budget_gives_fewer_extents_when_host_is_full(hv):
    # 64 MiB host, 16 MiB for dom0: a 64 MiB guest gets only what is left.
    _, _, done, _ = create(hv, mib=64)
    assert done == (64 - 16) * 256
    _, _, done2, effects = create(hv, mib=8)
    assert done2 == 0 and effects == []


def test_hypervisor_forged_caller_is_refused(hv):
    domid, secret, _, _ = create(hv)
    forged = Caller(hv, 0, secret, "evil")  # a DomU's secret claiming to be dom0
    assert forged(Hypercall.xen_version, XenVersion.version)[0] == -Errno.EPERM
    assert hv.stats["refused"] == 1


def test_hypervisor_domctl_from_domu_is_eperm(hv):
    domid, secret, _, _ = create(hv)
    guest = Caller(hv, domid, secret, f"h1/dom{domid}")
    assert guest(Hypercall.domctl, Domctl.pausedomain, domain=0)[0] == -Errno.EPERM
    assert guest(Hypercall.sysctl, Sysctl.physinfo)[0] == -Errno.EPERM


def test_hypervisor_pipe_only_for_the_callers_own_endpoint_and_process(hv):
    """A same-host pipe carries a DomU's upcalls: only its own endpoint and vCPU process
    may have one (else it could read another domain's events); Dom0 names its own."""
    domid, secret, _, _ = create(hv)
    xl = dom0(hv)
    assert hv.authorize_hvpipe(domid, secret, f"h1/dom{domid}", 4242) == -Errno.EPERM, \
        "no pipe before the toolstack hands over the vCPU"
    xl(Hypercall.domctl, Domctl.setvcpucontext, domain=domid, vcpu=0,
       ctxt=msgpack.packb({"pid": 4242, "endpoint": f"h1/dom{domid}"}))
    assert hv.authorize_hvpipe(domid, secret, f"h1/dom{domid}", 4242) == 0
    assert hv.authorize_hvpipe(domid, secret, "h1/blkback", 4242) == -Errno.EPERM
    assert hv.authorize_hvpipe(domid, secret, f"h1/dom{domid}", 999) == -Errno.EPERM
    assert hv.authorize_hvpipe(domid, "guess", f"h1/dom{domid}", 4242) == -Errno.EPERM
    assert hv.authorize_hvpipe(0, secret, "h1/blkback", 1) == -Errno.EPERM  # not Dom0's
    assert hv.authorize_hvpipe(0, hv.table.domains[0].secret, "h1/blkback", 1) == 0
    assert hv.authorize_hvpipe(77, secret, "h1/dom77", 1) == -Errno.EPERM


def test_hypervisor_malformed_hypercall_is_einval_and_state_unchanged(hv):
    before = hv.statistics()["domains"]
    for junk in (b"", b"\xc1", b"\x93\x01", msgpack.packb([36, 1, {"domain": "x"}])):
        reply, effects = hv.hypercall(0, hv.table.domains[0].secret, "h1/xl", junk)
        assert decode_result(reply).rc == -Errno.EINVAL and effects == []
    assert hv.statistics()["domains"] == before


def test_hypervisor_null_hypercall_returns_xen_version(hv):
    assert dom0(hv)(Hypercall.xen_version, XenVersion.version) == (0, 4 << 16 | 22)


def test_hypervisor_event_channel_upcall_goes_to_the_binding_endpoint(hv):
    domid, secret, _, _ = create(hv)
    xl = dom0(hv)
    xl(Hypercall.domctl, Domctl.setvcpucontext, domain=domid, vcpu=0,
       ctxt=msgpack.packb({"pid": 4242, "endpoint": "h1/dom1"}))
    assert xl.effects == [WatchVcpu(domid, 4242, "h1/dom1")]
    guest = Caller(hv, domid, secret, "ignored-for-domu")
    rc, res = guest(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=DOMID_SELF,
                    remote_dom=0)
    port = res["port"]
    console = dom0(hv, "h1/xenconsoled")
    rc, res = console(Hypercall.event_channel_op, EvtchnOp.bind_interdomain, remote_dom=domid,
                      remote_port=port)
    local = res["local_port"]
    assert console.effects == [Deliver("h1/xenconsoled", 0, (local,))]  # always pending
    guest(Hypercall.event_channel_op, EvtchnOp.send, port=port)
    assert guest.effects == [Deliver("h1/xenconsoled", 0, (local,))]
    console(Hypercall.event_channel_op, EvtchnOp.send, port=local)
    assert console.effects == [Deliver("h1/dom1", domid, (port,))]


def test_hypervisor_12_2_first_shutdown_code_sticks_and_dom_exc_reaches_xenstored(hv):
    domid, secret, _, _ = create(hv)
    xs = dom0(hv, "h1/xenstored")
    rc, res = xs(Hypercall.event_channel_op, EvtchnOp.bind_virq, virq=Virq.DOM_EXC, vcpu=0)
    guest = Caller(hv, domid, secret, "h1/dom1")
    guest(Hypercall.sched_op, SchedOp.shutdown, reason=ShutdownReason.reboot)
    assert Deliver("h1/xenstored", 0, (res["port"],)) in guest.effects
    guest(Hypercall.sched_op, SchedOp.shutdown, reason=ShutdownReason.crash)
    flags = hv._dominfo(hv.table.domains[domid])["flags"]
    assert flags & DomInfoFlag.shutdown
    assert dominf_shutdown_code(flags) == ShutdownReason.reboot


def test_hypervisor_vcpu_process_death_is_a_crash(hv):
    domid, _, _, _ = create(hv)
    hv.vcpu_exited(domid)
    flags = hv._dominfo(hv.table.domains[domid])["flags"]
    assert dominf_shutdown_code(flags) == ShutdownReason.crash


def test_hypervisor_destroy_releases_memory_and_unbinds_peers(hv):
    domid, secret, _, _ = create(hv)
    guest = Caller(hv, domid, secret, "h1/dom1")
    _, res = guest(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=DOMID_SELF,
                   remote_dom=0)
    xl = dom0(hv)
    _, b = xl(Hypercall.event_channel_op, EvtchnOp.bind_interdomain, remote_dom=domid,
              remote_port=res["port"])
    xl(Hypercall.domctl, Domctl.destroydomain, domain=domid)
    assert ReleaseMemory("/dev/shm/test-d1") in xl.effects
    _, st = xl(Hypercall.event_channel_op, EvtchnOp.status, dom=0, port=b["local_port"])
    assert st["status"] == 1  # EVTCHNSTAT_unbound
    assert xl(Hypercall.domctl, Domctl.getdomaininfo, domain=domid)[0] == -Errno.ESRCH


def test_hypervisor_pause_gates_the_domain_vcpus(hv):
    domid, _, _, _ = create(hv)
    xl = dom0(hv)
    xl(Hypercall.domctl, Domctl.setvcpucontext, domain=domid, vcpu=0,
       ctxt=msgpack.packb({"pid": 1, "endpoint": "h1/dom1"}))
    xl(Hypercall.domctl, Domctl.unpausedomain, domain=domid)
    assert xl.effects[0] == GateVcpus("h1/dom1", False, 1)  # then the scheduler runs it
    xl(Hypercall.domctl, Domctl.pausedomain, domain=domid)
    assert xl.effects[0] == GateVcpus("h1/dom1", True, 3)  # gates are ordered by seq
    assert xl(Hypercall.domctl, Domctl.unpausedomain, domain=domid)[0] == 0
    assert xl(Hypercall.domctl, Domctl.unpausedomain, domain=domid)[0] == -Errno.EINVAL


def _grant(hv, domid, ref, grantee, frame, readonly=False):
    from protocols.gnttab import GrantTable
    from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES

    mem = hv.grants._frames(domid, GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES)
    GrantTable(mem).grant_access(ref, grantee, frame, readonly=readonly)


def _map(caller, dom, ref, flags=2):
    from protocols.hypercall import GnttabOp

    rc, res = caller(Hypercall.grant_table_op, GnttabOp.map_grant_ref,
                     ops=[{"host_addr": 0, "flags": flags, "ref": ref, "dom": dom}])
    assert rc == 0  # batches return 0; the element carries the status
    return res[0]


def test_hypervisor_6_2_map_gives_the_mapper_exactly_the_granted_page(hv):
    domid, secret, _, _ = create(hv)
    _grant(hv, domid, 8, 0, 20)
    got = _map(dom0(hv), domid, 8)
    assert got["status"] == 0 and got["dev_bus_addr"] == 20 << 12
    assert got["path"] == "/dev/shm/test-d1"


def test_hypervisor_6_2_map_of_a_ref_not_granted_to_the_mapper_fails(hv):
    d1, s1, _, _ = create(hv, mib=4)
    d2, s2, _, _ = create(hv, mib=4)
    _grant(hv, d1, 8, 0, 20)  # granted to dom0, not to d2
    other = Caller(hv, d2, s2, "h1/dom2")
    assert _map(other, d1, 8)["status"] == -1  # GNTST_general_error
    assert _map(other, d1, 5000)["status"] == -3  # GNTST_bad_gntref


def test_hypervisor_6_2_destroyed_granter_stays_a_zombie_while_mapped(hv):
    from protocols.hypercall import GnttabOp

    domid, _, _, _ = create(hv)
    _grant(hv, domid, 8, 0, 20)
    xl = dom0(hv)
    handle = _map(xl, domid, 8)["handle"]
    xl(Hypercall.domctl, Domctl.destroydomain, domain=domid)
    assert ReleaseMemory("/dev/shm/test-d1") not in xl.effects
    _, infos = xl(Hypercall.sysctl, Sysctl.getdomaininfolist, first_domain=1, max_domains=10)
    assert [i["flags"] & DomInfoFlag.dying for i in infos] == [DomInfoFlag.dying]
    xl(Hypercall.grant_table_op, GnttabOp.unmap_grant_ref,
       ops=[{"host_addr": 0, "dev_bus_addr": 0, "handle": handle}])
    assert ReleaseMemory("/dev/shm/test-d1") in xl.effects
    assert xl(Hypercall.sysctl, Sysctl.getdomaininfolist, first_domain=1, max_domains=10)[1] == []


def test_memory_pressure_takes_free_memory_so_populate_gets_less_and_gives_it_back():
    """A memory-pressure fault: the host's free memory shrinks; give-back restores it."""
    from actors.hypervisor.domains import DomainTable

    table = DomainTable(host_pages=1000)
    dom = table.create(max_vcpus=1)
    table.set_max_pages(dom.domid, 1000)
    assert table.press(900) == 900 and table.host_free_pages == 100
    assert table.populate(dom.domid, 300) == 100, "only what the pressure left"
    assert table.press(5000) == 900, "at most what is free (the domain's pages are not)"
    assert table.press(0) == 0 and table.host_free_pages == 900
    with pytest.raises(XenError):
        table.press(-1)


def test_a_dead_dom0_process_s_maps_and_ports_are_released_and_only_its_own(hv):
    """gntdev_release/evtchn_release: a killed backend (pid 7) leaves no map keeping a
    destroyed domain a zombie and no port bound; its restarted self (pid 8) keeps what it
    took meanwhile, even the same port number and maptrack handle reused."""
    domid, _, _, _ = create(hv)
    _grant(hv, domid, 8, 0, 20)
    _grant(hv, domid, 9, 0, 21)
    old = Caller(hv, 0, hv.table.domains[0].secret, "h1/blkback", pid=7)
    new = Caller(hv, 0, hv.table.domains[0].secret, "h1/blkback", pid=8)
    old_map = _map(old, domid, 8)["handle"]
    rc, res = old(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=DOMID_SELF,
                  remote_dom=domid)
    old_port = res["port"]
    assert new(Hypercall.event_channel_op, EvtchnOp.close, port=old_port)[0] == 0  # stale
    rc, res = new(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=DOMID_SELF,
                  remote_dom=domid)
    assert res["port"] == old_port, "the restarted backend got the same port number back"
    new_map = _map(new, domid, 9)["handle"]
    hv.process_exited(7)
    assert hv.grants.mappings(0) == [(domid, 9, 2)] and new_map != old_map
    assert hv.evtchn.status(0, DOMID_SELF, old_port).status != 0, "pid 8's port stays bound"
    hv.process_exited(8)
    assert hv.grants.mappings(0) == []
    dom0(hv)(Hypercall.domctl, Domctl.destroydomain, domain=domid)
    assert domid not in hv.table.domains and not hv.zombies, "no map kept it a zombie"


@pytest.mark.parametrize("domid, secret", [([0], "x"), (0, None), (0, 7), ("0", "x"),
                                           (True, "x")])
def test_hypervisor_a_credential_of_the_wrong_type_is_eperm(hv, domid, secret):
    reply, effects = hv.hypercall(domid, secret, "h1/dom9", b"\x93\x11\x00\x80")
    assert decode_result(reply).rc == -Errno.EPERM and effects == []
