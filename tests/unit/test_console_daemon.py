"""xenconsoled (actors.console.daemon) against an in-process hypervisor and xenstore.

The daemon talks through its real clients (HypercallClient, XsClient) over a transport that
runs calls at once and queues one-way messages (upcalls, watch events) until pumped, as the
actors' mailboxes would. Guest memory is real /dev/shm files; the "guest" writes its console
page through its own mapping (reference 7.4, 11.2) and signals with real hypercalls.
"""

import itertools
import os
import time
import uuid
from collections import deque

import msgpack
import pytest

from actors import memory
from actors.console.daemon import ConsoleDaemon, file_tail
from actors.domain.layout import PFN_CONSOLE
from actors.hypercall_client import Credential, HypercallClient
from actors.hypervisor.effects import Deliver, ReleaseMemory, SizeMemory
from actors.hypervisor.state import Hypervisor
from actors.xs_client import XsClient
from protocols.console import OUT_CONS, OUT_PROD, OUT_SIZE, ConsoleInterface
from protocols.errno import XenError
from protocols.evtchn import EvtchnStat
from protocols.hypercall import DOMID_ANY, Domctl, EvtchnOp, Hypercall, MemoryOp
from protocols.xenstore import Conn, Store
from protocols.xenstore.wire import (
    XsDecoder,
    XsType,
    parse_request,
    reply_error,
    reply_list,
    reply_ok,
    reply_value,
    watch_event,
)

HOST = "h1"
CONSOLED = "h1/xenconsoled"
NR_PAGES = 16
XS_OPS = {XsType.READ: ("read", reply_value), XsType.DIRECTORY: ("directory", reply_list),
          XsType.WATCH: ("watch", None), XsType.UNWATCH: ("unwatch", None)}


class InProcess:
    """The transport: calls run at once; one-way messages queue until :meth:`pump`."""

    def __init__(self, hv: Hypervisor, store: Store) -> None:
        self.hv, self.store = hv, store
        self.queue: deque = deque()
        self.endpoints: dict[str, object] = {}
        self.conns: dict[tuple[int, str], Conn] = {}
        self._conn_ids = itertools.count(1)

    def conn(self, domid: int, endpoint: str) -> Conn:
        key = (domid, endpoint)
        if key not in self.conns:
            self.conns[key] = Conn(next(self._conn_ids), domid, privileged=domid == 0)
        return self.conns[key]

    def call(self, dest, kind, *args, timeout=None):
        domid, secret, endpoint, data = args
        if kind == "hypercall":
            reply, effects = self.hv.hypercall(domid, secret, endpoint, data)
            for e in effects:
                if isinstance(e, Deliver):
                    self.send(e.endpoint, "upcall", e.domid, list(e.ports))
                elif isinstance(e, SizeMemory):
                    memory.create(e.path, e.nr_pages)
                elif isinstance(e, ReleaseMemory):
                    memory.remove(e.path)
            return reply
        assert kind == "xs" and dest == "h1/xenstored"
        conn, out = self.conn(domid, endpoint), b""
        for msg in XsDecoder().feed(data):
            req = parse_request(msg)
            name, reply = XS_OPS[req.type]
            try:
                value = getattr(self.store, name)(conn, req.tx_id, *req.args)
                out += (reply(req, value) if reply else reply_ok(req)).pack()
            except XenError as e:
                out += reply_error(req, e.errno).pack()
        self.xs_events()
        return out

    def xs_events(self) -> None:
        by_id = {c.conn_id: ep for (_, ep), c in self.conns.items()}
        for ev in self.store.drain_events():
            if ev.conn_id in by_id:
                self.send(by_id[ev.conn_id], "xs_event", watch_event(ev.path, ev.token).pack())

    def send(self, dest, kind, *args):
        self.queue.append((dest, kind, args))

    def forget(self, dest):
        pass

    def pump(self) -> None:
        """Deliver queued one-way messages (and those they cause) until none is left."""
        deadline = time.monotonic() + 10
        while self.queue:
            assert time.monotonic() < deadline, "messages keep coming"
            dest, kind, args = self.queue.popleft()
            target = self.endpoints.get(dest)
            if target is not None:
                getattr(target, f"on_{kind}")(*args)


class DaemonEndpoint:
    """What actor.py does with the two messages xenconsoled receives."""

    def __init__(self, daemon: ConsoleDaemon, xs: XsClient) -> None:
        self.daemon, self.xs = daemon, xs

    def on_upcall(self, domid, ports):
        self.daemon.upcall(domid, ports)

    def on_xs_event(self, data):
        self.xs.on_event(data)


class Guest:
    """A DomU's console side: its own mapping of the console page and its hypercalls."""

    def __init__(self, world, domid, secret, port, path):
        self.domid, self.port, self.upcalls = domid, port, []
        self.hv = HypercallClient(world.transport, "h1/hypervisor",
                                  Credential(domid, secret, f"h1/dom{domid}"))
        self.mapping = memory.Mapping(path, PFN_CONSOLE, 1)
        self.page = self.mapping.page(PFN_CONSOLE)
        self.intf = ConsoleInterface(self.page)
        world.transport.endpoints[f"h1/dom{domid}"] = self

    def on_upcall(self, domid, ports):
        self.upcalls.extend(ports)

    def notify(self):
        self.hv(Hypercall.event_channel_op, EvtchnOp.send, port=self.port)

    def write(self, data: bytes) -> None:
        assert self.intf.write_out(data) == len(data)
        self.notify()

    def set_index(self, offset: int, value: int) -> None:
        self.page.cast("I")[offset // 4] = value & 0xFFFFFFFF

    def close(self):
        self.intf.release()
        self.page.release()
        self.mapping.close()


class World:
    def __init__(self, tmp_path):
        self.prefix = f"/dev/shm/xenray-test-console-{uuid.uuid4().hex[:12]}"
        self.maps: list[memory.Mapping] = []
        self.hv = Hypervisor(HOST, memory_mib=64, pcpus=2, mem_prefix=self.prefix,
                             frames=self.frames)
        self.hv.boot_dom0(memory_mib=16)
        self.secret0 = self.hv.table.domains[0].secret
        self.store = Store()
        self.transport = InProcess(self.hv, self.store)
        self.xl = HypercallClient(self.transport, "h1/hypervisor",
                                  Credential(0, self.secret0, "h1/xl"))
        self.tool = self.transport.conn(0, "h1/xl")
        self.log_dir = tmp_path
        self.guests: list[Guest] = []
        self.daemons: list[ConsoleDaemon] = []

    def frames(self, domid: int, pfn: int, count: int) -> memoryview:
        """The hypervisor's view of a domain's pages (grant tables), as actor.py maps them."""
        self.maps.append(memory.Mapping(self.hv.memory_path(domid)))
        return self.maps[-1].pages(pfn, count)

    def start_daemon(self) -> ConsoleDaemon:
        hv = HypercallClient(self.transport, "h1/hypervisor",
                             Credential(0, self.secret0, CONSOLED))
        xs = XsClient(self.transport, HOST, 0, self.secret0, CONSOLED)
        daemon = ConsoleDaemon(HOST, hv, xs, self.log_dir)
        self.transport.endpoints[CONSOLED] = DaemonEndpoint(daemon, xs)
        daemon.start()
        self.transport.pump()
        self.daemons.append(daemon)
        return daemon

    def create(self, name: str, *, introduce=True, console_nodes=True) -> Guest:
        """The toolstack's part (contract "Domain boot sequence"), cut down to the console."""
        res = self.xl(Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
                      handle=bytes(16), flags=0, max_vcpus=1, max_evtchn_port=1023,
                      max_grant_frames=-1, max_maptrack_frames=-1)
        domid = res["domain"]
        self.xl(Hypercall.domctl, Domctl.max_mem, domain=domid, max_memkb=NR_PAGES * 4)
        self.xl(Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=[],
                nr_extents=NR_PAGES, extent_order=0, mem_flags=0, domid=domid)
        self.xl(Hypercall.domctl, Domctl.setvcpucontext, domain=domid, vcpu=0,
                ctxt=msgpack.packb({"pid": os.getpid(), "endpoint": f"h1/dom{domid}"}))
        port = self.xl(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=domid,
                       remote_dom=0)["port"]
        guest = Guest(self, domid, res["secret"], port, self.hv.memory_path(domid))
        self.guests.append(guest)
        self.store.write(self.tool, 0, f"/local/domain/{domid}/name", name.encode())
        if console_nodes:
            self.write_console_nodes(guest)
        if introduce:
            self.introduce(domid)
        return guest

    def write_console_nodes(self, guest: Guest) -> None:
        base = f"/local/domain/{guest.domid}/console"
        self.store.write(self.tool, 0, f"{base}/ring-ref", str(PFN_CONSOLE).encode())
        self.store.write(self.tool, 0, f"{base}/port", str(guest.port).encode())

    def introduce(self, domid: int) -> None:
        self.store.introduce_domain(self.tool, 0, domid)
        self.transport.xs_events()
        self.transport.pump()

    def destroy(self, guest: Guest) -> None:
        self.xl(Hypercall.domctl, Domctl.destroydomain, domain=guest.domid)
        self.store.rm(self.tool, 0, f"/local/domain/{guest.domid}")
        self.store.release_domain(self.tool, 0, guest.domid)
        self.transport.xs_events()
        self.transport.pump()

    def log_file(self, name: str):
        return self.log_dir / "console" / HOST / f"{name}.log"

    def port_status(self, domid: int, port: int) -> int:
        return self.xl(Hypercall.event_channel_op, EvtchnOp.status, dom=domid,
                       port=port)["status"]

    def close(self):
        for daemon in self.daemons:
            daemon.close()
        for guest in self.guests:
            guest.close()
        for m in self.maps:
            m.close()
        for domid in list(self.hv.table.domains):
            memory.remove(self.hv.memory_path(domid))


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def until(predicate, pump, timeout=5.0):
    """Pump messages until ``predicate()`` holds, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        pump()


def test_console_11_5_domain_picked_up_on_introduce_and_output_logged(world):
    daemon = world.start_daemon()
    guest = world.create("web1")
    assert [c["domid"] for c in daemon.statistics()["consoles"]] == [guest.domid]
    guest.write(b"booting\nhello ")
    guest.write(b"world\n")
    log = world.log_file("web1")
    until(lambda: log.exists() and log.read_bytes() == b"booting\nhello world\n",
          world.transport.pump)
    assert daemon.tail("web1", 10) == ["booting", "hello world"]
    assert daemon.tail("web1", 1) == ["hello world"]
    assert daemon.log_path("web1") == str(log)


def test_console_11_2_connection_set_and_guest_signalled_after_consuming(world):
    world.start_daemon()
    guest = world.create("sig")
    guest.upcalls.clear()
    guest.write(b"x")
    world.transport.pump()
    assert guest.upcalls == [guest.port]  # xenconsoled's notify frees the ring
    assert guest.intf.connection == 0  # XENCONSOLE_CONNECTED
    assert guest.intf.out_ring.cons == guest.intf.out_ring.prod == 1


def test_console_output_written_before_bind_is_drained_at_bind(world):
    world.start_daemon()
    guest = world.create("early", introduce=False)
    assert guest.intf.write_out(b"early bird\n") == 11  # no notify: nobody has bound yet
    world.introduce(guest.domid)
    assert world.log_file("early").read_bytes() == b"early bird\n"


def test_console_existing_domains_are_served_when_the_daemon_starts(world):
    guest = world.create("before")
    guest.intf.write_out(b"up\n")
    daemon = world.start_daemon()
    assert daemon.tail("before", 5) == ["up"]


def test_console_7_4_ring_wraps_around_indices_and_buffer(world):
    world.start_daemon()
    guest = world.create("wrap", introduce=False)
    guest.intf.out_ring.reset(0xFFFFFFFF - 700)  # the u32 indices wrap mid-stream
    world.introduce(guest.domid)
    data = b"".join(b"line %05d of the wrap test\n" % i for i in range(600))  # ~16 KiB
    sent = 0
    while sent < len(data):  # a guest writes what fits, then waits for xenconsoled's notify
        n = guest.intf.write_out(data[sent:sent + 1500])
        sent += n
        guest.upcalls.clear()
        guest.notify()
        until(lambda: guest.upcalls or guest.intf.out_ring.space() == OUT_SIZE,
              world.transport.pump)
    assert len(data) > 4 * OUT_SIZE
    assert guest.intf.out_ring.prod < 0xFFFFFFFF - 700  # it did wrap
    until(lambda: world.log_file("wrap").read_bytes() == data, world.transport.pump)
    assert world.daemons[0].tail("wrap", 2) == ["line 00598 of the wrap test",
                                                "line 00599 of the wrap test"]


def test_console_hostile_indices_drop_that_domain_and_others_keep_working(world):
    daemon = world.start_daemon()
    good, bad = world.create("good"), world.create("bad")
    local_bad = {c["domid"]: c["local_port"] for c in daemon.statistics()["consoles"]}[bad.domid]
    bad.set_index(OUT_CONS, 10)
    bad.set_index(OUT_PROD, 10 + OUT_SIZE + 1)  # prod - cons > size
    bad.notify()
    world.transport.pump()
    stats = daemon.statistics()
    assert stats["hostile"] == 1 and stats["refused"] == [bad.domid]
    assert [c["domid"] for c in stats["consoles"]] == [good.domid]
    assert world.port_status(bad.domid, bad.port) == EvtchnStat.unbound  # we closed ours
    assert world.port_status(0, local_bad) == EvtchnStat.closed
    later = world.create("later")  # another fire: the hostile domain is not picked up again
    assert bad.domid in daemon.statistics()["refused"]
    assert [c["domid"] for c in daemon.statistics()["consoles"]] == [good.domid, later.domid]
    good.write(b"still here\n")
    until(lambda: world.log_file("good").read_bytes() == b"still here\n", world.transport.pump)
    world.destroy(bad)
    assert daemon.statistics()["refused"] == []  # forgotten with the domain


def test_console_release_unmaps_and_closes_port_and_tail_comes_from_the_file(world):
    daemon = world.start_daemon()
    guest = world.create("gone")
    guest.write(b"last words\n")
    world.transport.pump()
    local = daemon.statistics()["consoles"][0]["local_port"]
    world.destroy(guest)
    stats = daemon.statistics()
    assert stats["consoles"] == [] and stats["disconnected"] == 1
    assert world.port_status(0, local) == EvtchnStat.closed
    assert daemon.tail("gone", 5) == ["last words"]  # read back from the log file
    assert daemon.tail("never-existed", 5) == []


def test_console_domain_the_hypervisor_no_longer_lists_is_dropped_at_the_next_fire(world):
    daemon = world.start_daemon()
    crashed = world.create("crashed")
    world.xl(Hypercall.domctl, Domctl.destroydomain, domain=crashed.domid)  # xenstore kept
    world.create("next")
    assert [c["name"] for c in daemon.statistics()["consoles"]] == ["next"]


def test_console_domain_without_console_nodes_is_picked_up_on_a_later_fire(world):
    daemon = world.start_daemon()
    guest = world.create("slow", console_nodes=False)
    assert daemon.statistics()["consoles"] == []
    world.write_console_nodes(guest)
    world.create("other")
    assert {c["name"] for c in daemon.statistics()["consoles"]} == {"slow", "other"}


def test_console_restarted_daemon_adopts_the_port_it_had_bound(world):
    first = world.start_daemon()
    guest = world.create("survivor")
    guest.write(b"one\n")
    world.transport.pump()
    local = first.statistics()["consoles"][0]["local_port"]
    world.daemons.remove(first)  # the actor died: no clean-up, its port stays bound
    second = world.start_daemon()
    stats = second.statistics()
    assert stats["adopted"] == 1 and stats["consoles"][0]["local_port"] == local
    guest.write(b"two\n")
    until(lambda: world.log_file("survivor").read_bytes() == b"one\ntwo\n",
          world.transport.pump)
    first.consoles[guest.domid].close()


def test_console_tail_keeps_the_last_200_lines_and_a_partial_line(world):
    daemon = world.start_daemon()
    guest = world.create("chatty")
    for i in range(300):
        guest.write(b"%d\n" % i)
    guest.write(b"prompt> ")
    world.transport.pump()
    tail = daemon.tail("chatty", 1000)
    assert len(tail) == 201 and tail[0] == "100" and tail[-2:] == ["299", "prompt> "]


def test_console_file_tail_reads_only_the_end_of_a_big_log(tmp_path):
    path = tmp_path / "big.log"
    path.write_bytes(b"".join(b"%06d\r\n" % i for i in range(50000)) + b"partial")
    assert file_tail(path, 3) == ["049998", "049999", "partial"]
    assert file_tail(path, 0) == []
