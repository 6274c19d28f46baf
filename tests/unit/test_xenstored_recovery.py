"""A killed xenstored restarts from its journal (issue 12, "Recovery"; Xen's live update keeps
the same things, ``docs/designs/xenstore-migration.md``), on the in-process host: the real
hypervisor and xenstored shells, real clients (``XsClient``) over the host's transport, a real
journal in files, a real Unix socket.

A kill here is what SIGKILL leaves: the old shell gets no more messages (what was sent to it
meanwhile is lost), the kernel closes its sockets, and its files stay as they are (its journal
is closed without a checkpoint; its socket file stays behind). The restart is what Ray does:
the shell built again with the same arguments and ``recover=True``.
"""

import os
import shutil
import socket
import tempfile
import threading

import pytest

from actors.transport import PeerGone
from actors.transport.xs_client import XsClient
from actors.xenstored.actor import XenstoredShell
from actors.xenstored.journal import read_frames
from protocols.errno import Errno, XenError
from protocols.hypercall import Domctl, Hypercall
from protocols.libxl_types import DomainConfig
from protocols.xenstore.paths import RELEASE_DOMAIN, domain_path
from protocols.xenstore.wire import XsDecoder, XsType, make_request, parse_reply
from tests.inprocess import HOST, REGISTRY, XENSTORED, XL, domain_endpoint
from tests.waits import wait_until

TOOLS = f"{HOST}/tools"  # a Dom0 process of the test's own, with its xenstore connection


class Xenstored:
    """The host's xenstored, journalled under ``prefix``: killed and started again."""

    def __init__(self, host, prefix: str, socket_path: str | None = None) -> None:
        self.host, self.prefix, self.socket_path = host, prefix, socket_path
        host.endpoints.pop(XENSTORED, None)  # the host's own, which keeps nothing
        self.shell = self._start(recover=False)  # a boot, as boot_host starts it

    def _start(self, recover: bool) -> XenstoredShell:
        shell = XenstoredShell(HOST, self.host.clients(XENSTORED), self.host.secret0,
                               self.socket_path, self.host.log, state=self.prefix,
                               recover=recover)
        self.host.endpoints[XENSTORED] = shell.deliver
        return shell

    def kill(self) -> None:
        self.host.endpoints.pop(XENSTORED)
        if self.shell.unix is not None:
            self.shell.unix.stop()  # the kernel closes the dead process's sockets...
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(self.socket_path)  # ...and its socket file stays behind
            stale.close()
        self.shell.durable.close()

    def start(self) -> XenstoredShell:
        self.shell = self._start(recover=True)
        return self.shell

    def restart(self) -> XenstoredShell:
        self.kill()
        return self.start()

    def state(self) -> dict:
        """Everything the store keeps (its operation counters aside)."""
        saved = self.shell.server.save()["store"]
        return {k: v for k, v in saved.items() if k not in ("ops", "eagain")}


class Client:
    """A process with its own endpoint and xenstore connection; records its watch events."""

    def __init__(self, host, endpoint: str, domid: int = 0, secret: str | None = None) -> None:
        self.xs = host.clients(endpoint, domid, secret).xs
        self.events: list[tuple[str, str]] = []
        host.start(endpoint, {"xs_event": self.xs.on_event})

    def watch(self, path: str, token: str) -> None:
        self.xs.watch(path, token, lambda p, t: self.events.append((p, t)))

    def take(self) -> list[tuple[str, str]]:
        events, self.events = self.events, []
        return events


@pytest.fixture
def prefix(tmp_path):
    return str(tmp_path / "xenstored")


@pytest.fixture
def xenstored(host, prefix):
    xs = Xenstored(host, prefix)
    yield xs
    xs.shell.close()


def domu(host, tools: Client):
    """A paused DomU introduced as libxl does it (its home is its own); its client."""
    domid, secret = host.create_domain(16)
    home = domain_path(domid)
    tools.xs.mkdir(home)
    tools.xs.set_perms(home, [f"n{domid}"])
    host.introduce(domid, secret)
    return domid, secret, Client(host, domain_endpoint(domid), domid, secret)


def lost_writes(acknowledged: dict[str, bytes], xs) -> list[str]:
    """The checker of "committed writes survive": the paths whose acknowledged value a
    restarted xenstored does not give back."""
    lost = []
    for path, value in acknowledged.items():
        try:
            if xs.read(path) != value:
                lost.append(path)
        except XenError:
            lost.append(path)
    return lost


def acknowledged_writes(tools: Client, n: int) -> dict[str, bytes]:
    """``n`` writes, half of them in committed transactions; what each was acknowledged with."""
    acked = {}
    for i in range(n):
        path, value = f"/acked/{i}", f"v{i}".encode()
        if i % 2:
            tools.xs.transact(lambda tx, p=path, v=value: tools.xs.write(p, v, tx))
        else:
            tools.xs.write(path, value)
        acked[path] = value
    return acked


# --- committed state survives -------------------------------------------------------------

def test_committed_writes_survive_a_kill_exactly(host, xenstored):
    """Everything acknowledged is back, node for node, generation for generation: writes,
    mkdir, rm, permissions, committed transactions (an aborted or conflicting one left no
    trace), a domain's own nodes, quotas, introduced domains and every watch."""
    tools = Client(host, TOOLS)
    domid, secret, guest = domu(host, tools)
    tools.xs.write("/a/b", "1")
    tools.xs.mkdir("/a/empty")
    tools.xs.write("/gone/x", "doomed")
    tools.xs.rm("/gone")
    tools.xs.set_perms("/a/b", ["n0", f"r{domid}"])
    tools.xs.transact(lambda tx: (tools.xs.write("/t/1", "in", tx), tools.xs.rm("/a/empty", tx)))
    with pytest.raises(XenError):
        with tools.xs.transaction() as tx:
            tools.xs.write("/aborted", "never", tx)
            raise XenError(Errno.EINVAL, "the caller gives up")
    tx = tools.xs.request(XsType.TRANSACTION_START)
    tools.xs.read("/a/b", tx)
    tools.xs.write("/a/b", "2")  # conflicts with tx
    tools.xs.write("/conflicted", "never", tx)
    with pytest.raises(XenError, match="EAGAIN"):
        tools.xs.request(XsType.TRANSACTION_END, True, tx_id=tx)
    guest.xs.write("data/mine", "guest's")
    tools.xs.request(XsType.SET_QUOTA, None, "node-size", 3000)
    tools.watch("/a", "a-watch")
    guest.watch("data", "rel")
    before = xenstored.state()
    xenstored.restart()
    assert xenstored.state() == before
    assert xenstored.shell.server.store.quota.node_size == 3000
    assert tools.xs.read("/a/b") == b"2" and tools.xs.read("/t/1") == b"in"
    for gone in ("/aborted", "/conflicted", "/gone", "/a/empty"):
        with pytest.raises(XenError, match="ENOENT"):
            tools.xs.read(gone)
    assert guest.xs.read("data/mine") == b"guest's"  # its credential came back too
    xenstored.restart()  # and again: a recovery leaves a journal the next one reads
    assert xenstored.state() == before
    stats = host.call(XENSTORED, "statistics")["durable"]
    assert stats["recovered"]["records"] == 0 and stats["recovered"]["damage"] is None


def journal_files(prefix: str) -> dict[str, bytes]:
    files = {}
    for suffix in (".ckpt", ".log"):
        with open(prefix + suffix, "rb") as f:
            files[suffix] = f.read()
    return files


def test_the_checker_passes_a_whole_journal_and_fails_one_that_lost_a_record(host, xenstored):
    tools = Client(host, TOOLS)
    acked = acknowledged_writes(tools, 12)
    xenstored.kill()
    files = journal_files(xenstored.prefix)
    xenstored.start()
    assert lost_writes(acked, tools.xs) == []
    # The same journal, but one record in the middle of the log is lost.
    xenstored.kill()
    frames, _ = read_frames(files[".log"])
    cut = next(i for i, (_, record, _) in enumerate(frames)
               if record[0] == "req" and b"/acked/4\0" in record[2])
    log = files[".log"][:frames[cut - 1][2]] + files[".log"][frames[cut][2]:]
    for suffix, data in ((".ckpt", files[".ckpt"]), (".log", log)):
        with open(xenstored.prefix + suffix, "wb") as f:
            f.write(data)
    xenstored.start()
    assert lost_writes(acked, tools.xs) == [f"/acked/{i}" for i in range(4, 12)]
    damage = host.call(XENSTORED, "statistics")["durable"]["recovered"]["damage"]
    assert damage.startswith("record ") and "is missing" in damage


# --- transactions, watches and requests in flight -----------------------------------------

def test_a_transaction_open_at_the_kill_gets_eagain_and_transact_runs_it_again(host, xenstored):
    tools = Client(host, TOOLS)
    tools.xs.write("/counter", "0")
    tx = tools.xs.request(XsType.TRANSACTION_START)
    tools.xs.write("/counter", "100", tx)
    xenstored.restart()
    tools.xs.read("/counter", tx)  # its next operations run (reading the committed tree)...
    with pytest.raises(XenError, match="EAGAIN"):  # ...and its commit fails, as a conflict's
        tools.xs.request(XsType.TRANSACTION_END, True, tx_id=tx)
    assert tools.xs.read("/counter") == b"0"
    runs = []

    def increment(tx: int) -> None:
        runs.append(tx)
        value = int(tools.xs.read("/counter", tx))
        if len(runs) == 1:
            xenstored.restart()  # killed in the middle of the transaction
        tools.xs.write("/counter", str(value + 1), tx)

    tools.xs.transact(increment)
    assert len(runs) == 2 and tools.xs.read("/counter") == b"1"


def test_each_watch_fires_once_on_restart_and_as_before_afterwards(host, xenstored):
    tools = Client(host, TOOLS)
    domid, secret, guest = domu(host, tools)
    tools.watch("/w", "abs")
    tools.watch(RELEASE_DOMAIN, "rel")
    guest.watch("data", "relative")
    host.pump()
    tools.take(), guest.take()
    xenstored.restart()
    host.pump()
    assert tools.take() == [("/w", "abs"), (RELEASE_DOMAIN, "rel")]
    assert guest.take() == [("data", "relative")]  # a relative watch: a relative path
    tools.xs.write("/w/x", "1")
    guest.xs.write("data/y", "2")
    host.pump()
    assert tools.take() == [("/w/x", "abs")] and guest.take() == [("data/y", "relative")]


def request_bytes(type_: XsType, *args, req_id: int, tx_id: int = 0) -> bytes:
    return make_request(type_, *args, req_id=req_id, tx_id=tx_id).pack()


def reply_of(data: bytes):
    (msg,) = [m for m in XsDecoder().feed(data) if m.type != XsType.WATCH_EVENT]
    return parse_reply(msg)


def test_a_request_whose_reply_died_with_xenstored_is_answered_not_run_again(host, xenstored):
    """The client sends the same bytes again on the same connection (XsClient does): the
    restarted xenstored answers from its journal, so a commit is not applied twice, a
    TRANSACTION_START gives the same id (no transaction leaks), a WATCH is not EEXIST."""
    tools = Client(host, TOOLS)
    tools.xs.write("/n", "1")
    handle = lambda data: xenstored.shell.connections.handle(0, host.secret0, TOOLS, data)  # noqa: E731
    tx = int(reply_of(handle(request_bytes(XsType.TRANSACTION_START, req_id=900))))
    handle(request_bytes(XsType.WRITE, "/n", b"2", req_id=901, tx_id=tx))
    commit = request_bytes(XsType.TRANSACTION_END, True, req_id=902, tx_id=tx)
    start = request_bytes(XsType.TRANSACTION_START, req_id=903)
    watch = request_bytes(XsType.WATCH, "/n", "late", None, req_id=904)
    served = [reply_of(handle(data)) for data in (commit, start, watch)]  # never delivered
    xenstored.restart()
    assert [reply_of(handle(data)) for data in (commit, start, watch)] == served
    assert tools.xs.read("/n") == b"2"
    assert xenstored.shell.server.statistics().store.transactions == 1  # the one start
    again = request_bytes(XsType.TRANSACTION_END, True, req_id=902, tx_id=tx)
    with pytest.raises(XenError, match="ENOENT"):  # answered once; now it is a new request
        reply_of(handle(again))


def test_a_client_waits_for_the_restarted_xenstored_then_goes_on(threaded_host, prefix):
    xenstored = Xenstored(threaded_host, prefix)
    try:
        tools = Client(threaded_host, TOOLS)
        tools.xs.write("/before", "1")
        xenstored.kill()
        done = threading.Event()
        writer = threading.Thread(target=lambda: (tools.xs.write("/during", "2"), done.set()),
                                  daemon=True)
        writer.start()
        wait_until(lambda: tools.xs.reconnects > 0, "the write to find xenstored gone")
        assert not done.is_set()
        xenstored.start()
        writer.join(timeout=30)
        assert done.is_set() and tools.xs.read("/during") == b"2"
        assert tools.xs.read("/before") == b"1"
    finally:
        xenstored.shell.close()


def test_a_client_gives_up_once_its_reconnect_window_has_passed(host, xenstored):
    xs = XsClient(host, HOST, 0, host.secret0, TOOLS, reconnect_s=0.2)
    xenstored.kill()
    with pytest.raises(PeerGone):
        xs.write("/x", "1")
    assert xs.reconnects >= 1
    xenstored.start()


# --- what the old process held outside the store ------------------------------------------

def raw_request(sock: socket.socket, type_: XsType, *args) -> object:
    sock.sendall(request_bytes(type_, *args, req_id=1))
    decoder = XsDecoder()
    while True:
        data = sock.recv(65536)
        assert data, "xenstored closed the connection"
        replies = [m for m in decoder.feed(data) if m.type != XsType.WATCH_EVENT]
        if replies:
            return parse_reply(replies[0])


def test_socket_clients_lose_their_connection_and_find_the_new_socket(host, prefix):
    tmp = tempfile.mkdtemp(dir="/tmp", prefix="xsr-")  # a socket path holds 107 bytes
    try:
        xenstored = Xenstored(host, prefix, os.path.join(tmp, "socket"))
        old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old.settimeout(10)
        old.connect(xenstored.socket_path)
        raw_request(old, XsType.WRITE, "/from-socket", b"kept")
        raw_request(old, XsType.WATCH, "/from-socket", "socket-watch", None)
        xenstored.kill()
        while data := old.recv(65536):  # the watch's event, then the end: the connection
            assert data[:4] == bytes([XsType.WATCH_EVENT, 0, 0, 0])  # went with the process
        xenstored.start()  # the stale socket file is replaced
        new = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        new.settimeout(10)
        new.connect(xenstored.socket_path)
        assert raw_request(new, XsType.READ, "/from-socket") == b"kept"
        assert xenstored.shell.server.statistics().store.watches == 0  # its watch is gone
        new.close()
        old.close()
        xenstored.shell.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_domain_that_died_while_xenstored_was_down_is_released_on_recovery(host, xenstored):
    """Its VIRQ_DOM_EXC went to nobody: the new xenstored asks the hypervisor once, forgets
    the domain (its nodes and its credential) and fires @releaseDomain."""
    tools = Client(host, TOOLS)
    domid, secret, guest = domu(host, tools)
    guest.xs.write("data/x", "1")
    tools.watch(RELEASE_DOMAIN, "rel")
    tools.take()
    xenstored.kill()
    host.xl(Hypercall.domctl, Domctl.destroydomain, domain=domid)
    host.pump()  # VIRQ_DOM_EXC to a dead xenstored: lost
    port = xenstored.shell.dom_exc_port
    assert xenstored.start().dom_exc_port == port  # the port outlived the process
    host.pump()
    # One firing for the watch's re-registration, one for the release.
    assert tools.take() == [(RELEASE_DOMAIN, "rel")] * 2
    assert domid not in [d.domid for d in xenstored.shell.server.store.domains()]
    with pytest.raises(XenError, match="ENOENT"):
        tools.xs.read(domain_path(domid))
    with pytest.raises(XenError, match="EACCES"):
        guest.xs.read("data/x")


def test_the_log_is_compacted_into_checkpoints_as_it_grows(host, xenstored):
    xenstored.shell.durable.compact_bytes = 2048
    tools = Client(host, TOOLS)
    acked = acknowledged_writes(tools, 60)
    durable = xenstored.shell.durable
    wait_until(lambda: durable.journal.size < 2048 and durable.stats["checkpoints"] >= 2,
               "the log to be compacted")  # the boot's checkpoint, then at least one more
    before = xenstored.state()
    xenstored.restart()
    assert xenstored.state() == before and lost_writes(acked, tools.xs) == []


def test_a_fresh_boot_ignores_an_old_journal_and_a_missing_or_bad_checkpoint(host, prefix):
    first = Xenstored(host, prefix)
    Client(host, TOOLS).xs.write("/old", "1")
    first.kill()
    fresh = Xenstored(host, prefix)
    with pytest.raises(XenError, match="ENOENT"):
        host.xs.read("/old")
    fresh.kill()
    for suffix in (".ckpt", ".log"):
        os.unlink(prefix + suffix)  # killed before its first checkpoint
    shell = fresh.start()
    assert shell.durable.stats["recovered"] is None and host.xs.read("/tool") == b""
    Client(host, TOOLS).xs.write("/new", "1")
    fresh.kill()
    with open(prefix + ".ckpt", "r+b") as f:  # a checkpoint that cannot be read
        f.write(b"\xff" * 8)
    shell = fresh.start()
    assert shell.durable.stats["lost"].startswith(prefix + ".ckpt")  # said so; serves, empty
    with pytest.raises(XenError, match="ENOENT"):
        host.xs.read("/new")
    shell.close()


# --- the toolstack and the guest across a restart -------------------------------------------

def test_xl_and_a_guest_keep_their_watches_across_a_restart(threaded_host, prefix):
    """The guest's control/shutdown watch and xl's @releaseDomain watch were registered with
    the old xenstored: after the restart a shutdown request still reaches the guest, xl still
    destroys the domain (on_poweroff), and a domain created afterwards boots."""
    host = threaded_host
    xenstored = Xenstored(host, prefix)
    try:
        host.start_toolstack()
        a = host.call(XL, "create", DomainConfig(name="a", memory=8, maxmem=8,
                                                 cmdline="init=idle").to_dict())
        xenstored.restart()
        host.call(XL, "shutdown", "a", "poweroff")
        host.until(lambda: host.call(REGISTRY, "lookup", "a") is None
                   and a["domid"] not in host.hypervisor.state.table.domains,
                   "a to power off and be destroyed", timeout=30)
        b = host.call(XL, "create", DomainConfig(name="b", memory=8, maxmem=8,
                                                 cmdline="init=idle").to_dict())
        assert host.xs.read(f"{domain_path(b['domid'])}/name") == b"b"
        host.call(XL, "destroy", "b")
    finally:
        xenstored.shell.close()
