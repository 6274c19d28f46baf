"""The real Xen tools against actors.xenstored over its Unix socket (reference 11.1 wire
format, 11.3 permissions, 11.4 transactions and watches, 19.7 xenstore semantics): Debian's
``xenstore-utils`` binaries pointed at it with ``XENSTORED_PATH``, and the ``pyxs`` client.
No Ray: the server runs in this process."""

import os
import random
import select
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from pyxs import Client

from actors.xenstored import UnixSocketServer, XenstoredServer
from actors.xenstored.server import TOOLSTACK
from protocols.xenstore.wire import HEADER, XsDecoder, XsMessage, XsType, make_request

TIMEOUT = 10.0


@pytest.fixture
def xenstored():
    """A running server on a short socket path (Unix socket paths hold 107 bytes)."""
    tmp = tempfile.mkdtemp(dir="/tmp", prefix="xs-")
    path = os.path.join(tmp, "run", "socket")
    server = XenstoredServer()
    try:
        with UnixSocketServer(server, path, max_output=64 * 1024) as sock:
            yield sock
        assert not os.path.exists(path)  # stop() removes the socket file
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def xs(xenstored, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XENSTORED_PATH=str(xenstored.path))
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def ok(xenstored, *argv: str) -> str:
    result = xs(xenstored, *argv)
    assert result.returncode == 0, result.stderr
    return result.stdout


class Lines:
    """Lines from a pipe, each waited for with a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, b""

    def next(self, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.fd], [], [], left)[0], "no line in time"
            chunk = os.read(self.fd, 4096)
            assert chunk, "the pipe closed"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def raw_client(xenstored) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(str(xenstored.path))
    return sock


def recv_message(sock: socket.socket) -> XsMessage:
    decoder = XsDecoder()
    while True:
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        messages = decoder.feed(data)
        if messages:
            return messages[0]


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) in time; what came first is read."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


# --- xenstore-utils -----------------------------------------------------------------------

def test_xenstore_utils_11_1_write_read_list_exists_rm(xenstored):
    ok(xenstored, "xenstore-write", "/a/b", "hello", "/a/c", "world")
    assert ok(xenstored, "xenstore-read", "/a/b") == "hello\n"
    assert ok(xenstored, "xenstore-list", "/a") == "b\nc\n"
    listing = ok(xenstored, "xenstore-ls", "/")
    assert 'a = ""\n b = "hello"\n c = "world"\n' in listing and "tool" in listing
    assert xs(xenstored, "xenstore-exists", "/a/b").returncode == 0
    ok(xenstored, "xenstore-rm", "/a/b")
    assert xs(xenstored, "xenstore-exists", "/a/b").returncode == 1
    missing = xs(xenstored, "xenstore-read", "/a/b")
    assert missing.returncode != 0 and "/a/b" in missing.stderr
    assert xenstored.server.store.read(TOOLSTACK, 0, "/a/c") == b"world"


def test_xenstored_core_c_canonicalize_xenstore_write_of_a_relative_path_on_the_socket(
        xenstored):
    """core.c ``canonicalize``: a socket connection's relative paths are under
    ``get_implicit_path``, ``/local/domain/<store domid>`` = ``/local/domain/0`` here."""
    ok(xenstored, "xenstore-write", "foo/bar", "1")
    assert ok(xenstored, "xenstore-read", "/local/domain/0/foo/bar") == "1\n"
    assert ok(xenstored, "xenstore-read", "foo/bar") == "1\n"


def test_xenstored_watch_c_xenstore_watch_of_a_relative_path_prints_relative_paths(xenstored):
    """watch.c: a relative watch (on a socket too) yields event paths relative to the home."""
    env = dict(os.environ, XENSTORED_PATH=str(xenstored.path))
    watcher = subprocess.Popen(["xenstore-watch", "w"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    try:
        lines = Lines(watcher.stdout.fileno())
        assert lines.next() == "w"
        ok(xenstored, "xenstore-write", "/local/domain/0/w/x", "1")
        assert lines.next() == "w/x"
    finally:
        watcher.kill()
        watcher.wait(timeout=TIMEOUT)
        watcher.stdout.close()


def test_xenstored_transaction_c_access_node_pyxs_rereads_the_value_of_its_first_read(
        xenstored):
    """test-xenstore.c "ta err": the second read inside the transaction returns the value of
    the first, though another connection changed it; the commit then fails (EAGAIN)."""
    path = str(xenstored.path)
    with Client(unix_socket_path=path) as c, Client(unix_socket_path=path) as d:
        c.write(b"/ta/a", b"a")
        c.transaction()
        assert c.read(b"/ta/a") == b"a"
        d.write(b"/ta/a", b"b")
        assert c.read(b"/ta/a") == b"a"
        assert c.commit() is False
        assert d.read(b"/ta/a") == b"b"


def test_xenstored_core_c_setup_structure_perms_as_pyxs_sees_them(xenstored):
    """core.c ``setup_structure``: ``/`` is ``[n0]`` (no DomU may read it); ``@releaseDomain``
    adds ``r<DOMID_ANY>`` (32757), ``@introduceDomain`` does not."""
    with Client(unix_socket_path=str(xenstored.path)) as client:
        assert client.get_perms(b"/") == [b"n0"]
        assert client.get_perms(b"@releaseDomain") == [b"n0", b"r32757"]
        assert client.get_perms(b"@introduceDomain") == [b"n0"]


def test_xenstore_utils_11_3_chmod_shows_in_ls_p_and_get_perms(xenstored):
    ok(xenstored, "xenstore-write", "/a/b", "hello")
    ok(xenstored, "xenstore-chmod", "/a/b", "n0", "r5")
    assert 'b = "hello"' in ok(xenstored, "xenstore-ls", "-p", "/a")
    assert "(n0,r5)" in ok(xenstored, "xenstore-ls", "-p", "/a")
    with Client(unix_socket_path=str(xenstored.path)) as client:
        assert client.get_perms(b"/a/b") == [b"n0", b"r5"]


def test_xenstore_utils_11_4_watch_prints_registration_then_changes(xenstored):
    env = dict(os.environ, XENSTORED_PATH=str(xenstored.path))
    watcher = subprocess.Popen(["xenstore-watch", "/w"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    try:
        lines = Lines(watcher.stdout.fileno())
        assert lines.next() == "/w"  # fires once on registration
        ok(xenstored, "xenstore-write", "/w/x", "1")
        assert lines.next() == "/w/x"
        ok(xenstored, "xenstore-rm", "/w")
        assert lines.next() == "/w"
    finally:
        watcher.kill()
        watcher.wait(timeout=TIMEOUT)
        watcher.stdout.close()


# --- pyxs ---------------------------------------------------------------------------------

def test_pyxs_11_4_read_write_transactions_and_watches(xenstored):
    path = str(xenstored.path)
    with Client(unix_socket_path=path) as c, Client(unix_socket_path=path) as d:
        c.write(b"/p/a", b"1")
        assert c.read(b"/p/a") == b"1" and c.list(b"/p") == [b"a"]
        c.transaction()
        c.write(b"/p/b", b"2")
        assert d.exists(b"/p/b") is False  # not before the commit
        assert c.commit() is True
        assert d.read(b"/p/b") == b"2"
        c.transaction()
        assert c.read(b"/p/a") == b"1"
        d.write(b"/p/a", b"other")
        c.write(b"/p/a", b"mine")
        assert c.commit() is False  # EAGAIN: retry the whole transaction
        assert d.read(b"/p/a") == b"other"
        monitor = c.monitor()
        monitor.watch(b"/p", b"tok")
        assert monitor.events.get(timeout=TIMEOUT) == (b"/p", b"tok")
        d.write(b"/p/c", b"3")
        assert monitor.events.get(timeout=TIMEOUT) == (b"/p/c", b"tok")
        monitor.close()


# --- 19.7 Failure isolation ---------------------------------------------------------------

def test_xenstore_19_7_garbage_and_oversized_payloads_close_only_their_sender(xenstored):
    with Client(unix_socket_path=str(xenstored.path)) as good:
        good.write(b"/g", b"before")
        noise = raw_client(xenstored)
        noise.sendall(random.Random(7).randbytes(3000))  # a header announcing > 4096 bytes
        assert closed_by_server(noise)
        junk = raw_client(xenstored)
        junk.sendall(XsMessage(9999, 5, 0, b"\x01\x02\x03").pack())
        assert recv_message(junk) == XsMessage(XsType.ERROR, 5, 0, b"ENOSYS\0")
        junk.sendall(XsMessage(XsType.READ, 6, 0, random.Random(8).randbytes(64)).pack())
        assert recv_message(junk) == XsMessage(XsType.ERROR, 6, 0, b"EINVAL\0")
        junk.sendall(HEADER.pack(XsType.WRITE, 7, 0, 4097))
        assert closed_by_server(junk)
        good.write(b"/g", b"after")
        assert good.read(b"/g") == b"after"
        assert ok(xenstored, "xenstore-read", "/g") == "after\n"
        noise.close()
        junk.close()
    assert xenstored.server.statistics().killed == 2


def test_xenstore_19_7_a_client_that_does_not_read_is_closed_alone(xenstored):
    ok(xenstored, "xenstore-write", "/big", "x" * 4000)
    with Client(unix_socket_path=str(xenstored.path)) as good:
        stalled = raw_client(xenstored)
        requests = b"".join(make_request(XsType.READ, "/big", req_id=i).pack()
                            for i in range(2000))  # 8 MB of replies it never reads
        try:
            stalled.sendall(requests)
        except (BrokenPipeError, ConnectionResetError):
            pass  # already closed for not reading
        deadline = time.monotonic() + TIMEOUT
        while xenstored.server.statistics().killed == 0:
            assert time.monotonic() < deadline, "the stalled client was never closed"
            time.sleep(0.01)
        assert good.read(b"/big") == b"x" * 4000
        stalled.close()
