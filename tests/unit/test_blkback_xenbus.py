"""blkback's control path (actors.blkback.xenbus on actors/xenbus/) against real peers,
in-process.

Reference 8.3 (keys), 8.4 (handshake), 10 (life-cycle), 19.2 (hostile ring), 19.4/19.6
(restart and reconnect). Everything is the real thing: the ``host`` fixture's hypervisor and
xenstored shells, blkback's own shell (``BlkbackShell``, as the Ray actor runs it) and, as
the guest, the kernel's block driver (``actors.domain.blkdev`` / ``Blkfront``). The test pumps
the one-way messages (upcalls, watch events), as the actors' mailboxes would deliver them.
"""

import itertools
import os
import random

import pytest

from actors import memory
from actors.blkback.actor import BlkbackShell
from actors.blkback.vbd import create_image
from actors.domain.blkdev import BlockDevices
from actors.xenbus.backend_events import BackendChanged, OtherendChanged
from protocols import blkif
from protocols.blkif import SECTOR_SIZE, VDISK_READONLY, devid_to_vdev
from protocols.evtchn import EvtchnStat
from protocols.hypercall import EvtchnOp, Hypercall
from protocols.libxl_types import DiskSpec, DomainConfig
from protocols.page import PAGE_SIZE
from protocols.xenstore.paths import backend_path, frontend_path
from tests.inprocess import HOST, domain_endpoint

BLKBACK = f"{HOST}/blkback"
MEMORY_MIB = 2
NR_PAGES = (MEMORY_MIB << 20) // PAGE_SIZE
XVDA, XVDB = 51712, 51728
_names = itertools.count(1)


@pytest.fixture
def blkback(host):
    """Start a (new) blkback shell on Dom0's ``h1/blkback`` connection, as after an actor
    restart; none of them may have failed to carry out an effect."""
    shells = []

    def start() -> BlkbackShell:
        shells.append(host.start(BLKBACK, BlkbackShell(HOST, host.clients(BLKBACK), host.log)))
        return shells[-1]

    yield start
    assert [s.backend.effect_errors for s in shells] == [0] * len(shells)


class Guest:
    """A PV domain whose kernel block driver (``BlockDevices``) is the frontend."""

    def __init__(self, host, domid: int, secret: str) -> None:
        self.domid, endpoint = domid, domain_endpoint(domid)
        self.mapping = memory.Mapping(host.memory_path(domid))
        clients = host.clients(endpoint, domid, secret)
        self.hv, self.xs = clients.hv, clients.xs
        self.blk = BlockDevices(self.mapping, NR_PAGES, self.hv, self.xs)
        host.start(endpoint, {"upcall": lambda d, ports, vcpu=0: self.blk.upcall(ports),
                              "xs_event": self.xs.on_event})

    def probe(self) -> None:
        self.blk.probe(self.domid, lambda path, token, handler: self.xs.watch(
            path, token, lambda _p, _t: handler()))

    def disk(self, devid: int):
        return self.blk.disk(devid)


def create(host, disks: dict[int, tuple[str, str]]) -> Guest:
    """A domain with ``disks`` {devid: (image, mode)}, built as the toolstack builds it
    (reference 8.3, 10): introduced, its vCPUs handed to this process."""
    built = host.build(DomainConfig(
        name=f"blk{next(_names)}", memory=MEMORY_MIB, maxmem=MEMORY_MIB,
        disk=tuple(DiskSpec(vdev=devid_to_vdev(devid), devid=devid, target=image,
                            readwrite=mode == "w") for devid, (image, mode) in disks.items())))
    return Guest(host, built.domid, built.secret)


def fe(domid: int, devid: int) -> str:
    return frontend_path("vbd", domid, devid)


def be(domid: int, devid: int) -> str:
    return backend_path("vbd", domid, devid)


def read(host, path: str) -> str:
    """A node's value, or NUL if it does not exist."""
    return host.xs.read_str(path, default="\0")


def image(tmp_path, name: str, size: str = "1M") -> str:
    path = tmp_path / name
    create_image(path, size)
    return str(path)


def connected(host, guest: Guest, *devids: int) -> None:
    host.until(lambda: all(read(host, f"{be(guest.domid, d)}/state") == "4" and
                           read(host, f"{fe(guest.domid, d)}/state") == "4" for d in devids),
               "both ends Connected")


def connected_guest(host, disks: dict[int, tuple[str, str]]) -> Guest:
    """:func:`create`, then the guest's frontends probe and both ends reach Connected."""
    guest = create(host, disks)
    guest.probe()
    connected(host, guest, *disks)
    return guest


def run(host, *reqs):
    host.until(lambda: all(r.done() for r in reqs), "requests to complete")
    return [r.result(0) for r in reqs]


def device(back: BlkbackShell, guest: Guest, devid: int) -> dict:
    return next(d for d in back.on_statistics()["devices"]
                if (d["domid"], d["devid"]) == (guest.domid, devid))


def _image_bytes(path: str, sector: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(sector * SECTOR_SIZE)
        return f.read(n)


def test_blkback_8_4_handshake_to_connected_with_the_8_3_keys(host, blkback, tmp_path):
    back = blkback()
    guest = create(host, {XVDA: (image(tmp_path, "a.img", "2M"), "w"),
                          XVDB: (image(tmp_path, "b.img"), "r")})
    be_a, be_b = be(guest.domid, XVDA), be(guest.domid, XVDB)
    host.until(lambda: read(host, f"{be_a}/state") == read(host, f"{be_b}/state") == "2",
               "InitWait")
    for key, value in (("feature-flush-cache", "1"), ("feature-discard", "1"),
                       ("discard-granularity", "512"), ("feature-persistent", "1"),
                       ("feature-barrier", "0"), ("max-ring-page-order", "0")):
        assert read(host, f"{be_a}/{key}") == value, key
    assert read(host, f"{be_a}/sectors") == "\0"  # disk properties only once connected
    guest.probe()
    connected(host, guest, XVDA, XVDB)
    fe_a = fe(guest.domid, XVDA)
    assert read(host, f"{fe_a}/ring-ref").isdigit() and read(host, f"{fe_a}/event-channel")
    assert read(host, f"{be_a}/sectors") == str(2 * 2048)
    assert read(host, f"{be_a}/info") == "0"
    assert read(host, f"{be_b}/info") == str(VDISK_READONLY)
    assert read(host, f"{be_a}/sector-size") == read(host, f"{be_a}/physical-sector-size") \
        == "512"
    assert guest.disk(XVDA).info["sectors"] == 4096
    assert back.on_statistics()["connects"] == 2
    # Every key in each directory is one reference 8.3 assigns to a side allowed to write it.
    backend_keys = {*blkif.TOOLSTACK_BACKEND_KEYS, *blkif.BACKEND_FEATURE_KEYS,
                    *blkif.BACKEND_CONNECT_KEYS, *blkif.HOTPLUG_BACKEND_KEYS}
    frontend_keys = {*blkif.TOOLSTACK_FRONTEND_KEYS, *blkif.FRONTEND_KEYS}
    assert set(host.xs.directory(be_a)) <= backend_keys
    assert set(host.xs.directory(fe_a)) <= frontend_keys


def test_blkback_8_1_write_read_round_trip_reaches_the_image(host, blkback, tmp_path):
    blkback()
    img = image(tmp_path, "a.img")
    guest = connected_guest(host, {XVDA: (img, "w")})
    disk = guest.disk(XVDA)
    payload = os.urandom(64 * 1024)  # two ring requests (44 KiB max each)
    run(host, disk.submit_write(100, payload))
    assert _image_bytes(img, 100, len(payload)) == payload  # plain read of the file
    [got] = run(host, disk.submit_read(100, len(payload)))
    assert got == payload
    run(host, disk.submit_flush(), disk.submit_discard(100, 8))
    assert _image_bytes(img, 100, 4096) == bytes(4096)


def test_blkback_8_1_write_to_read_only_vbd_fails_but_reads_work(host, blkback, tmp_path):
    blkback()
    img = image(tmp_path, "ro.img")
    with open(img, "r+b") as f:
        f.write(b"x" * 512)
    guest = connected_guest(host, {XVDA: (img, "r")})
    disk = guest.disk(XVDA)
    req = disk.submit_write(0, bytes(512))
    host.until(req.done, "the write to fail")
    with pytest.raises(Exception, match="status"):
        req.result(0)
    assert run(host, disk.submit_read(0, 512)) == [b"x" * 512]


def test_blkback_19_2_hostile_ring_disconnects_that_device_only(host, blkback, tmp_path):
    back = blkback()
    guest = connected_guest(host, {XVDA: (image(tmp_path, "a.img"), "w"),
                          XVDB: (image(tmp_path, "b.img"), "w")})
    bad, good = guest.disk(XVDA), guest.disk(XVDB)
    bad.misbehave(overflow=4)  # four rings' worth past what was answered
    be_bad = be(guest.domid, XVDA)
    host.until(lambda: read(host, f"{be_bad}/state") == "6", "hostile device Closed")
    assert read(host, f"{fe(guest.domid, XVDA)}/state") == "6"
    assert back.on_statistics()["hostile"] == 1
    assert device(back, guest, XVDA)["local_port"] is None
    data = os.urandom(8192)
    run(host, good.submit_write(8, data))
    assert run(host, good.submit_read(8, 8192)) == [data]
    assert read(host, f"{be(guest.domid, XVDB)}/state") == "4"


def test_blkback_19_2_garbage_requests_each_get_an_error_and_touch_no_data(
        host, blkback, tmp_path):
    back = blkback()
    img = image(tmp_path, "a.img")
    guest = connected_guest(host, {XVDA: (img, "w")})
    guest.disk(XVDA).misbehave(garbage=random.Random(1).randbytes(PAGE_SIZE))
    host.until(lambda: device(back, guest, XVDA)["errors"] == blkif.RING_SIZE,
               "an error for every garbage request")
    assert back.on_statistics()["hostile"] == 0
    assert _image_bytes(img, 0, 1 << 20) == bytes(1 << 20)


def test_blkback_8_4_a_ring_the_data_path_refuses_is_released_and_the_backend_closing(
        host, blkback, tmp_path):
    """``xenbus_dev_fatal`` after the rings were mapped and the port bound: the executor gives
    both back (no grant of the guest stays mapped, Dom0's port is closed) and the core hears
    of it, so the device goes Closing with ``error``, as for a ring that could not be mapped."""
    back = blkback()
    guest = create(host, {XVDA: (image(tmp_path, "a.img"), "w")})
    offered = []

    def refuse(key, conn, rings, grants, port, params):
        offered.append(port)
        raise RuntimeError("no ring for you")

    back.rings.connect = refuse
    guest.probe()
    be_a = be(guest.domid, XVDA)
    host.until(lambda: read(host, f"{be_a}/error") != "\0", "the error")
    assert "no ring for you" in read(host, f"{be_a}/error")
    assert read(host, f"{be_a}/state") in ("5", "6")  # Closing; Closed once the frontend is
    (port,) = offered
    assert host.xl(Hypercall.event_channel_op, EvtchnOp.status, dom=0, port=port)["status"] \
        == EvtchnStat.closed
    assert not host.hypervisor.state.grants.in_use(guest.domid)
    assert back.on_statistics()["errors"] == 1 and device(back, guest, XVDA)["local_port"] is None


def test_blkback_10_missing_image_writes_hotplug_error_and_closes(host, blkback, tmp_path):
    back = blkback()
    missing = str(tmp_path / "nope.img")
    guest = create(host, {XVDA: (missing, "w"), XVDB: (image(tmp_path, "b.img"), "w")})
    be_bad, be_ok = be(guest.domid, XVDA), be(guest.domid, XVDB)
    host.until(lambda: read(host, f"{be_bad}/state") == "6" and
               read(host, f"{be_ok}/state") == "2", "Closed, and InitWait")
    assert missing in read(host, f"{be_bad}/hotplug-error")
    assert read(host, f"{be_bad}/hotplug-status") == "error"
    assert read(host, f"{be_bad}/feature-persistent") == "\0"  # never probed
    assert back.on_statistics()["errors"] == 1


def test_blkback_8_3_unsupported_protocol_is_an_error_and_closing(host, blkback, tmp_path):
    blkback()
    guest = create(host, {XVDA: (image(tmp_path, "a.img"), "w")})
    be_a, fe_a = be(guest.domid, XVDA), fe(guest.domid, XVDA)
    host.until(lambda: read(host, f"{be_a}/state") == "2", "InitWait")
    for key, value in (("ring-ref", "8"), ("event-channel", "5"), ("protocol", "x86_32-abi"),
                       ("state", "3")):  # a 32-bit frontend (reference 19.11)
        guest.xs.write(f"{fe_a}/{key}", value)
    host.until(lambda: read(host, f"{be_a}/state") == "5", "Closing")
    assert "x86_32-abi" in read(host, f"{be_a}/error")


def test_blkback_10_unplug_online_0_then_frontend_closed_unregisters(host, blkback, tmp_path):
    back = blkback()
    guest = connected_guest(host, {XVDA: (image(tmp_path, "a.img"), "w")})
    be_a = be(guest.domid, XVDA)

    def unplug(t):  # libxl: online=0 and Closing in one transaction
        host.xs.write(f"{be_a}/online", "0", tx_id=t)
        host.xs.write(f"{be_a}/state", "5", tx_id=t)

    host.xs.transact(unplug)
    host.until(lambda: not back.on_statistics()["devices"], "the device to be unregistered")
    assert read(host, f"{be_a}/state") == "6"
    assert read(host, f"{fe(guest.domid, XVDA)}/state") == "6"
    host.xs.rm(be_a)  # libxl removes the nodes; nothing re-creates them
    host.pump()
    assert read(host, f"{be_a}/state") == "\0"


def test_blkback_19_4_restarted_backend_reconnects_and_in_flight_requests_complete(
        host, blkback, tmp_path):
    old = blkback()
    img = image(tmp_path, "a.img")
    guest = connected_guest(host, {XVDA: (img, "w")})
    disk = guest.disk(XVDA)
    old_port = device(old, guest, XVDA)["local_port"]
    del host.endpoints[BLKBACK]  # the actor dies: its upcalls go nowhere
    data = os.urandom(3 * 4096)
    pending = [disk.submit_write(16, data), disk.submit_read(0, 512)]
    host.pump()
    assert not any(r.done() for r in pending)
    back = blkback()  # Ray restarts it: same endpoint, same xenstore connection
    host.until(lambda: all(r.done() for r in pending), "re-issued requests")
    assert pending[0].result(0) is None and pending[1].result(0) == bytes(512)
    assert _image_bytes(img, 16, len(data)) == data
    connected(host, guest, XVDA)
    assert back.on_statistics()["recovered"] == 1
    assert disk.statistics()["reconnects"] == 1 and disk.statistics()["reissued"] >= 2
    status = host.xl(Hypercall.event_channel_op, EvtchnOp.status, dom=0, port=old_port)
    assert status["status"] == EvtchnStat.closed or \
        device(back, guest, XVDA)["local_port"] == old_port  # reused after the close
    assert run(host, disk.submit_read(16, len(data))) == [data]


def test_xenbus_identical_watch_fires_queued_meanwhile_cost_one_read(host, blkback, tmp_path):
    """The executor: fires that arrive while another thread runs the core are queued, and a
    fire already queued is not queued again (a burst of them reads the nodes once)."""
    back = blkback()
    guest = create(host, {XVDA: (image(tmp_path, "a.img"), "w")})
    be_a = be(guest.domid, XVDA)
    host.until(lambda: read(host, f"{be_a}/state") == "2", "InitWait")
    host.pump()
    io, reads = back.backend, []
    xs_read = io.xs.read
    io.xs.read = lambda path, tx_id=0: reads.append(path) or xs_read(path, tx_id)
    with io._lock:  # as if another thread were running the core
        for _ in range(5):
            io.feed(OtherendChanged(guest.domid, XVDA))
        assert reads == []
    io.feed(BackendChanged(f"{be_a}/feature-barrier"))  # runs what is queued, then this
    assert reads == [f"{be_a}/state", f"{be_a}/online", f"{fe(guest.domid, XVDA)}/state"]
