"""xl save, restore and migrate (actors.toolstack.migration) on the in-process host, without
Ray: the real toolstack shell, hypervisor (log-dirty included), xenstored, xenconsoled and guest
kernels. A migration here is xl's "localhost migration": sender and receiver are the same
agent, which is what ``xl migrate dom localhost`` does. What Ray adds (two hosts, the object
store) is in tests/integration/test_migration.py."""

import os
import re
import struct

import pytest

from actors.memory import Mapping
from actors.transport import PeerGone
from protocols.errno import Errno, XenError
from protocols.hypercall import Domctl, Hypercall, MemoryOp
from protocols.libxl_types import DomainConfig
from protocols.migration import savefile
from protocols.page import PAGE_SIZE, PAGES_PER_MIB
from protocols.xenstore.paths import domain_path
from tests.inprocess import HOST, XL
from tests.xen_tools import verify_stream_v2

CONSOLED = f"{HOST}/xenconsoled"
COUNT = re.compile(r"^counter (\d+)$")


@pytest.fixture
def host(xl_host):
    return xl_host


def create(host, name, cmdline, memory=8, **more):
    cfg = DomainConfig(name=name, memory=memory, maxmem=more.pop("maxmem", memory),
                       cmdline=cmdline, **more)
    return host.call(XL, "create", cfg.to_dict())


def counts(host, name):
    lines = host.call(CONSOLED, "tail", name, 100_000)
    return [int(m.group(1)) for line in lines if (m := COUNT.match(line.strip()))]


def wait_counts(host, name, n, after=0):
    return host.until(lambda: len([c for c in counts(host, name) if c > after]) >= n and
                      counts(host, name), f"{name} to count {n} past {after}", timeout=30)


def domids(host):
    return sorted(host.hypervisor.state.table.domains)


def test_xl_save_then_restore_continues_the_counter_with_the_next_number(host, tmp_path,
                                                                      xen_tools):
    create(host, "c", "init=counter interval=0.01")
    wait_counts(host, "c", 3)
    path = tmp_path / "c.save"
    info = host.call(XL, "save", "c", str(path), False)
    assert info["bytes"] == os.path.getsize(path) and info["rounds"][0]["live"] is False
    assert "c" not in host.toolstack.core.records and domids(host) == [0]
    before = counts(host, "c")
    with open(path, "rb") as f:
        header = savefile.decode(f.read(64 << 10))
    assert header.json and b'"name": "c"' in header.config
    judged = verify_stream_v2(xen_tools, path.read_bytes(), "xl", tmp_path)
    assert judged.returncode == 0, judged.stdout + judged.stderr
    restored = host.call(XL, "restore", str(path), False)
    after = wait_counts(host, "c", 3, after=before[-1])
    new = [c for c in after if c > before[-1]]
    assert new[0] == before[-1] + 1 and new == list(range(new[0], new[0] + len(new)))
    assert restored["domid"] != info.get("domid")


def test_xl_save_checkpoint_leaves_the_domain_running_in_place(host, tmp_path):
    made = create(host, "k", "init=counter interval=0.01")
    wait_counts(host, "k", 2)
    host.call(XL, "save", "k", str(tmp_path / "k.save"), True)
    last = counts(host, "k")[-1]
    wait_counts(host, "k", 3, after=last)
    assert host.toolstack.core.records["k"].domid == made["domid"]
    assert host.call(XL, "list")[-1]["state"][3] == "-"  # not shut down: resumed


def test_localhost_live_migration_moves_the_domain_and_reports_rounds(host):
    made = create(host, "m", "init=counter interval=0.01")
    wait_counts(host, "m", 3)
    report = host.call(XL, "migrate", "m", HOST, {"debug": True})
    assert report["verify_mismatches"] == 0
    assert report["rounds"][0]["pages_sent"] == 8 * 256
    assert report["rounds"][-1]["live"] is False and report["downtime_ms"] > 0
    rec = host.toolstack.core.records["m"]
    assert rec.domid == report["domid"] != made["domid"]
    assert sorted(host.toolstack.core.records) == ["m"] and domids(host) == [0, rec.domid]


@pytest.mark.parametrize("damage", ["truncated", "oversized batch", "not a save file"])
def test_xl_restore_refuses_a_broken_file_and_leaves_nothing_behind(host, tmp_path, damage):
    create(host, "b", "init=idle")
    good = tmp_path / "good.save"
    host.call(XL, "save", "b", str(good), False)
    data = good.read_bytes()
    if damage == "truncated":
        data = data[:len(data) * 2 // 3]
    elif damage == "oversized batch":
        at = data.index(struct.pack("<II", 1, 8 + 1024 * 8 + 1024 * 4096))
        data = data[:at + 8] + struct.pack("<I", 5000) + data[at + 12:]
    else:
        data = b"GIF89a" + data[6:]
    bad = tmp_path / "bad.save"
    bad.write_bytes(data)
    with pytest.raises(XenError) as e:
        host.call(XL, "restore", str(bad), False)
    assert e.value.errno == Errno.EINVAL
    assert domids(host) == [0] and "b" not in host.toolstack.core.records
    assert host.call("cluster/registry", "lookup", "b") is None


def test_a_domain_being_migrated_cannot_be_destroyed_or_migrated_again(host):
    create(host, "busy", "init=idle")
    rec = host.toolstack.core.begin_migrate("busy")
    try:
        for call in (("destroy", "busy"), ("migrate", "busy", HOST, {}),
                     ("save", "busy", "/nonexistent/x", False)):
            with pytest.raises(XenError) as e:
                host.call(XL, *call)
            assert e.value.errno == Errno.EBUSY
    finally:
        host.toolstack.core.migrate_cancelled(rec)


def test_bad_migrate_options_are_refused_before_anything_happens(host):
    create(host, "o", "init=idle")
    with pytest.raises(XenError, match="unknown precopy policy"):
        host.call(XL, "migrate", "o", HOST, {"policy": "fast"})
    with pytest.raises(XenError, match="unknown migrate options"):
        host.call(XL, "migrate", "o", HOST, {"speed": 1})
    assert host.toolstack.core.records["o"].phase.value == "running"


def test_a_blkverify_guest_migrated_mid_stream_verifies_every_block(host, tmp_path):
    from actors.blkback.actor import BlkbackShell
    from actors.blkback.vbd import create_image
    from actors.guest.blk import verify_block
    from protocols.libxl_types import DiskSpec

    blkback = f"{HOST}/blkback"
    host.start(blkback, BlkbackShell(HOST, host.clients(blkback), host.log))
    image = tmp_path / "d.img"
    create_image(image, 8 << 20)
    cfg = DomainConfig(name="v", memory=8, maxmem=8,
                       cmdline="init=blkverify blocks=1024 iodepth=4 seed=5",
                       disk=(DiskSpec("xvda", 51712, str(image)),))
    host.call(XL, "create", cfg.to_dict())
    host.until(lambda: host.call(CONSOLED, "tail", "v", 5), "v to print")
    report = host.call(XL, "migrate", "v", HOST, {})
    assert report["rounds"]
    result = host.until(lambda: next((line for line in host.call(CONSOLED, "tail", "v", 50)
                                      if line.startswith("RESULT")), None),
                        "blkverify's result", timeout=60)
    assert '"bad": []' in result and '"verified": 1024' in result
    with open(image, "rb") as f:
        assert all(f.read(4096) == verify_block(5, i, 4096) for i in range(1024))


@pytest.mark.parametrize("stream", [b"\xff" * 64, b"", b"LibxlFmt" + bytes(100)])
def test_a_hostile_migration_stream_is_refused_and_the_receiver_leaves_nothing(host, stream):
    """The receiver's side of xl migrate, driven by a hostile sender: whatever it sends,
    the receiver says why in one line and destroys what it built."""
    before = domids(host)
    cfg = DomainConfig(name="evil", memory=8, maxmem=8, cmdline="init=idle")
    host.call(XL, "migrate_receive", "s1", "evil", cfg.to_dict())
    if stream:
        host.call(XL, "migrate_chunk", "s1", 0, stream)
    host.call(XL, "migrate_end", "s1", 1 if stream else 0)
    with pytest.raises(XenError) as e:
        host.call(XL, "migrate_received", "s1")
    assert e.value.errno == Errno.EINVAL and len(str(e.value).splitlines()) == 1
    host.until(lambda: domids(host) == before, "the incoming domain to be destroyed")
    assert "evil--incoming" not in host.toolstack.core.records
    assert host.call("cluster/registry", "lookup", "evil--incoming") is None
    with pytest.raises(XenError) as e:  # and the session is gone
        host.call(XL, "migrate_go", "s1")
    assert e.value.errno == Errno.ESRCH


@pytest.mark.parametrize("dies_at", ["migrate_chunk", "migrate_received"])
def test_a_receiver_that_dies_mid_migration_leaves_the_domain_running_where_it_was(host,
                                                                                 dies_at):
    """The receiving agent (here a stand-in for "h2/xl" in front of the real shell) dies in
    round 0, or after the domain was suspended and the stream sent: the sender gets the
    domain back (its suspend cancelled) and it counts on, under its own name."""
    made = create(host, "d", "init=counter interval=0.01")
    wait_counts(host, "d", 3)
    real = host.toolstack.deliver

    def dying(kind):
        def handler(*args):
            if kind == dies_at and (kind != "migrate_chunk" or args[1] >= 1):
                host.endpoints.pop("h2/xl", None)
                raise PeerGone("h2/xl")
            return real(kind, *args)
        return handler

    host.start("h2/xl", {kind: dying(kind) for kind in (
        "migrate_receive", "migrate_prepared", "migrate_chunk", "migrate_end",
        "migrate_received", "migrate_go", "migrate_runs", "migrate_abort")})
    with pytest.raises(XenError) as e:
        host.call(XL, "migrate", "d", "h2", {})
    assert "migration to h2 failed" in str(e.value) and "d runs on h1" in str(e.value)
    rec = host.toolstack.core.records["d"]
    assert rec.domid == made["domid"] and rec.phase.value == "running"
    assert host.call("cluster/registry", "lookup", "d")["domid"] == made["domid"]
    last = counts(host, "d")[-1]
    wait_counts(host, "d", 3, after=last)  # resumed in place
    for session in list(host.toolstack._incoming):  # what the receiver's restart would undo
        host.toolstack.on_migrate_abort(session)
    assert domids(host) == [0, made["domid"]]


# -- a ballooned domain: its holes, its pages above memory=, its target and vCPUs ----------

HOLES = range(1024, 1024 + 256)  # 4..5 MiB: below the init's memory, above the drivers' pages
ABOVE = range(10 * PAGES_PER_MIB, 10 * PAGES_PER_MIB + 256)  # above memory=8, below maxmem


def reservation(host, op, domid, pfns):
    return host.toolstack.hv(Hypercall.memory_op, op, extent_start=list(pfns),
                             nr_extents=len(pfns), extent_order=0, mem_flags=0, domid=domid)


def pattern(pfn):
    return struct.pack("<QQ", pfn, 0xB411007) * (PAGE_SIZE // 16)


def pages_of(host, domid, pfns):
    mapping = Mapping(host.memory_path(domid), 0, pfns[-1] + 1)
    try:
        return [bytes(mapping.page(pfn)) for pfn in pfns]
    finally:
        mapping.close()


def balloon_by_hand(host, domid):
    """What a balloon driver does, from Dom0: give back HOLES, take ABOVE (tot_pages stays
    8 MiB), and write a pattern there."""
    assert reservation(host, MemoryOp.decrease_reservation, domid, HOLES) == len(HOLES)
    assert reservation(host, MemoryOp.populate_physmap, domid, ABOVE) == len(ABOVE)
    mapping = Mapping(host.memory_path(domid), 0, ABOVE[-1] + 1)
    try:
        for pfn in ABOVE:
            mapping.page(pfn)[:] = pattern(pfn)
    finally:
        mapping.close()


@pytest.mark.parametrize("how", ["save", "migrate"])
def test_a_ballooned_domain_comes_back_with_its_holes_pages_above_memory_target_and_vcpus(
        host, tmp_path, xen_tools, how):
    """xl keeps what mem-set, mem-max and vcpu-set changed (libxl_retrieve_domain_
    configuration), the stream carries the pages above memory= and the holes as XTAB, and
    the new domain holds exactly the source's pages."""
    made = create(host, "bal", "init=counter interval=0.01", maxmem=16, vcpus=3, maxvcpus=3)
    wait_counts(host, "bal", 2)
    balloon_by_hand(host, made["domid"])
    host.call(XL, "mem_max", "bal", 12 * 1024)
    host.call(XL, "vcpu_set", "bal", 2)
    # libxl_set_vcpuonline with the bitmap {0, 2}: a gap that a count cannot carry
    for n, value in ((1, "offline"), (2, "online")):
        host.toolstack.xs.write(f"{domain_path(made['domid'])}/cpu/{n}/availability", value)
    table = host.hypervisor.state.table
    tot_pages = table.get(made["domid"]).tot_pages
    free = table.host_free_pages
    before = counts(host, "bal")
    if how == "save":
        path = tmp_path / "bal.save"
        host.call(XL, "save", "bal", str(path), False)
        judged = verify_stream_v2(xen_tools, path.read_bytes(), "xl", tmp_path)
        assert judged.returncode == 0, judged.stdout + judged.stderr
        domid = host.call(XL, "restore", str(path), False)["domid"]
    else:
        domid = host.call(XL, "migrate", "bal", HOST, {})["domid"]
    wait_counts(host, "bal", 2, after=before[-1])
    p2m = table.get(domid).p2m
    assert not any(pfn in p2m for pfn in HOLES) and all(pfn in p2m for pfn in ABOVE)
    assert pages_of(host, domid, ABOVE) == [pattern(pfn) for pfn in ABOVE]
    assert table.get(domid).tot_pages == tot_pages and table.host_free_pages == free
    dom = domain_path(domid)
    xs = host.toolstack.xs
    assert xs.read_str(f"{dom}/memory/target") == str(8 * 1024)
    assert xs.read_str(f"{dom}/memory/static-max") == str(12 * 1024)
    assert [xs.read_str(f"{dom}/cpu/{n}/availability") for n in (0, 1, 2)] == [
        "online", "offline", "online"]


def _restore_target(host, name="target", memory=8, maxmem=8):
    """A domain ready for a restore (``prepare_restore``), and its restorer."""
    from actors.toolstack import builder
    from actors.toolstack.restore import DomainRestorer
    from protocols.pv_layout import PFN_FIRST_FREE

    cfg = DomainConfig(name=name, memory=memory, maxmem=maxmem)
    domid = builder.create_domain(host.toolstack.hv, cfg)[0]
    path = builder.prepare_restore(host.toolstack.hv, domid, cfg, name)
    return domid, DomainRestorer(host.toolstack.hv, domid, path, maxmem * PAGES_PER_MIB, 1,
                                 populated=range(PFN_FIRST_FREE))


def _stream(p2m_pfns, *batches):
    """libxl's stream around libxc's, of a ``p2m_pfns`` domain; each batch ``(pfns, types)``
    carries a page for each pfn whose type has one."""
    from protocols.migration import libxc as xc
    from protocols.migration import libxl as xl
    from protocols.migration.vcpu import VGCF_IN_KERNEL, VGCF_ONLINE, VcpuContext

    recs = [xc.stream_start(), xc.x86_pv_info(), xc.static_data_end(),
            xc.x86_pv_p2m_frames(p2m_pfns - 1, [0] * xc.p2m_frame_count(0, p2m_pfns - 1))]
    for pfns, types in batches:
        data = b"".join(pattern(p) for p, t in zip(pfns, types) if xc.page_type_has_data(t))
        recs.append(xc.page_data(pfns, data, types))
    recs += [xc.x86_tsc_info(), xc.shared_info(bytes(PAGE_SIZE)),
             xc.x86_pv_vcpu_basic(0, VcpuContext(flags=VGCF_ONLINE | VGCF_IN_KERNEL)), xc.end()]
    return xl.wrap(b"".join(recs))


def _chunks(data):
    chunks = iter([data, b""])
    return lambda: next(chunks)


def test_a_restore_populates_pages_with_data_and_gives_back_an_xtab_one(host):
    """A later round's XTAB (the balloon gave the page back meanwhile) leaves a hole."""
    from protocols.migration.libxc import PageType

    domid, restorer = _restore_target(host)
    dom = host.hypervisor.state.table.get(domid)
    pfns = [16, 17, 18, 2047]
    out = restorer.run(_chunks(_stream(2048, (pfns, [0] * 4),
                                       ([17, 100], [PageType.XTAB, PageType.XTAB]))))
    assert out["pages"] == 4 and out["p2m_size"] == 2048
    assert [p in dom.p2m for p in (16, 17, 18, 100, 2047)] == [True, False, True, False, True]
    assert dom.tot_pages == 16 + 3
    assert pages_of(host, domid, [16, 18, 2047]) == [pattern(p) for p in (16, 18, 2047)]


@pytest.mark.parametrize("case", ["pfn beyond the p2m", "p2m beyond the address space",
                                  "more pages than max_mem"])
def test_a_hostile_stream_gets_xens_error_and_never_touches_another_domain(host, case):
    other = create(host, "other", "init=idle")
    odom = host.hypervisor.state.table.get(other["domid"])
    other_pages, other_tot = pages_of(host, other["domid"], range(2048)), odom.tot_pages
    domid, restorer = _restore_target(host, memory=4, maxmem=8)
    host.toolstack.hv(Hypercall.domctl, Domctl.max_mem, domain=domid, max_memkb=64 * 4)
    stream, errno = {
        "pfn beyond the p2m": (_stream(1024, ([1024], [0])), Errno.EINVAL),
        "p2m beyond the address space": (_stream(2049, ([16], [0])), Errno.EINVAL),
        "more pages than max_mem": (_stream(1024, (list(range(16, 80)), [0] * 64)),
                                    Errno.ENOMEM),
    }[case]
    with pytest.raises(XenError) as e:
        restorer.run(_chunks(stream))
    assert e.value.errno == errno
    assert pages_of(host, other["domid"], range(2048)) == other_pages
    assert odom.tot_pages == other_tot
    assert host.hypervisor.state.table.get(domid).tot_pages <= 64
