"""The control socket's protocol (cluster.control) over a real Unix socket, without Ray: what
a command sends, what comes back (intermediate messages, one answer), failures said in one line
with their type and errno, and a client that goes away in the middle of a stream."""

import os
import socket
import stat
import threading
import time

import pytest
import structlog

from cluster.api import DomainNotFound
from cluster.control import ControlError, ControlServer, DaemonGone, request
from protocols.errno import Errno, XenError
from tests.waits import wait_until


class Answers:
    """What the daemon's cluster answers here: the operations the control table calls."""

    hosts = ["h1", "h2"]

    def __init__(self) -> None:
        self.stopped_capture = threading.Event()
        self.stopped_follow = threading.Event()

    def list(self, errors):
        errors["h1"] = "host h1 does not answer: its xl is not running"
        return [{"name": "web", "host": "h2"}]

    def pause(self, name):
        raise DomainNotFound(name)

    def destroy(self, name):
        raise XenError(Errno.EBUSY, f"{name!r} is being built\nsecond line")

    def unpause(self, name):
        raise RuntimeError("a bug")

    def follow_console(self, name, lines=20, poll=0.25, stop=lambda: False):
        yield "last line"
        wait_until(stop, "the client to hang up", timeout=30)  # an idle domain prints nothing
        self.stopped_follow.set()

    def capture(self, host, bridge, out, seconds=None, progress=None):
        try:
            for n in range(1000):
                progress(n)
                time.sleep(0.01)
            return 1000
        finally:
            self.stopped_capture.set()


@pytest.fixture
def server(tmp_path):
    stop = threading.Event()
    answers = Answers()
    srv = ControlServer(answers, tmp_path / "x.sock", structlog.get_logger(), stop.set)
    srv.answers, srv.stop = answers, stop
    yield srv
    srv.close()


def test_control_answers_with_the_value_and_the_daemons_time(server):
    value, seconds = request(server.path, "hosts")
    assert value == ["h1", "h2"] and 0 <= seconds < 5
    value, _ = request(server.path, "list")
    assert value == {"rows": [{"name": "web", "host": "h2"}],
                     "errors": {"h1": "host h1 does not answer: its xl is not running"}}


def test_control_socket_is_private(server):
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600


def test_control_failures_cross_as_one_line_with_type_and_errno(server):
    with pytest.raises(ControlError) as e:
        request(server.path, "pause", {"name": "nosuch"})
    assert (e.value.kind, str(e.value)) == ("DomainNotFound", "no domain named 'nosuch'")
    with pytest.raises(ControlError) as e:
        request(server.path, "destroy", {"name": "web"})
    assert e.value.errno == Errno.EBUSY
    assert str(e.value) == "EBUSY: 'web' is being built; second line"
    with pytest.raises(ControlError) as e:
        request(server.path, "unpause", {"name": "web"})
    assert str(e.value) == "internal error: RuntimeError: a bug" and not e.value.expected
    with pytest.raises(ControlError) as e:
        request(server.path, "format_disk", {})
    assert "unknown operation 'format_disk'" in str(e.value)


def test_control_streams_progress_and_stops_when_the_client_goes(server):
    seen = []

    def on_message(m):
        seen.append(m["progress"])
        if len(seen) == 5:
            raise KeyboardInterrupt  # Ctrl-C in the CLI: it closes the socket

    with pytest.raises(KeyboardInterrupt):
        request(server.path, "capture", {"host": "h1", "bridge": "xenbr0", "out": "/dev/null"},
                on_message=on_message)
    assert seen == [0, 1, 2, 3, 4]
    assert server.answers.stopped_capture.wait(10), "the daemon kept capturing for nobody"
    assert request(server.path, "hosts")[0] == ["h1", "h2"], "and goes on serving others"


def test_control_follow_ends_when_the_client_hangs_up_on_an_idle_domain(server):
    def on_message(m):
        assert m == {"line": "last line"}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        request(server.path, "follow", {"name": "idle1"}, on_message=on_message)
    assert server.answers.stopped_follow.wait(10), "the daemon kept following for nobody"


def test_control_garbage_on_the_socket_harms_nobody(server):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(server.path))
        s.sendall(b"\xff\xff\xff\xffnot msgpack")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(server.path))
        s.sendall(b"\x00\x00\x00\x03abc")
    for torn in (b"\x00\x00", b"\x00\x00\x00\x09\x81"):  # a header, a body cut short
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(server.path))
            s.sendall(torn)
    assert request(server.path, "hosts")[0] == ["h1", "h2"]


def test_control_stop_op_and_no_daemon(server, tmp_path):
    request(server.path, "stop")
    assert server.stop.is_set()
    with pytest.raises(DaemonGone):
        request(tmp_path / "nobody.sock", "hosts")
