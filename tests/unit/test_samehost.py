"""The same-host fast path: a client's SameHostTransport against the hypervisor's
HvPipeServer, over real /dev/shm pipes and FIFOs, with real threads (no Ray).

The fallback transport stands in for Ray: it answers ``open_hvpipe`` the way the
hypervisor's actor does and records whatever else it is asked to carry.
"""

import os
import threading
import time
import uuid

import pytest

from actors import log as xlog
from actors.hypervisor.hvpipes import HvPipeServer
from actors.transport import PeerGone
from actors.transport.hvpipe import RING_BYTES, HvPipe
from actors.transport.hypercall_client import Credential
from actors.transport.samehost import SameHostTransport
from tests.waits import wait_until

HV = "h1/hypervisor"


class Host:
    """A HvPipeServer whose calls run ``serve`` (default: echo), and a Ray stand-in."""

    def __init__(self, serve=None) -> None:
        self.served: list = []
        self.serve = serve or (lambda kind, args: ["echo", args])
        self.server = HvPipeServer(f"/dev/shm/xenray-test-{uuid.uuid4().hex[:10]}",
                                    {"hypercall": self._hypercall},
                                    xlog.setup(host="t", component="hv"))
        self.refuse = False
        self.carried: list = []
        self.conns = []

    def _hypercall(self, *args, pid=0):
        assert pid == os.getpid(), "the pipe names its client's process"
        self.served.append(list(args))
        return self.serve("hypercall", list(args))

    # the fallback (Ray) transport
    def call(self, dest, kind, *args, timeout=None):
        if kind == "open_hvpipe":
            if self.refuse:
                return {"rc": -1}
            _domid, _secret, endpoint, pid = args
            conn = self.server.open(endpoint, 0, pid)
            self.conns.append(conn)
            return {"rc": 0, "path": conn.pipe.path, "pid": pid}
        self.carried.append((dest, kind, args))
        return "by ray"

    def send(self, dest, kind, *args):
        self.carried.append((dest, kind, args))

    def forget(self, dest):
        pass

    def prefetch(self, dest):
        pass

    def client(self, endpoint="h1/blkback", deliver=None):
        events = []
        t = SameHostTransport(HV, Credential(0, "secret", endpoint),
                              deliver or (lambda kind, *a: events.append((kind, a))), self)
        return t, events

    def close(self):
        self.server.close()


@pytest.fixture
def host():
    h = Host()
    yield h
    h.close()


def test_samehost_hypercall_goes_through_the_pipe(host):
    t, _ = host.client()
    assert t.call(HV, "hypercall", 0, "secret", "h1/blkback", b"\x01") == \
        ["echo", [0, "secret", "h1/blkback", b"\x01"]]
    assert host.carried == [], "nothing went by Ray but the open"
    assert host.server.statistics()["calls"] == 1


def test_samehost_other_destinations_stay_on_ray(host):
    t, _ = host.client()
    assert t.call("h1/xenstored", "xs", 0, "s", "e", b"") == "by ray"
    t.send("h1/dom3", "upcall", 3, [1])
    assert host.carried == [("h1/xenstored", "xs", (0, "s", "e", b"")),
                            ("h1/dom3", "upcall", (3, [1]))]
    assert host.server.statistics()["opened"] == 0, "no pipe until the first hypercall"


def test_samehost_posted_hypercall_runs_in_order_and_gets_no_reply(host):
    t, _ = host.client()
    for i in range(50):
        t.send(HV, "hypercall", 0, "secret", "h1/blkback", bytes([i]))
    t.call(HV, "hypercall", 0, "secret", "h1/blkback", b"last")
    assert [a[3] for a in host.served] == [bytes([i]) for i in range(50)] + [b"last"]
    stats = host.server.statistics()
    assert (stats["posted_calls"], stats["calls"]) == (50, 1)


def test_samehost_upcalls_are_delivered_in_order(host):
    t, events = host.client()
    t.call(HV, "hypercall", 0, "secret", "h1/blkback", b"")  # opens the pipe
    for i in range(2000):
        assert host.server.send("h1/blkback", "upcall", 0, [i])
    wait_until(lambda: len(events) == 2000, "2000 upcalls")
    assert events == [("upcall", (0, [i])) for i in range(2000)]
    assert not host.server.send("h1/nobody", "upcall", 0, [1]), "no pipe: caller uses Ray"


def test_samehost_a_handler_may_make_hypercalls(host):
    answers = []

    def deliver(kind, *args):
        answers.append(t.call(HV, "hypercall", 0, "secret", "h1/xenstored", b"from handler"))

    t, _ = host.client("h1/xenstored", deliver)
    t.call(HV, "hypercall", 0, "secret", "h1/xenstored", b"open")
    host.server.send("h1/xenstored", "upcall", 0, [1])
    wait_until(lambda: answers, "the handler's own hypercall")
    assert answers == [["echo", [0, "secret", "h1/xenstored", b"from handler"]]]


def test_samehost_reply_is_read_while_the_handler_waits_on_the_caller(host):
    """The handler blocks on a lock the calling thread holds while it waits for its reply:
    the caller must read its own reply (the dispatcher cannot)."""
    lock = threading.Lock()
    entered, handled = threading.Event(), threading.Event()

    def deliver(kind, *args):
        entered.set()
        with lock:
            handled.set()

    t, _ = host.client(deliver=deliver)
    t.call(HV, "hypercall", 0, "secret", "h1/blkback", b"open")
    with lock:
        host.server.send("h1/blkback", "upcall", 0, [1])
        assert entered.wait(5), "the dispatcher took the upcall"  # and blocks on the lock
        assert t.call(HV, "hypercall", 0, "secret", "h1/blkback", b"x", timeout=5)[0] == "echo"
    assert handled.wait(5)


def test_samehost_refused_pipe_leaves_the_client_on_ray(host):
    host.refuse = True
    t, _ = host.client()
    assert t.call(HV, "hypercall", 0, "secret", "h1/blkback", b"") == "by ray"
    assert host.server.statistics()["opened"] == 0


def test_samehost_dropped_pipe_fails_the_waiting_call_then_reopens(host):
    release = threading.Event()
    host.serve = lambda kind, args: release.wait(10) and "late"
    t, _ = host.client()
    errors = []

    def caller():
        try:
            t.call(HV, "hypercall", 0, "secret", "h1/blkback", b"")
        except PeerGone as e:
            errors.append(e)

    th = threading.Thread(target=caller)
    th.start()
    wait_until(lambda: host.served, "the call to reach the server")
    host.server.drop(host.conns[0], "test")
    wait_until(lambda: errors, "the waiting caller to learn the pipe is gone")
    release.set()
    th.join(5)
    host.serve = lambda kind, args: "fresh"
    assert t.call(HV, "hypercall", 0, "secret", "h1/blkback", b"") == "fresh"
    assert host.server.statistics()["opened"] == 2


def _still_open(path: str) -> list[str]:
    """What this process (client and server alike) still holds of pipe ``path``: its
    doorbells' fds and mappings of its file."""
    names = {path, path + ".up", path + ".down"}
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.removesuffix(" (deleted)") in names:
            held.append(target)
    with open("/proc/self/maps") as f:
        held += [line for line in f
                 if line.split(None, 5)[5:] and
                 line.split(None, 5)[5].strip().removesuffix(" (deleted)") in names]
    return held


def test_samehost_a_dropped_pipe_is_closed_so_reconnects_leak_nothing(host):
    t, _ = host.client()
    for _ in range(3):
        assert t.call(HV, "hypercall", 0, "secret", "h1/blkback", b"")[0] == "echo"
        conn = host.conns[-1]
        assert _still_open(conn.pipe.path)
        host.server.drop(conn, "test")  # the client's dispatcher sees the closed flag at once
        wait_until(lambda: not _still_open(conn.pipe.path), "the dropped pipe's fds and maps")
    assert t.call(HV, "hypercall", 0, "secret", "h1/blkback", b"")[0] == "echo"
    assert host.server.statistics()["opened"] == 4


def test_samehost_call_times_out(host):
    release = threading.Event()
    host.serve = lambda kind, args: release.wait(10)
    t, _ = host.client()
    t.send(HV, "hypercall", 0, "secret", "h1/blkback", b"")  # opens; the server now blocks
    with pytest.raises(TimeoutError):
        t.call(HV, "hypercall", 0, "secret", "h1/blkback", b"", timeout=0.2)
    release.set()


def test_samehost_server_backlogs_for_a_client_that_does_not_read(host):
    conn = host.server.open("h1/dom7", 7, 1)
    reader = HvPipe(conn.pipe.path, hypervisor=False)
    n = 3 * RING_BYTES // 100
    for i in range(n):
        host.server.send("h1/dom7", "upcall", 7, [i, b"\0" * 80])
    assert host.server.statistics()["backlogged"] > 0
    got = []
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        reader.wait(0.1)
        got += reader.receive()
    assert [m[2][1][0] for m in got] == list(range(n))


def test_samehost_hostile_client_loses_its_pipe_only(host):
    good, _ = host.client("h1/dom1")
    good.call(HV, "hypercall", 1, "s", "h1/dom1", b"")
    conn = host.server.open("h1/dom2", 2, 1)
    evil = HvPipe(conn.pipe.path, hypervisor=False)
    evil.write(evil.frame("not [seq, kind, args]"))
    wait_until(lambda: host.server.statistics().get("dropped", 0) == 1, "the hostile pipe drop")
    assert evil.closed
    assert good.call(HV, "hypercall", 1, "s", "h1/dom1", b"still")[0] == "echo"


def test_samehost_only_hypercalls_may_come_up_a_pipe(host):
    conn = host.server.open("h1/dom2", 2, 1)
    client = HvPipe(conn.pipe.path, hypervisor=False)
    client.write(client.frame([9, "boot_dom0", [64]]))
    replies = []
    deadline = time.monotonic() + 5
    while not replies and time.monotonic() < deadline:
        client.wait(0.1)
        replies += client.receive()
    assert replies and replies[0][:2] == [9, False]
    assert host.served == []
