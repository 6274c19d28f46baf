"""blkback's control path (actors.blkback.xenbus) against real peers, in-process.

Reference 8.3 (keys), 8.4 (handshake), 10 (life-cycle), 19.2 (hostile ring), 19.4/19.6
(restart and reconnect). The peers are the real ones (``tests.inprocess``): the hypervisor
state machine (msgpack hypercalls, grant maps of /dev/shm memory files, event channels),
xenstored's server (xs_wire) and, as the guest, the kernel's block driver
(``actors.domain.blkdev`` / ``Blkfront``). The test pumps the one-way messages (upcalls,
watch events), as the actors' mailboxes would deliver them.
"""

import os
import uuid

import pytest

from actors import memory
from actors.blkback.vbd import create_image
from actors.blkback.actor import BlkbackShell
from actors.blkback.xenbus import Blkback
from actors.domain.blkdev import BlockDevices
from actors.toolstack.builder import add_device
from actors.toolstack.devices import VBD
from cluster.xlcfg import parse_disk_spec
from protocols import blkif
from protocols.blkif import VDISK_READONLY, devid_to_vdev
from protocols.evtchn import EvtchnStat
from protocols.hypercall import EvtchnOp, Hypercall
from tests.inprocess import HOST, InProcessHost, domain_endpoint

BLKBACK = f"{HOST}/blkback"
NR_PAGES = 512
XVDA, XVDB = 51712, 51728


class Guest:
    """A PV domain whose kernel block driver (``BlockDevices``) is the frontend."""

    def __init__(self, world: "World", domid: int, secret: str) -> None:
        self.domid, endpoint = domid, domain_endpoint(domid)
        self.mapping = memory.Mapping(world.host.memory_path(domid))
        clients = world.host.clients(endpoint, domid, secret)
        self.hv, self.xs = clients.hv, clients.xs
        self.blk = BlockDevices(self.mapping, NR_PAGES, self.hv, self.xs)
        world.host.endpoints[endpoint] = {"upcall": lambda d, ports: self.blk.upcall(ports),
                                          "xs_event": self.xs.on_event}

    def probe(self) -> None:
        self.blk.probe(self.domid, lambda path, token, handler: self.xs.watch(
            path, token, lambda _p, _t: handler()))

    def disk(self, devid: int):
        return self.blk.disk(devid)


class World:
    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.host = InProcessHost(f"/dev/shm/xenray-test-blkback-{uuid.uuid4().hex[:12]}")
        self.xl, self.xs = self.host.xl, self.host.xs
        self.guests: list[Guest] = []
        self.backends: list[Blkback] = []

    def start_blkback(self) -> Blkback:
        """A (new) blkback shell on Dom0's ``h1/blkback`` connection, as after an actor
        restart."""
        shell = BlkbackShell(HOST, self.host.clients(BLKBACK), self.host.log)
        self.host.start(BLKBACK, shell)
        self.backends.append(shell.blkback)
        return shell.blkback

    def create(self, disks: dict[int, tuple[str, str]]) -> Guest:
        """A domain with ``disks`` {devid: (image, mode)}, as the toolstack builds one."""
        domid, secret = self.host.create_domain(NR_PAGES)

        def body(t: int) -> None:
            dom = f"/local/domain/{domid}"
            self.xs.write(dom, "", tx_id=t)
            self.xs.set_perms(dom, ["n0", f"r{domid}"], tx_id=t)
            for devid, (image, mode) in disks.items():
                self.add_vbd(t, domid, devid, image, mode)

        self.xs.transact(body)
        self.host.introduce(domid, secret)
        guest = Guest(self, domid, secret)
        self.guests.append(guest)
        return guest

    def add_vbd(self, t: int, domid: int, devid: int, image: str, mode: str) -> None:
        """The toolstack's own device add (reference 8.3, 10)."""
        add_device(self.xs, t, domid, VBD,
                   parse_disk_spec(f"{image},raw,{devid_to_vdev(devid)},{mode}"))

    @staticmethod
    def fe(domid: int, devid: int) -> str:
        return f"/local/domain/{domid}/device/vbd/{devid}"

    @staticmethod
    def be(domid: int, devid: int) -> str:
        return f"/local/domain/0/backend/vbd/{domid}/{devid}"

    def read(self, path: str) -> str | None:
        return self.xs.read_str(path, default="\0")

    def image(self, name: str, size: str = "1M") -> str:
        path = self.tmp / name
        create_image(path, size)
        return str(path)

    def connected(self, guest: Guest, *devids: int) -> None:
        self.host.until(lambda: all(
            self.read(f"{self.be(guest.domid, d)}/state") == "4"
            and self.read(f"{self.fe(guest.domid, d)}/state") == "4" for d in devids),
            "both ends Connected")

    def run(self, *reqs):
        self.host.until(lambda: all(r.done() for r in reqs), "requests to complete")
        return [r.result(0) for r in reqs]

    def close(self) -> None:
        for back in self.backends:
            back.close()
        self.host.close()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def _image_bytes(path: str, sector: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(sector * 512)
        return f.read(n)


def test_blkback_8_4_handshake_to_connected_with_the_8_3_keys(world):
    back = world.start_blkback()
    guest = world.create({XVDA: (world.image("a.img", "2M"), "w"),
                          XVDB: (world.image("b.img"), "r")})
    be_a, be_b = world.be(guest.domid, XVDA), world.be(guest.domid, XVDB)
    world.host.until(lambda: world.read(f"{be_a}/state") == "2" and
                     world.read(f"{be_b}/state") == "2", "InitWait")
    for key, value in (("feature-flush-cache", "1"), ("feature-discard", "1"),
                       ("discard-granularity", "512"), ("feature-persistent", "1"),
                       ("feature-barrier", "0"), ("max-ring-page-order", "0")):
        assert world.read(f"{be_a}/{key}") == value, key
    assert world.read(f"{be_a}/sectors") == "\0"  # disk properties only once connected
    guest.probe()
    world.connected(guest, XVDA, XVDB)
    fe_a = world.fe(guest.domid, XVDA)
    assert world.read(f"{fe_a}/ring-ref").isdigit() and world.read(f"{fe_a}/event-channel")
    assert world.read(f"{be_a}/sectors") == str(2 * 2048)
    assert world.read(f"{be_a}/info") == "0"
    assert world.read(f"{be_b}/info") == str(VDISK_READONLY)
    assert world.read(f"{be_a}/sector-size") == world.read(f"{be_a}/physical-sector-size") == "512"
    assert guest.disk(XVDA).info["sectors"] == 4096
    assert back.statistics()["connects"] == 2
    # Every key in each directory is one reference 8.3 assigns to a side allowed to write it.
    backend_keys = {*blkif.TOOLSTACK_BACKEND_KEYS, *blkif.BACKEND_FEATURE_KEYS,
                    *blkif.BACKEND_CONNECT_KEYS, *blkif.HOTPLUG_BACKEND_KEYS}
    frontend_keys = {*blkif.TOOLSTACK_FRONTEND_KEYS, *blkif.FRONTEND_KEYS}
    assert set(world.xs.directory(be_a)) <= backend_keys
    assert set(world.xs.directory(fe_a)) <= frontend_keys


def test_blkback_8_1_write_read_round_trip_reaches_the_image(world):
    world.start_blkback()
    img = world.image("a.img")
    guest = world.create({XVDA: (img, "w")})
    guest.probe()
    world.connected(guest, XVDA)
    disk = guest.disk(XVDA)
    payload = os.urandom(64 * 1024)  # two ring requests (44 KiB max each)
    world.run(disk.submit_write(100, payload))
    assert _image_bytes(img, 100, len(payload)) == payload  # plain read of the file
    [got] = world.run(disk.submit_read(100, len(payload)))
    assert got == payload
    world.run(disk.submit_flush(), disk.submit_discard(100, 8))
    assert _image_bytes(img, 100, 4096) == bytes(4096)


def test_blkback_8_1_write_to_read_only_vbd_fails_but_reads_work(world):
    world.start_blkback()
    img = world.image("ro.img")
    with open(img, "r+b") as f:
        f.write(b"x" * 512)
    guest = world.create({XVDA: (img, "r")})
    guest.probe()
    world.connected(guest, XVDA)
    disk = guest.disk(XVDA)
    req = disk.submit_write(0, bytes(512))
    world.host.until(req.done, "the write to fail")
    with pytest.raises(Exception, match="status"):
        req.result(0)
    assert world.run(disk.submit_read(0, 512)) == [b"x" * 512]


def test_blkback_19_2_hostile_ring_disconnects_that_device_only(world):
    back = world.start_blkback()
    guest = world.create({XVDA: (world.image("a.img"), "w"), XVDB: (world.image("b.img"), "w")})
    guest.probe()
    world.connected(guest, XVDA, XVDB)
    bad, good = guest.disk(XVDA), guest.disk(XVDB)
    _, pfn = bad._ring_page
    req_prod = guest.mapping.page(pfn).cast("I")
    req_prod[0] = (req_prod[0] + 1000) & 0xFFFFFFFF  # far past RING_SIZE: overflow
    guest.hv(Hypercall.event_channel_op, EvtchnOp.send, port=bad.evtchn)
    be_bad = world.be(guest.domid, XVDA)
    world.host.until(lambda: world.read(f"{be_bad}/state") == "6", "hostile device Closed")
    assert world.read(f"{world.fe(guest.domid, XVDA)}/state") == "6"
    stats = back.statistics()
    assert stats["hostile"] == 1
    assert {d["devid"]: d["local_port"] for d in stats["devices"]}[XVDA] is None
    data = os.urandom(8192)
    world.run(good.submit_write(8, data))
    assert world.run(good.submit_read(8, 8192)) == [data]
    assert world.read(f"{world.be(guest.domid, XVDB)}/state") == "4"


def test_blkback_10_missing_image_writes_hotplug_error_and_closes(world):
    back = world.start_blkback()
    missing = str(world.tmp / "nope.img")
    guest = world.create({XVDA: (missing, "w"), XVDB: (world.image("b.img"), "w")})
    be = world.be(guest.domid, XVDA)
    be_ok = world.be(guest.domid, XVDB)
    world.host.until(lambda: world.read(f"{be}/state") == "6" and
                     world.read(f"{be_ok}/state") == "2", "Closed, and InitWait")
    assert missing in world.read(f"{be}/hotplug-error")
    assert world.read(f"{be}/hotplug-status") == "error"
    assert world.read(f"{be}/feature-persistent") == "\0"  # never probed
    assert back.statistics()["errors"] == 1


def test_blkback_8_3_unsupported_protocol_is_an_error_and_closing(world):
    world.start_blkback()
    guest = world.create({XVDA: (world.image("a.img"), "w")})
    be, fe = world.be(guest.domid, XVDA), world.fe(guest.domid, XVDA)
    world.host.until(lambda: world.read(f"{be}/state") == "2", "InitWait")
    for key, value in (("ring-ref", "8"), ("event-channel", "5"), ("protocol", "x86_32-abi"),
                       ("state", "3")):  # a 32-bit frontend (reference 19.11)
        guest.xs.write(f"{fe}/{key}", value)
    world.host.until(lambda: world.read(f"{be}/state") == "5", "Closing")
    assert "x86_32-abi" in world.read(f"{be}/error")


def test_blkback_10_unplug_online_0_then_frontend_closed_unregisters(world):
    back = world.start_blkback()
    guest = world.create({XVDA: (world.image("a.img"), "w")})
    guest.probe()
    world.connected(guest, XVDA)
    be = world.be(guest.domid, XVDA)

    def unplug(t):  # libxl: online=0 and Closing in one transaction
        world.xs.write(f"{be}/online", "0", tx_id=t)
        world.xs.write(f"{be}/state", "5", tx_id=t)

    world.xs.transact(unplug)
    world.host.until(lambda: not back.devices, "the device to be unregistered")
    assert world.read(f"{be}/state") == "6"
    assert world.read(f"{world.fe(guest.domid, XVDA)}/state") == "6"
    world.xs.rm(be)  # libxl removes the nodes; nothing re-creates them
    world.host.pump()
    assert world.read(f"{be}/state") == "\0"


def test_blkback_19_4_restarted_backend_reconnects_and_in_flight_requests_complete(world):
    world.start_blkback()
    img = world.image("a.img")
    guest = world.create({XVDA: (img, "w")})
    guest.probe()
    world.connected(guest, XVDA)
    disk = guest.disk(XVDA)
    old_port = world.backends[0].devices[(guest.domid, XVDA)].local_port
    del world.host.endpoints[BLKBACK]  # the actor dies: its upcalls go nowhere
    data = os.urandom(3 * 4096)
    pending = [disk.submit_write(16, data), disk.submit_read(0, 512)]
    world.host.pump()
    assert not any(r.done() for r in pending)
    back = world.start_blkback()  # Ray restarts it: same endpoint, same xenstore connection
    world.host.until(lambda: all(r.done() for r in pending), "re-issued requests")
    assert pending[0].result(0) is None and pending[1].result(0) == bytes(512)
    assert _image_bytes(img, 16, len(data)) == data
    world.connected(guest, XVDA)
    assert back.statistics()["recovered"] == 1
    assert disk.statistics()["reconnects"] == 1 and disk.statistics()["reissued"] >= 2
    status = world.xl(Hypercall.event_channel_op, EvtchnOp.status, dom=0, port=old_port)
    assert status["status"] == EvtchnStat.closed or \
        back.devices[(guest.domid, XVDA)].local_port == old_port  # reused after the close
    assert world.run(disk.submit_read(16, len(data))) == [data]
