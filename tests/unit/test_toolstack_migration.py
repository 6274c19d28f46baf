"""xl save, restore and migrate (actors.toolstack.migration) on the in-process host, without
Ray: the real toolstack shell, hypervisor (log-dirty included), xenstored, xenconsoled and guest
kernels. A migration here is xl's "localhost migration": sender and receiver are the same
agent, which is what ``xl migrate dom localhost`` does. What Ray adds (two hosts, the object
store) is in tests/integration/test_migration.py."""

import os
import re
import struct

import pytest

from actors.transport import PeerGone
from protocols.errno import Errno, XenError
from protocols.libxl_types import DomainConfig
from protocols.migration import savefile
from tests.inprocess import HOST, XL
from tests.xen_tools import verify_stream_v2

CONSOLED = f"{HOST}/xenconsoled"
COUNT = re.compile(r"^counter (\d+)$")


@pytest.fixture
def host(xl_host):
    return xl_host


def create(host, name, cmdline, memory=8):
    cfg = DomainConfig(name=name, memory=memory, maxmem=memory, cmdline=cmdline)
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
