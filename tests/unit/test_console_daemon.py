"""xenconsoled (actors.console) in its real shell on an in-process host.

:class:`ConsoleShell` is started on the ``host`` fixture and talks through its real clients
(HypercallClient, XsClient) to the real hypervisor and xenstored; the test pumps the one-way
messages (upcalls, watch events), as the actors' mailboxes would deliver them. Guest memory is
real /dev/shm files; the guest side is a stand-in endpoint that writes its console page through
its own mapping (reference 7.4, 11.2) and signals with real hypercalls.
"""

from actors import memory
from actors.console.actor import ConsoleShell
from actors.console.daemon import ConsoleDaemon, file_tail
from actors.transport import Endpoint
from protocols.console import OUT_CONS, OUT_PROD, OUT_SIZE, ConsoleInterface
from protocols.evtchn import EvtchnStat
from protocols.hypercall import Domctl, EvtchnOp, Hypercall
from protocols.pv_layout import PFN_CONSOLE
from tests.inprocess import HOST, domain_endpoint

CONSOLED = f"{HOST}/xenconsoled"
NR_PAGES = 16


class Guest(Endpoint):
    """A DomU's console side, on its endpoint: its own mapping of the console page, its
    hypercalls, and the upcalls it got."""

    def __init__(self, host, domid, secret, port):
        self.domid, self.secret, self.port, self.upcalls = domid, secret, port, []
        self.hv = host.clients(domain_endpoint(domid), domid, secret).hv
        self.mapping = memory.Mapping(host.memory_path(domid), PFN_CONSOLE, 1)
        self.page = self.mapping.page(PFN_CONSOLE)
        self.intf = ConsoleInterface(self.page)

    def on_upcall(self, domid, ports, vcpu=0):
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


def start_daemon(host, log_dir) -> ConsoleDaemon:
    """A (new) xenconsoled shell, as after an actor restart; closed with the host."""
    shell = host.start(CONSOLED, ConsoleShell(HOST, host.clients(CONSOLED), host.log, log_dir))
    host.pump()
    return shell.daemon


def create(host, name: str, *, introduce=True, console_nodes=True) -> Guest:
    """The toolstack's part (contract "Domain boot sequence"), cut down to the console."""
    domid, secret = host.create_domain(NR_PAGES)
    port = host.xl(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=domid,
                   remote_dom=0)["port"]
    guest = host.start(domain_endpoint(domid), Guest(host, domid, secret, port))
    host.xs.write(f"/local/domain/{domid}/name", name)
    if console_nodes:
        write_console_nodes(host, guest)
    if introduce:
        introduce_domain(host, guest)
    return guest


def write_console_nodes(host, guest: Guest) -> None:
    base = f"/local/domain/{guest.domid}/console"
    host.xs.write(f"{base}/ring-ref", str(PFN_CONSOLE))
    host.xs.write(f"{base}/port", str(guest.port))


def introduce_domain(host, guest: Guest) -> None:
    host.introduce(guest.domid, guest.secret)
    host.pump()


def destroy(host, guest: Guest) -> None:
    host.xl(Hypercall.domctl, Domctl.destroydomain, domain=guest.domid)
    host.xs.rm(f"/local/domain/{guest.domid}")
    host.release(guest.domid)
    host.pump()


def log_file(log_dir, name: str):
    return log_dir / "console" / HOST / f"{name}.log"


def port_status(host, domid: int, port: int) -> int:
    return host.xl(Hypercall.event_channel_op, EvtchnOp.status, dom=domid, port=port)["status"]


def test_console_11_5_domain_picked_up_on_introduce_and_output_logged(host, tmp_path):
    daemon = start_daemon(host, tmp_path)
    guest = create(host, "web1")
    assert [c["domid"] for c in daemon.statistics()["consoles"]] == [guest.domid]
    guest.write(b"booting\nhello ")
    guest.write(b"world\n")
    log = log_file(tmp_path, "web1")
    host.until(lambda: log.exists() and log.read_bytes() == b"booting\nhello world\n",
               "the output in the log")
    assert daemon.tail("web1", 10) == ["booting", "hello world"]
    assert daemon.tail("web1", 1) == ["hello world"]
    assert daemon.log_path("web1") == str(log)


def test_console_11_2_connection_set_and_guest_signalled_after_consuming(host, tmp_path):
    start_daemon(host, tmp_path)
    guest = create(host, "sig")
    guest.upcalls.clear()
    guest.write(b"x")
    host.pump()
    assert guest.upcalls == [guest.port]  # xenconsoled's notify frees the ring
    assert guest.intf.connection == 0  # XENCONSOLE_CONNECTED
    assert guest.intf.out_ring.cons == guest.intf.out_ring.prod == 1


def test_console_output_written_before_bind_is_drained_at_bind(host, tmp_path):
    start_daemon(host, tmp_path)
    guest = create(host, "early", introduce=False)
    assert guest.intf.write_out(b"early bird\n") == 11  # no notify: nobody has bound yet
    introduce_domain(host, guest)
    assert log_file(tmp_path, "early").read_bytes() == b"early bird\n"


def test_console_existing_domains_are_served_when_the_daemon_starts(host, tmp_path):
    guest = create(host, "before")
    guest.intf.write_out(b"up\n")
    daemon = start_daemon(host, tmp_path)
    assert daemon.tail("before", 5) == ["up"]


def test_console_7_4_ring_wraps_around_indices_and_buffer(host, tmp_path):
    daemon = start_daemon(host, tmp_path)
    guest = create(host, "wrap", introduce=False)
    guest.intf.out_ring.reset(0xFFFFFFFF - 700)  # the u32 indices wrap mid-stream
    introduce_domain(host, guest)
    data = b"".join(b"line %05d of the wrap test\n" % i for i in range(600))  # ~16 KiB
    sent = 0
    while sent < len(data):  # a guest writes what fits, then waits for xenconsoled's notify
        n = guest.intf.write_out(data[sent:sent + 1500])
        sent += n
        guest.upcalls.clear()
        guest.notify()
        host.until(lambda: guest.upcalls or guest.intf.out_ring.space() == OUT_SIZE,
                   "xenconsoled to drain the ring")
    assert len(data) > 4 * OUT_SIZE
    assert guest.intf.out_ring.prod < 0xFFFFFFFF - 700  # it did wrap
    host.until(lambda: log_file(tmp_path, "wrap").read_bytes() == data, "the whole log")
    assert daemon.tail("wrap", 2) == ["line 00598 of the wrap test",
                                      "line 00599 of the wrap test"]


def test_console_hostile_indices_drop_that_domain_and_others_keep_working(host, tmp_path):
    daemon = start_daemon(host, tmp_path)
    good, bad = create(host, "good"), create(host, "bad")
    local_bad = {c["domid"]: c["local_port"] for c in daemon.statistics()["consoles"]}[bad.domid]
    bad.set_index(OUT_CONS, 10)
    bad.set_index(OUT_PROD, 10 + OUT_SIZE + 1)  # prod - cons > size
    bad.notify()
    host.pump()
    stats = daemon.statistics()
    assert stats["hostile"] == 1 and stats["refused"] == [bad.domid]
    assert [c["domid"] for c in stats["consoles"]] == [good.domid]
    assert port_status(host, bad.domid, bad.port) == EvtchnStat.unbound  # we closed ours
    assert port_status(host, 0, local_bad) == EvtchnStat.closed
    later = create(host, "later")  # another fire: the hostile domain is not picked up again
    assert bad.domid in daemon.statistics()["refused"]
    assert [c["domid"] for c in daemon.statistics()["consoles"]] == [good.domid, later.domid]
    good.write(b"still here\n")
    host.until(lambda: log_file(tmp_path, "good").read_bytes() == b"still here\n",
               "the good domain's output")
    destroy(host, bad)
    assert daemon.statistics()["refused"] == []  # forgotten with the domain


def test_console_release_unmaps_and_closes_port_and_tail_comes_from_the_file(host, tmp_path):
    daemon = start_daemon(host, tmp_path)
    guest = create(host, "gone")
    guest.write(b"last words\n")
    host.pump()
    local = daemon.statistics()["consoles"][0]["local_port"]
    destroy(host, guest)
    stats = daemon.statistics()
    assert stats["consoles"] == [] and stats["disconnected"] == 1
    assert port_status(host, 0, local) == EvtchnStat.closed
    assert daemon.tail("gone", 5) == ["last words"]  # read back from the log file
    assert daemon.tail("never-existed", 5) == []


def test_console_domain_the_hypervisor_no_longer_lists_is_dropped_at_the_next_fire(host,
                                                                                  tmp_path):
    daemon = start_daemon(host, tmp_path)
    crashed = create(host, "crashed")
    host.xl(Hypercall.domctl, Domctl.destroydomain, domain=crashed.domid)  # xenstore kept
    create(host, "next")
    assert [c["name"] for c in daemon.statistics()["consoles"]] == ["next"]


def test_console_domain_without_console_nodes_is_picked_up_on_a_later_fire(host, tmp_path):
    daemon = start_daemon(host, tmp_path)
    guest = create(host, "slow", console_nodes=False)
    assert daemon.statistics()["consoles"] == []
    write_console_nodes(host, guest)
    create(host, "other")
    assert {c["name"] for c in daemon.statistics()["consoles"]} == {"slow", "other"}


def kill_daemon(host) -> None:
    """The actor dies: no clean-up (its ports stay bound, its pages mapped); what is sent to
    its endpoint until the next incarnation registers is lost."""
    host.endpoints.pop(CONSOLED)


def test_console_restarted_daemon_closes_its_stale_port_and_binds_again(host, tmp_path):
    first = start_daemon(host, tmp_path)
    guest = create(host, "survivor")
    guest.write(b"one\n")
    host.pump()
    kill_daemon(host)
    second = start_daemon(host, tmp_path)
    stats = second.statistics()
    assert stats["stale_closed"] == 1 and [c["domid"] for c in stats["consoles"]] == [guest.domid]
    local = stats["consoles"][0]["local_port"]
    peer = host.xl(Hypercall.event_channel_op, EvtchnOp.status, dom=guest.domid, port=guest.port)
    assert (peer["status"], peer["interdomain_dom"], peer["interdomain_port"]) == (
        EvtchnStat.interdomain, 0, local)  # bound again, to the new incarnation's port
    assert first.statistics()["bytes"] == 4  # the dead one took nothing after its death
    guest.write(b"two\n")
    host.until(lambda: log_file(tmp_path, "survivor").read_bytes() == b"one\ntwo\n",
               "output after the restart")


def test_console_output_written_while_the_daemon_was_down_reaches_the_same_log(host, tmp_path):
    """The ring keeps what the guest wrote during the outage; the new incarnation drains it
    from the indices the dead one left, appends it to the same file, and its tail starts with
    the lines logged before the crash."""
    start_daemon(host, tmp_path)
    guest = create(host, "outage")
    guest.write(b"before 1\nbefore 2\n")
    host.pump()
    kill_daemon(host)
    guest.write(b"during 1\nduring 2\n")  # its notify reaches nobody
    host.pump()
    assert guest.intf.out_ring.available() == 18  # still in the ring
    daemon = start_daemon(host, tmp_path)
    assert log_file(tmp_path, "outage").read_bytes() == b"before 1\nbefore 2\nduring 1\nduring 2\n"
    assert guest.intf.out_ring.available() == 0
    guest.write(b"after\n")
    host.until(lambda: daemon.tail("outage", 5)[-1:] == ["after"], "the line after")
    assert daemon.tail("outage", 5) == ["before 1", "before 2", "during 1", "during 2", "after"]
    assert log_file(tmp_path, "outage").read_bytes().endswith(b"during 2\nafter\n")


def test_console_domains_born_or_gone_during_the_outage(host, tmp_path):
    """The restarted daemon serves the domain created while it was down and not the one
    destroyed meanwhile (whose Dom0 port the dead instance never closed: ``xenray audit``
    names it)."""
    start_daemon(host, tmp_path)
    doomed = create(host, "doomed")
    kill_daemon(host)
    destroy(host, doomed)
    newborn = create(host, "newborn")
    newborn.intf.write_out(b"first words\n")
    daemon = start_daemon(host, tmp_path)
    assert [c["name"] for c in daemon.statistics()["consoles"]] == ["newborn"]
    assert daemon.tail("newborn", 5) == ["first words"]
    assert daemon.tail("doomed", 5) == []  # it never wrote: no file


def test_console_renamed_domain_is_found_after_a_restart(host, tmp_path):
    """A migration renames ``<name>--incoming`` to ``<name>``: a restarted daemon picks the
    domain up under its current name (its log by that name, as Xen's xenconsoled), and a
    rename after the restart is followed too."""
    start_daemon(host, tmp_path)
    guest = create(host, "web--incoming")
    guest.write(b"on the old name\n")
    host.pump()
    host.xs.write(f"/local/domain/{guest.domid}/name", "web")
    kill_daemon(host)
    daemon = start_daemon(host, tmp_path)
    guest.write(b"hello\n")
    host.until(lambda: daemon.tail("web", 5) == ["hello"], "web's output")
    assert daemon.log_path("web") == str(log_file(tmp_path, "web"))
    host.xs.write(f"/local/domain/{guest.domid}/name", "web2")
    guest.write(b"renamed\n")
    host.until(lambda: daemon.tail("web2", 5) == ["hello", "renamed"], "web2's output")


def test_console_tail_keeps_the_last_200_lines_and_a_partial_line(host, tmp_path):
    daemon = start_daemon(host, tmp_path)
    guest = create(host, "chatty")
    for i in range(300):
        guest.write(b"%d\n" % i)
    guest.write(b"prompt> ")
    host.pump()
    tail = daemon.tail("chatty", 1000)
    assert len(tail) == 201 and tail[0] == "100" and tail[-2:] == ["299", "prompt> "]


def test_console_file_tail_reads_only_the_end_of_a_big_log(tmp_path):
    path = tmp_path / "big.log"
    path.write_bytes(b"".join(b"%06d\r\n" % i for i in range(50000)) + b"partial")
    assert file_tail(path, 3) == ["049998", "049999", "partial"]
    assert file_tail(path, 0) == []
