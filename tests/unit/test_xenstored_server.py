"""actors.xenstored.server: the xs_wire request loop over in-memory connections (reference
11.1 wire format and operations, 11.3 permissions and quotas, 11.4 transactions and watches,
19.7 xenstore semantics)."""

import itertools
import threading

import msgpack
import pytest

from actors.xenstored.connections import Connections
from actors.xenstored.server import QUOTA_NAMES, STORE_FEATURES, XenstoredServer
from protocols.errno import Errno, XenError
from protocols.xenstore.wire import (HEADER, DirectoryPart, XsDecoder, XsMessage, XsType,
                                     error_from_reply, make_request, parse_reply)


class Peer:
    """One connection and everything the server sent it."""

    def __init__(self, server: XenstoredServer, domid: int = 0, privileged: bool = True,
                 socket: bool = True) -> None:
        self.server = server
        self.decoder = XsDecoder()
        self.inbox: list[XsMessage] = []
        self.req_ids = itertools.count(1)
        self.broken = False  # its transport fails
        self.conn_id = server.open_connection(domid, privileged, self.receive, socket=socket)

    def receive(self, data: bytes) -> None:
        if self.broken:
            raise BrokenPipeError("the peer is gone")
        self.inbox.extend(self.decoder.feed(data))

    def feed(self, data: bytes) -> bool:
        return self.server.handle(self.conn_id, data)

    def request(self, type_: XsType, *args, tx_id: int = 0) -> XsMessage:
        """Send one request; return its reply (taken out of the inbox)."""
        req_id = next(self.req_ids)
        assert self.feed(make_request(type_, *args, req_id=req_id, tx_id=tx_id).pack())
        replies = [m for m in self.inbox if m.type != XsType.WATCH_EVENT]
        assert [m.req_id for m in replies] == [req_id]
        self.inbox.remove(replies[0])
        return replies[0]

    def call(self, type_: XsType, *args, tx_id: int = 0):
        return parse_reply(self.request(type_, *args, tx_id=tx_id))

    def errno(self, type_: XsType, *args, tx_id: int = 0) -> Errno:
        reply = self.request(type_, *args, tx_id=tx_id)
        assert reply.type == XsType.ERROR
        return error_from_reply(reply).errno

    def events(self) -> list[tuple[str, str]]:
        """The watch events received so far (taken out of the inbox)."""
        events = [m for m in self.inbox if m.type == XsType.WATCH_EVENT]
        assert all(m.req_id == 0 and m.tx_id == 0 for m in events)
        self.inbox = [m for m in self.inbox if m.type != XsType.WATCH_EVENT]
        return [parse_reply(m) for m in events]


@pytest.fixture
def server() -> XenstoredServer:
    return XenstoredServer()


@pytest.fixture
def dom0(server) -> Peer:
    """A Dom0 tool on the Unix socket, which sets up domains 5 and 6 as libxl does."""
    tools = Peer(server)
    for domid in (5, 6):
        home = f"/local/domain/{domid}"
        tools.call(XsType.MKDIR, home)
        tools.call(XsType.SET_PERMS, home, (f"n{domid}",))
    return tools


def domain(server: XenstoredServer, domid: int) -> Peer:
    return Peer(server, domid, privileged=False, socket=False)


# --- 11.1 Wire format and operations ------------------------------------------------------

def test_xenstore_11_1_replies_carry_the_request_ids_and_errors_their_name(server):
    tools = Peer(server)
    tx = tools.call(XsType.TRANSACTION_START)
    reply = tools.request(XsType.WRITE, "/a", b"v", tx_id=tx)
    assert (reply.type, reply.tx_id, reply.payload) == (XsType.WRITE, tx, b"OK\0")
    error = tools.request(XsType.READ, "/missing", tx_id=tx)
    assert (error.type, error.tx_id, error.payload) == (XsType.ERROR, tx, b"ENOENT\0")


def test_xenstore_11_1_read_write_mkdir_rm_directory(server):
    tools = Peer(server)
    assert tools.call(XsType.WRITE, "/a/b", b"hello") is None
    assert tools.request(XsType.READ, "/a/b").payload == b"hello"  # no trailing NUL
    tools.call(XsType.MKDIR, "/a/c")
    assert tools.request(XsType.DIRECTORY, "/a").payload == b"b\0c\0"
    tools.call(XsType.RM, "/a")
    assert tools.errno(XsType.READ, "/a/b") == Errno.ENOENT
    assert tools.errno(XsType.RM, "/x/y") == Errno.ENOENT  # the parent is missing too
    assert tools.call(XsType.GET_DOMAIN_PATH, 7) == "/local/domain/7"


def test_xenstore_11_1_directory_part_and_e2big_for_a_reply_too_long(server):
    tools = Peer(server)
    names = [f"child-{i:09d}" for i in range(300)]  # 16 bytes each: 4800 in all
    for name in names:
        tools.call(XsType.MKDIR, f"/big/{name}")
    assert tools.errno(XsType.DIRECTORY, "/big") == Errno.E2BIG
    first = tools.call(XsType.DIRECTORY_PART, "/big", 0)
    offset = sum(len(n) + 1 for n in first.children)
    rest = tools.call(XsType.DIRECTORY_PART, "/big", offset)
    assert isinstance(rest, DirectoryPart) and rest.complete and not first.complete
    assert first.children + rest.children == names


def test_xenstore_11_1_a_stream_cut_anywhere_is_reassembled(server):
    tools = Peer(server)
    stream = (make_request(XsType.WRITE, "/a", b"1", req_id=1).pack()
              + make_request(XsType.READ, "/a", req_id=2).pack())
    for i in range(len(stream) - 1):
        assert tools.feed(stream[i:i + 1])
    assert [m.req_id for m in tools.inbox] == [1]
    assert tools.feed(stream[-1:])
    assert [(m.req_id, m.payload) for m in tools.inbox] == [(1, b"OK\0"), (2, b"1")]


@pytest.mark.parametrize("type_", [99, XsType.RESTRICT, XsType.WATCH_EVENT, XsType.ERROR,
                                   XsType.INVALID])
def test_xenstore_11_1_an_unsupported_type_is_enosys(server, type_):
    tools = Peer(server)
    assert tools.feed(XsMessage(int(type_), 7, 0, b"/a\0").pack())
    assert tools.inbox == [XsMessage(XsType.ERROR, 7, 0, b"ENOSYS\0")]
    tools.inbox.clear()
    assert tools.call(XsType.WRITE, "/a", b"alive") is None


@pytest.mark.parametrize("type_, payload", [
    (XsType.READ, b"/a"),  # not NUL-terminated
    (XsType.WRITE, b"/a"),  # no NUL after the path
    (XsType.READ, b"/a\0/b\0"),  # two arguments
    (XsType.TRANSACTION_END, b"X\0"),
    (XsType.INTRODUCE, b"five\0" b"1\0" b"1\0"),
    (XsType.SET_PERMS, b"/a\0"),
    (XsType.READ, b"/caf\xc3\xa9\0"),
    (XsType.READ, b"a//b\0"),
])
def test_xenstore_11_1_a_malformed_request_is_einval_and_the_connection_lives(server, type_,
                                                                               payload):
    tools = Peer(server)
    assert tools.feed(XsMessage(int(type_), 3, 0, payload).pack())
    assert tools.inbox == [XsMessage(XsType.ERROR, 3, 0, b"EINVAL\0")]
    tools.inbox.clear()
    assert tools.call(XsType.WRITE, "/a", b"alive") is None


def test_xenstore_19_7_a_payload_over_4096_kills_only_that_connection(server, dom0):
    victim, bystander = Peer(server), Peer(server)
    victim.call(XsType.WATCH, "/a", "t", None)
    victim.call(XsType.TRANSACTION_START)
    bystander.call(XsType.WATCH, "/a", "t", None)
    assert server.store.statistics().watches == 2
    assert victim.feed(make_request(XsType.WRITE, "/a", b"x" * (4096 - 3)).pack())  # exactly 4096
    assert not victim.feed(HEADER.pack(XsType.WRITE, 9, 0, 4097))
    assert not victim.feed(make_request(XsType.READ, "/a").pack())  # closed for good
    stats = server.statistics()
    assert (stats.killed, stats.connections) == (1, 2)
    assert (stats.store.watches, stats.store.transactions) == (1, 0)
    assert bystander.call(XsType.READ, "/a") == b"x" * 4093


# --- 11.3 Permissions ---------------------------------------------------------------------

def test_xenstore_11_3_get_and_set_perms(server):
    tools = Peer(server)
    tools.call(XsType.WRITE, "/a/b", b"")
    tools.call(XsType.SET_PERMS, "/a/b", ("n0", "r5"))
    assert tools.request(XsType.GET_PERMS, "/a/b").payload == b"n0\0r5\0"
    assert tools.errno(XsType.SET_PERMS, "/a/b", ("x5",)) == Errno.EINVAL


def test_xenstore_11_1_relative_paths_of_a_domain_are_under_its_home(server, dom0):
    guest = domain(server, 5)
    guest.call(XsType.WRITE, "data/x", b"1")
    assert dom0.call(XsType.READ, "/local/domain/5/data/x") == b"1"
    assert guest.call(XsType.READ, "/local/domain/5/data/x") == b"1"
    assert dom0.errno(XsType.READ, "data/x") == Errno.ENOENT  # a socket's home is domain 0's
    dom0.call(XsType.WRITE, "data/x", b"0")
    assert guest.call(XsType.READ, "data/x") == b"1"
    assert dom0.call(XsType.READ, "/local/domain/0/data/x") == b"0"


def test_xenstore_11_3_a_domain_writing_under_another_domains_path_is_eacces(server, dom0):
    guest = domain(server, 5)
    assert guest.errno(XsType.WRITE, "/local/domain/6/x", b"1") == Errno.EACCES
    assert guest.errno(XsType.READ, "/local/domain/6") == Errno.EACCES
    assert guest.errno(XsType.WRITE, "/tool/x", b"1") == Errno.EACCES
    assert dom0.errno(XsType.READ, "/local/domain/6/x") == Errno.ENOENT


@pytest.mark.parametrize("type_, args", [
    (XsType.INTRODUCE, (7, 1, 1)), (XsType.RELEASE, (7,)), (XsType.RESUME, (7,)),
    (XsType.SET_TARGET, (7, 5)), (XsType.IS_DOMAIN_INTRODUCED, (7,)),
    (XsType.GET_QUOTA, (None, None)), (XsType.GET_QUOTA, (5, "nodes")),
    (XsType.SET_QUOTA, (None, "nodes", 5)), (XsType.CONTROL, ("help", b"")),
    (XsType.GET_FEATURE, (6,)), (XsType.SET_FEATURE, (6, 0)),
])
def test_xenstore_11_3_dom0_only_requests_are_eacces_for_a_domain(server, dom0, type_, args):
    assert domain(server, 5).errno(type_, *args) == Errno.EACCES


def test_xenstore_11_3_quotas_are_read_and_set_by_their_xen_names(server, dom0):
    server.introduce_domain(5)
    assert dom0.call(XsType.GET_QUOTA, None, None).split() == list(QUOTA_NAMES)
    assert dom0.call(XsType.GET_QUOTA, None, "node-size") == "2048"
    assert dom0.call(XsType.GET_QUOTA, 5, "watches") == "128"
    assert dom0.errno(XsType.GET_QUOTA, 9, "nodes") == Errno.ENOENT
    assert dom0.errno(XsType.GET_QUOTA, None, "bogus") == Errno.EINVAL
    assert dom0.errno(XsType.SET_QUOTA, 5, "nodes", 3) == Errno.ENOSYS
    dom0.call(XsType.SET_QUOTA, None, "node-size", 100)
    guest = domain(server, 5)
    assert guest.errno(XsType.WRITE, "big", b"x" * 100) == Errno.ENOSPC
    guest.call(XsType.WRITE, "small", b"x")
    assert XenstoredServer.restore(server.save()).store.quota.node_size == 100


def test_xenstore_features_and_control(server):
    tools = Peer(server)
    assert tools.call(XsType.GET_FEATURE, None) == STORE_FEATURES
    assert domain(server, 5).call(XsType.GET_FEATURE, None) == STORE_FEATURES
    assert tools.errno(XsType.SET_FEATURE, 5, 1) == Errno.ENOSYS
    assert b"print" in tools.call(XsType.CONTROL, "help", b"")
    assert tools.request(XsType.CONTROL, "print", b"hello\0").payload == b"OK\0"
    assert tools.errno(XsType.CONTROL, "live-update", b"") == Errno.EINVAL


# --- 11.4 Transactions and watches --------------------------------------------------------

def test_xenstore_11_4_an_intervening_write_from_another_connection_gives_eagain(server):
    a, b = Peer(server), Peer(server)
    a.call(XsType.WRITE, "/a", b"0")
    tx = a.call(XsType.TRANSACTION_START)
    assert a.call(XsType.READ, "/a", tx_id=tx) == b"0"
    a.call(XsType.WRITE, "/a/b", b"mine", tx_id=tx)
    b.call(XsType.WRITE, "/a", b"1")
    assert a.errno(XsType.TRANSACTION_END, True, tx_id=tx) == Errno.EAGAIN
    assert a.errno(XsType.READ, "/a", tx_id=tx) == Errno.ENOENT  # the id is gone
    assert b.errno(XsType.READ, "/a/b") == Errno.ENOENT
    tx = a.call(XsType.TRANSACTION_START)
    a.call(XsType.WRITE, "/a/b", b"mine", tx_id=tx)
    assert b.errno(XsType.READ, "/a/b", tx_id=tx) == Errno.ENOENT  # not b's transaction
    a.call(XsType.TRANSACTION_END, True, tx_id=tx)
    assert b.call(XsType.READ, "/a/b") == b"mine"


def test_xenstore_11_4_watch_events_go_to_the_owner_with_req_id_0_after_the_reply(server):
    owner, writer, other = Peer(server), Peer(server), Peer(server)
    owner.request(XsType.WATCH, "/a", "tok", None)
    assert [(m.type, m.req_id, m.payload) for m in owner.inbox] == [
        (XsType.WATCH_EVENT, 0, b"/a\0tok\0")]  # the OK came first (taken by request)
    owner.events()
    writer.call(XsType.WRITE, "/a/x", b"1")
    assert owner.events() == [("/a/x", "tok")]
    assert writer.events() == [] and other.events() == []
    tx = writer.call(XsType.TRANSACTION_START)
    writer.call(XsType.WRITE, "/a/y", b"2", tx_id=tx)
    assert owner.events() == []  # only at the commit
    writer.call(XsType.TRANSACTION_END, True, tx_id=tx)
    assert owner.events() == [("/a/y", "tok")]
    owner.call(XsType.UNWATCH, "/a", "tok")
    writer.call(XsType.WRITE, "/a/z", b"3")
    assert owner.events() == []
    assert server.statistics().watch_events == 3


def test_xenstore_11_4_a_relative_watch_of_a_domain_yields_relative_paths(server, dom0):
    guest = domain(server, 5)
    guest.call(XsType.WATCH, "data", "t", None)
    dom0.call(XsType.WRITE, "/local/domain/5/data/y", b"1")
    assert guest.events() == [("data", "t"), ("data/y", "t")]


def test_xenstore_11_4_introduce_and_release_fire_the_special_watches(server, dom0):
    dom0.call(XsType.WATCH, "@introduceDomain", "in", None)
    dom0.call(XsType.WATCH, "@releaseDomain", "out", 1)  # depth 1: names the domain
    assert dom0.events() == [("@introduceDomain", "in"), ("@releaseDomain", "out")]
    dom0.call(XsType.INTRODUCE, 5, 0x1234, 3)
    assert dom0.call(XsType.IS_DOMAIN_INTRODUCED, 5) is True
    assert dom0.events() == [("@introduceDomain", "in")]
    guest = domain(server, 5)
    guest.call(XsType.WRITE, "data/x", b"1")
    dom0.call(XsType.RELEASE, 5)
    assert dom0.events() == [("@releaseDomain/5", "out")]
    assert not guest.feed(make_request(XsType.READ, "data/x").pack())  # its connection is gone
    assert dom0.errno(XsType.READ, "/local/domain/5/data/x") == Errno.ENOENT  # its nodes too
    assert dom0.call(XsType.IS_DOMAIN_INTRODUCED, 5) is False


def test_xenstore_11_4_the_toolstack_introduces_shuts_down_resumes_and_destroys(server, dom0):
    dom0.call(XsType.WATCH, "@introduceDomain", "in", None)
    dom0.call(XsType.WATCH, "@releaseDomain", "out", None)
    dom0.events()
    server.introduce_domain(5)
    assert dom0.events() == [("@introduceDomain", "in")]
    server.fire_release_domain(shutdown=[5])
    server.fire_release_domain(shutdown=[5])  # once until RESUME
    assert dom0.events() == [("@releaseDomain", "out")]
    dom0.call(XsType.RESUME, 5)
    server.fire_release_domain(shutdown=[5])
    assert dom0.events() == [("@releaseDomain", "out")]
    guest = domain(server, 5)
    server.domain_gone(5)
    assert dom0.events() == [("@releaseDomain", "out")]
    assert not guest.feed(make_request(XsType.READ, "data").pack())
    server.domain_gone(9)  # never introduced: nothing to announce
    server.introduce_domain(6)
    dom0.call(XsType.RELEASE, 6)
    assert dom0.events() == [("@introduceDomain", "in"), ("@releaseDomain", "out")]
    assert dom0.errno(XsType.RELEASE, 6) == Errno.ENOENT  # once only


# --- Failure isolation, statistics, persistence -------------------------------------------

def test_xenstore_19_7_a_failing_send_closes_only_that_connection(server):
    writer, watcher = Peer(server), Peer(server)
    watcher.call(XsType.WATCH, "/a", "t", None)
    watcher.broken = True
    writer.call(XsType.WRITE, "/a/b", b"1")  # fires the broken watcher's event
    assert not watcher.feed(make_request(XsType.READ, "/a").pack())
    stats = server.statistics()
    assert (stats.connections, stats.killed, stats.store.watches) == (1, 1, 0)
    assert writer.call(XsType.READ, "/a/b") == b"1"


def test_xenstore_19_7_an_internal_failure_closes_only_that_connection(server, monkeypatch):
    victim, bystander = Peer(server), Peer(server)

    def bug(*args):
        raise RuntimeError("store bug")

    monkeypatch.setitem(server._ops, XsType.GET_PERMS, bug)
    assert not victim.feed(make_request(XsType.GET_PERMS, "/").pack())
    assert victim.inbox == []
    assert bystander.call(XsType.DIRECTORY, "/") == ["tool"]


def test_xenstore_concurrent_connections_are_serialised(server):
    peers = [Peer(server) for _ in range(4)]

    def work(i: int) -> None:
        for n in range(100):
            peers[i].call(XsType.WRITE, f"/c/{i}", str(n).encode())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [peers[0].call(XsType.READ, f"/c/{i}") for i in range(4)] == [b"99"] * 4


def test_xenstore_statistics_count_requests_errors_and_events(server):
    tools = Peer(server)
    tools.call(XsType.WATCH, "/a", "t", None)
    tools.call(XsType.WRITE, "/a", b"1")
    tools.errno(XsType.READ, "/b")
    tools.feed(XsMessage(99, 1, 0, b"").pack())
    stats = server.statistics()
    assert stats.requests == {"WATCH": 1, "WRITE": 1, "READ": 1, "INVALID": 1}
    assert stats.errors == {"ENOENT": 1, "ENOSYS": 1}
    assert (stats.watch_events, stats.connections, stats.store.nodes) == (2, 1, 6)


def test_xenstore_save_restore_keeps_the_store_and_drops_the_connections(server, dom0):
    dom0.call(XsType.WRITE, "/a", b"kept")
    dom0.call(XsType.WATCH, "/a", "t", None)
    dom0.call(XsType.TRANSACTION_START)
    server.introduce_domain(5)
    state = msgpack.unpackb(msgpack.packb(server.save()))
    restored = XenstoredServer.restore(state)
    stats = restored.statistics()
    assert (stats.connections, stats.store.watches, stats.store.transactions) == (0, 0, 0)
    assert stats.store.domains == 1
    tools = Peer(restored)
    assert tools.conn_id > dom0.conn_id  # never an old connection's id
    assert tools.call(XsType.READ, "/a") == b"kept"
    tools.call(XsType.WRITE, "/a", b"changed")
    assert tools.events() == []


# --- Connections: who may talk over the transport (actors.xenstored.connections) ----------

def read_name(domid: int) -> bytes:
    return make_request(XsType.READ, f"/local/domain/{domid}/name", req_id=1).pack()


def test_xenstored_connections_serve_introduced_domains_only_until_released(server):
    conns = Connections(server, push=lambda endpoint, data: None, dom0_secret="s0")
    with pytest.raises(XenError, match="not introduced"):
        conns.handle(5, "s5", "h1/dom5", read_name(5))
    conns.introduce(5, "s5", "h1/dom5")
    with pytest.raises(XenError, match="not introduced"):
        conns.handle(5, "forged", "h1/dom5", read_name(5))
    reply = XsDecoder().feed(conns.handle(5, "s5", "h1/dom5", read_name(5)))
    assert [m.req_id for m in reply] == [1] and server.statistics().connections == 1
    conns.release(5)
    assert server.statistics().connections == 0
    with pytest.raises(XenError, match="not introduced"):
        conns.handle(5, "s5", "h1/dom5", read_name(5))


def test_xenstored_a_request_racing_release_leaves_no_connection_behind(server):
    """The release lands just after the request looked up its credential: the request must
    not then make a connection that the release can no longer close."""
    conns = Connections(server, push=lambda endpoint, data: None, dom0_secret="s0")
    conns.introduce(5, "s5", "h1/dom5")
    releases: list[threading.Thread] = []

    class ReleasedOnLookup(dict):
        def get(self, domid, default=None):
            cred = super().get(domid, default)
            if domid == 5 and not releases:
                releases.append(threading.Thread(target=conns.release, args=(5,)))
                releases[0].start()
                if not conns._lock.locked():  # looked up outside the lock: release runs now
                    releases[0].join()
            return cred

    conns._creds = ReleasedOnLookup(conns._creds)
    try:
        conns.handle(5, "s5", "h1/dom5", read_name(5))
    except XenError:
        pass  # refused: the release came first
    releases[0].join(10)
    assert not releases[0].is_alive()
    assert server.statistics().connections == 0
    with pytest.raises(XenError, match="not introduced"):
        conns.handle(5, "s5", "h1/dom5", read_name(5))
