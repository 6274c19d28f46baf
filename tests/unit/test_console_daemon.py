"""xenconsoled (actors.console.daemon) against an in-process hypervisor and xenstored.

The daemon talks through its real clients (HypercallClient, XsClient) to the real peers
(``tests.inprocess``); the test pumps the one-way messages (upcalls, watch events), as the
actors' mailboxes would deliver them. Guest memory is real /dev/shm files; the "guest"
writes its console page through its own mapping (reference 7.4, 11.2) and signals with real
hypercalls.
"""

import uuid

import pytest

from actors import memory
from actors.console.actor import ConsoleShell
from actors.console.daemon import ConsoleDaemon, file_tail
from protocols.console import OUT_CONS, OUT_PROD, OUT_SIZE, ConsoleInterface
from protocols.evtchn import EvtchnStat
from protocols.hypercall import Domctl, EvtchnOp, Hypercall
from protocols.pv_layout import PFN_CONSOLE
from tests.inprocess import HOST, InProcessHost, domain_endpoint

CONSOLED = f"{HOST}/xenconsoled"
NR_PAGES = 16


class Guest:
    """A DomU's console side: its own mapping of the console page and its hypercalls."""

    def __init__(self, host: InProcessHost, domid, secret, port):
        self.domid, self.secret, self.port, self.upcalls = domid, secret, port, []
        endpoint = domain_endpoint(domid)
        self.hv = host.clients(endpoint, domid, secret).hv
        self.mapping = memory.Mapping(host.memory_path(domid), PFN_CONSOLE, 1)
        self.page = self.mapping.page(PFN_CONSOLE)
        self.intf = ConsoleInterface(self.page)
        host.endpoints[endpoint] = {"upcall": lambda d, ports: self.upcalls.extend(ports)}

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
        self.host = InProcessHost(f"/dev/shm/xenray-test-console-{uuid.uuid4().hex[:12]}")
        self.xl, self.xs = self.host.xl, self.host.xs
        self.log_dir = tmp_path
        self.guests: list[Guest] = []
        self.daemons: list[ConsoleDaemon] = []

    def start_daemon(self) -> ConsoleDaemon:
        """A (new) xenconsoled shell, as after an actor restart."""
        shell = ConsoleShell(HOST, self.host.clients(CONSOLED), self.host.log, self.log_dir)
        self.host.start(CONSOLED, shell)
        self.host.pump()
        self.daemons.append(shell.daemon)
        return shell.daemon

    def create(self, name: str, *, introduce=True, console_nodes=True) -> Guest:
        """The toolstack's part (contract "Domain boot sequence"), cut down to the console."""
        domid, secret = self.host.create_domain(NR_PAGES)
        port = self.xl(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=domid,
                       remote_dom=0)["port"]
        guest = Guest(self.host, domid, secret, port)
        self.guests.append(guest)
        self.xs.write(f"/local/domain/{domid}/name", name)
        if console_nodes:
            self.write_console_nodes(guest)
        if introduce:
            self.introduce(guest)
        return guest

    def write_console_nodes(self, guest: Guest) -> None:
        base = f"/local/domain/{guest.domid}/console"
        self.xs.write(f"{base}/ring-ref", str(PFN_CONSOLE))
        self.xs.write(f"{base}/port", str(guest.port))

    def introduce(self, guest: Guest) -> None:
        self.host.introduce(guest.domid, guest.secret)
        self.host.pump()

    def destroy(self, guest: Guest) -> None:
        self.xl(Hypercall.domctl, Domctl.destroydomain, domain=guest.domid)
        self.xs.rm(f"/local/domain/{guest.domid}")
        self.host.release(guest.domid)
        self.host.pump()

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
        self.host.close()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def test_console_11_5_domain_picked_up_on_introduce_and_output_logged(world):
    daemon = world.start_daemon()
    guest = world.create("web1")
    assert [c["domid"] for c in daemon.statistics()["consoles"]] == [guest.domid]
    guest.write(b"booting\nhello ")
    guest.write(b"world\n")
    log = world.log_file("web1")
    world.host.until(lambda: log.exists() and log.read_bytes() == b"booting\nhello world\n",
                     "the output in the log")
    assert daemon.tail("web1", 10) == ["booting", "hello world"]
    assert daemon.tail("web1", 1) == ["hello world"]
    assert daemon.log_path("web1") == str(log)


def test_console_11_2_connection_set_and_guest_signalled_after_consuming(world):
    world.start_daemon()
    guest = world.create("sig")
    guest.upcalls.clear()
    guest.write(b"x")
    world.host.pump()
    assert guest.upcalls == [guest.port]  # xenconsoled's notify frees the ring
    assert guest.intf.connection == 0  # XENCONSOLE_CONNECTED
    assert guest.intf.out_ring.cons == guest.intf.out_ring.prod == 1


def test_console_output_written_before_bind_is_drained_at_bind(world):
    world.start_daemon()
    guest = world.create("early", introduce=False)
    assert guest.intf.write_out(b"early bird\n") == 11  # no notify: nobody has bound yet
    world.introduce(guest)
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
    world.introduce(guest)
    data = b"".join(b"line %05d of the wrap test\n" % i for i in range(600))  # ~16 KiB
    sent = 0
    while sent < len(data):  # a guest writes what fits, then waits for xenconsoled's notify
        n = guest.intf.write_out(data[sent:sent + 1500])
        sent += n
        guest.upcalls.clear()
        guest.notify()
        world.host.until(lambda: guest.upcalls or guest.intf.out_ring.space() == OUT_SIZE,
                         "xenconsoled to drain the ring")
    assert len(data) > 4 * OUT_SIZE
    assert guest.intf.out_ring.prod < 0xFFFFFFFF - 700  # it did wrap
    world.host.until(lambda: world.log_file("wrap").read_bytes() == data, "the whole log")
    assert world.daemons[0].tail("wrap", 2) == ["line 00598 of the wrap test",
                                                "line 00599 of the wrap test"]


def test_console_hostile_indices_drop_that_domain_and_others_keep_working(world):
    daemon = world.start_daemon()
    good, bad = world.create("good"), world.create("bad")
    local_bad = {c["domid"]: c["local_port"] for c in daemon.statistics()["consoles"]}[bad.domid]
    bad.set_index(OUT_CONS, 10)
    bad.set_index(OUT_PROD, 10 + OUT_SIZE + 1)  # prod - cons > size
    bad.notify()
    world.host.pump()
    stats = daemon.statistics()
    assert stats["hostile"] == 1 and stats["refused"] == [bad.domid]
    assert [c["domid"] for c in stats["consoles"]] == [good.domid]
    assert world.port_status(bad.domid, bad.port) == EvtchnStat.unbound  # we closed ours
    assert world.port_status(0, local_bad) == EvtchnStat.closed
    later = world.create("later")  # another fire: the hostile domain is not picked up again
    assert bad.domid in daemon.statistics()["refused"]
    assert [c["domid"] for c in daemon.statistics()["consoles"]] == [good.domid, later.domid]
    good.write(b"still here\n")
    world.host.until(lambda: world.log_file("good").read_bytes() == b"still here\n",
                     "the good domain's output")
    world.destroy(bad)
    assert daemon.statistics()["refused"] == []  # forgotten with the domain


def test_console_release_unmaps_and_closes_port_and_tail_comes_from_the_file(world):
    daemon = world.start_daemon()
    guest = world.create("gone")
    guest.write(b"last words\n")
    world.host.pump()
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
    world.host.pump()
    local = first.statistics()["consoles"][0]["local_port"]
    world.daemons.remove(first)  # the actor died: no clean-up, its port stays bound
    second = world.start_daemon()
    stats = second.statistics()
    assert stats["adopted"] == 1 and stats["consoles"][0]["local_port"] == local
    guest.write(b"two\n")
    world.host.until(lambda: world.log_file("survivor").read_bytes() == b"one\ntwo\n",
                     "output after the restart")
    first.consoles[guest.domid].close()


def test_console_tail_keeps_the_last_200_lines_and_a_partial_line(world):
    daemon = world.start_daemon()
    guest = world.create("chatty")
    for i in range(300):
        guest.write(b"%d\n" % i)
    guest.write(b"prompt> ")
    world.host.pump()
    tail = daemon.tail("chatty", 1000)
    assert len(tail) == 201 and tail[0] == "100" and tail[-2:] == ["299", "prompt> "]


def test_console_file_tail_reads_only_the_end_of_a_big_log(tmp_path):
    path = tmp_path / "big.log"
    path.write_bytes(b"".join(b"%06d\r\n" % i for i in range(50000)) + b"partial")
    assert file_tail(path, 3) == ["049998", "049999", "partial"]
    assert file_tail(path, 0) == []
