"""``xenray audit``'s comparison (cluster.audit.find_leaks) on views read from a real
in-process host: the hypervisor shell's ``audit`` (and its domains' files in /dev/shm), the
store of its xenstored. Domains are built and destroyed with the toolstack's own steps
(``actors.toolstack.builder``); each leak is planted as a buggy or killed part would leave
it, found, then cleaned up and no longer found. The toolstack's records, xenconsoled's
consoles and the backends' devices are given as the rows those parts answer."""

import uuid

import pytest

from actors import memory
from actors.toolstack import builder
from actors.xenstored.unix_socket import UnixSocketServer
from cluster.audit import HostView, Leak, find_leaks, xenstore_dirs
from cluster.xlcfg import parse_config
from cluster.xs_socket import XsSocket
from protocols.errno import Errno, XenError
from protocols.gnttab import GNTMAP, GrantTable
from protocols.hypercall import EvtchnOp, GnttabOp, Hypercall
from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES
from tests.inprocess import HOST

NO_DEVICES = {"blkback": [], "netback": []}


def build(host, name):
    cfg = parse_config(f'name = "{name}"\nmemory = 16\n')[0]
    return host.build(cfg)


def destroy(host, built):
    """libxl's destroy: destroydomain, its xenstore directories, xenstored's connection."""
    builder.destroy_domain(host.xl, host.xs, built.domid)
    host.release(built.domid)


def leaks(host, names, consoles=(), devices=NO_DEVICES):
    view = HostView(names, host.hypervisor.on_audit(), xenstore_dirs(host.xs), list(consoles),
                    devices)
    return find_leaks(HOST, view)


def kinds(found):
    return [(leak.kind, leak.what) for leak in found]


def test_audit_domains_built_and_destroyed_cleanly_leave_nothing(host):
    a, b = build(host, "a"), build(host, "b")
    assert leaks(host, {"a": a.domid, "b": b.domid}) == []
    destroy(host, a)
    assert leaks(host, {"b": b.domid}) == []
    destroy(host, b)
    assert leaks(host, {}) == []


def test_audit_finds_stray_files_of_a_gone_domain_in_dev_shm(host):
    """Its memory file, and the toolstack's record beside it (``<memory>.libxl-json``); a
    live domain's are no leak, nor is a file of the host's that names no domain."""
    live = build(host, "live")
    beside = f"{live.memory_path}.libxl-json"
    stray = [host.memory_path(77), f"{host.memory_path(77)}.libxl-json"]
    for path in (beside, *stray, f"{host.memory_path(77)}x"):
        memory.create(path, 1)
    try:
        assert kinds(leaks(host, {"live": live.domid})) == sorted(
            ("shm-file", f"{path}: domain 77 is gone") for path in stray)
    finally:
        for path in (beside, *stray, f"{host.memory_path(77)}x"):
            memory.remove(path)
    assert leaks(host, {"live": live.domid}) == []


def test_audit_finds_each_xenstore_directory_of_a_gone_domain(host):
    gone = build(host, "gone")
    vm = host.xs.read_str(f"/local/domain/{gone.domid}/vm")
    builder.destroy_domain(host.xl, host.xs, gone.domid)
    host.release(gone.domid)
    planted = [f"/local/domain/{gone.domid}", f"/libxl/{gone.domid}", vm,
               f"/local/domain/0/backend/vbd/{gone.domid}"]
    for path in planted:  # as a toolstack killed half way through its destroy leaves them
        host.xs.write(f"{path}/x", "1")
    assert sorted(kinds(leaks(host, {}))) == sorted(("xenstore", p) for p in planted)
    for path in planted:
        host.xs.rm(path)
    assert leaks(host, {}) == []


def test_audit_finds_dom0s_event_channel_to_a_gone_domain(host):
    """A daemon that dies before it closes its port: the port stays, UNBOUND, in Dom0."""
    guest = build(host, "guest")
    local = host.xl(Hypercall.event_channel_op, EvtchnOp.bind_interdomain,
                    remote_dom=guest.domid, remote_port=guest.console_port)["local_port"]
    destroy(host, guest)
    assert kinds(leaks(host, {})) == [
        ("evtchn", f"domain 0 port {local} (h1/xl) is unbound, its peer domain "
                   f"{guest.domid} is gone")]
    host.xl(Hypercall.event_channel_op, EvtchnOp.close, port=local)
    assert leaks(host, {}) == []


def test_audit_finds_a_grant_map_that_keeps_a_destroyed_domain_a_zombie(host):
    guest = build(host, "granter")
    mem = memory.Mapping(guest.memory_path)
    try:
        table = GrantTable(mem.pages(GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES))
        for gref, frame in ((20, 30), (21, 31), (22, 32), (25, 35)):
            table.grant_access(gref, 0, frame)
        table.release()
    finally:
        mem.close()
    handles = [host.xl(Hypercall.grant_table_op, GnttabOp.map_grant_ref, ops=[
        {"host_addr": 0, "flags": int(GNTMAP.host_map), "ref": gref, "dom": guest.domid}])[0]
        ["handle"] for gref in (20, 21, 22, 25)]
    destroy(host, guest)  # a backend killed while it mapped them never unmaps them
    assert kinds(leaks(host, {})) == [
        ("grant-map", f"domain 0 maps 4 grant(s) of destroyed domain {guest.domid}, now a "
                      f"zombie (gref 20-22,25)")]
    host.xl(Hypercall.grant_table_op, GnttabOp.unmap_grant_ref,
            ops=[{"host_addr": 0, "dev_bus_addr": 0, "handle": h} for h in handles])
    assert leaks(host, {}) == []  # the zombie went with its last map, and its memory file


def test_audit_compares_the_toolstack_xenconsoled_and_backends_with_the_hypervisor(host):
    live, gone = build(host, "live"), 42
    assert kinds(leaks(host, {})) == [
        ("domain", f"domain {live.domid} (4096 pages) has no toolstack record")]
    consoles = [{"domid": live.domid, "name": "live"}, {"domid": gone, "name": "old"}]
    devices = {"blkback": [{"domid": gone, "devid": 51712}],
               "netback": [{"domid": live.domid, "devid": 0}, {"domid": gone, "devid": 1}]}
    assert kinds(leaks(host, {"live": live.domid, "old": gone, "building": None}, consoles,
                       devices)) == sorted([
        ("console", f"xenconsoled serves the console of domain {gone} ('old'), which is gone"),
        ("device", f"blkback holds vbd 51712 of domain {gone}, which is gone"),
        ("device", f"netback holds vif 1 of domain {gone}, which is gone"),
        ("record", f"the toolstack's record 'old' names domain {gone}, which the hypervisor "
                   "does not have")])


def test_audit_leak_reads_as_one_line():
    leak = Leak("h1", "xenstore", "/local/domain/7")
    assert str(leak) == "h1  xenstore    /local/domain/7"


def test_audit_lists_a_directory_longer_than_one_xenstore_reply(host, tmp_path):
    """``/vm`` of a host with 150 domains is 5.5 KiB of names: a plain XS_DIRECTORY reply
    cannot carry it (E2BIG); XS_DIRECTORY_PART, chunk by chunk, does."""
    uuids = sorted(str(uuid.uuid4()) for _ in range(150))
    for u in uuids:
        host.xs.write(f"/vm/{u}/name", "x")
    server = UnixSocketServer(host.xenstored.server, tmp_path / "xs.sock").start()
    try:
        with XsSocket(tmp_path / "xs.sock") as xs:
            assert sorted(xs.directory("/vm")) == uuids
            with pytest.raises(XenError) as missing:
                xs.directory("/nonexistent")
        assert missing.value.errno == Errno.ENOENT
        with pytest.raises(XenError) as too_big:
            host.xs.directory("/vm")
        assert too_big.value.errno == Errno.E2BIG
    finally:
        server.stop()


def test_audit_finds_a_fork_server_process_that_runs_no_live_domain(host):
    """A process of the fork server is a leak unless a live domain runs in it: the
    hypervisor's vCPU pid of a destroyed domain, or a pid no domain has, is none."""
    live, gone = build(host, "live"), build(host, "gone")
    destroy(host, gone)
    view = HostView({"live": live.domid}, host.hypervisor.on_audit(), xenstore_dirs(host.xs),
                    [], NO_DEVICES, processes={"vm-1": 101, "vm-2": 102, "vm-3": 103},
                    vcpu_pids={live.domid: 101, gone.domid: 102})
    assert kinds(find_leaks(HOST, view)) == [
        ("process", "the fork server's process vm-2 (pid 102) runs no domain"),
        ("process", "the fork server's process vm-3 (pid 103) runs no domain")]
