"""A host's fork server (``actors.forkserver``) with its real zygote and real forked
processes, over its real abstract Unix socket; the host's hypervisor and xenstored, which it
calls on its processes' behalf over Ray in a cluster, are :class:`Peers` here."""

import os
import pathlib
import uuid

import pytest
import structlog

from actors.forkserver.actor import ForkServer
from actors.transport import PeerGone
from actors.transport.relay import RelayClient, decode_error, encode_error
from protocols.errno import Errno, XenError
from tests.waits import wait_until


class Peers:
    """The host's hypervisor and xenstored as a relayed call reaches them: each call is
    recorded; ``fail`` raises xenstored's ENOENT, anything else echoes its arguments."""

    def __init__(self):
        self.calls = []

    def call(self, dest, kind, *args, timeout=None):
        self.calls.append((dest, kind, list(args)))
        if kind == "fail":
            raise XenError(Errno.ENOENT, "no such node")
        return {"echo": list(args)}

    def send(self, dest, kind, *args):
        self.calls.append((dest, kind, list(args)))

    def prefetch(self, dest):
        self.calls.append((dest, "prefetch", []))


@pytest.fixture(scope="module")
def server():
    s = ForkServer("t1", uuid.uuid4().hex[:8], None, Peers(), structlog.get_logger())
    yield s
    with s._cv:  # the test's own clients are not the server's to kill at close
        for component in [c for c, p in s._processes.items() if p.pid == os.getpid()]:
            del s._processes[component]
    s.on_close()


def parent(pid):
    return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_spawned_process_is_forked_by_the_zygote_answers_calls_and_dies_when_killed(server):
    component = server.on_spawn()
    pid = server.on_processes()[component]
    assert parent(pid) == server._zygote.pid and pid != os.getpid()
    assert server.on_relay(component, "process", [])["pid"] == pid
    with pytest.raises(RuntimeError, match="no handler for 'nosuch'"):
        server.on_relay(component, "nosuch", [])
    assert server.on_kill(component)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), "the killed process to be gone", 10)
    with pytest.raises(PeerGone):
        server.on_relay(component, "process", [])
    assert not server.on_kill(component), "nothing left to kill"


def connected(server, component, deliver=lambda kind, *args: (kind, list(args))):
    """A :class:`RelayClient` of this test process, connected and served on a thread."""
    import threading

    client = RelayClient(server.address, component, deliver, reconnect_s=0)
    client.connect()
    threading.Thread(target=client.serve, daemon=True).start()
    wait_until(lambda: component in server.on_processes(), "the hello", 10)
    return client


def test_a_process_s_calls_reach_its_hypervisor_and_xenstored_and_nobody_else(server):
    peers = server.transport
    assert {d for d, kind, _ in peers.calls if kind == "prefetch"} == {
        "t1/hypervisor", "t1/xenstored"}, "looked up when the server started"
    client = connected(server, "vm-test0001")
    assert client.call("t1/xenstored", "xs", 3, b"\x01\x02") == {"echo": [3, b"\x01\x02"]}
    with pytest.raises(XenError) as err:
        client.call("t1/xenstored", "fail")
    assert err.value.errno is Errno.ENOENT, "a XenError crosses as itself"
    before = len(peers.calls)
    with pytest.raises(XenError) as err:
        client.call("t1/xl", "destroy", "victim")
    assert err.value.errno is Errno.EPERM and len(peers.calls) == before
    client.send("t1/registry", "release", "victim")  # one-way, refused without a word
    client.send("t1/hypervisor", "hypercall", 7)
    wait_until(lambda: peers.calls[-1] == ("t1/hypervisor", "hypercall", [7]),
               "the one-way hypercall", 10)
    assert ("t1/registry", "release", ["victim"]) not in peers.calls
    assert server.on_relay("vm-test0001", "upcall", [3, [1, 2]]) == ["upcall", [3, [1, 2]]]


def test_a_hello_in_another_process_s_name_is_refused(server):
    component = server.on_spawn()
    pid = server.on_processes()[component]
    liar = RelayClient(server.address, component, lambda kind, *a: "hijacked", reconnect_s=0)
    liar.connect()
    liar.serve()  # returns: the server shut the connection
    assert server.on_processes()[component] == pid
    assert server.on_relay(component, "process", [])["pid"] == pid, "still the real one"
    server.on_kill(component)


def test_an_error_crosses_the_wire_as_what_callers_tell_apart():
    assert isinstance(decode_error(encode_error(PeerGone("h1/x"))), PeerGone)
    assert isinstance(decode_error(encode_error(TimeoutError("slow"))), TimeoutError)
    err = decode_error(encode_error(XenError(Errno.EAGAIN, "again")))
    assert isinstance(err, XenError) and err.errno is Errno.EAGAIN and err.detail == "again"
    assert "KeyError" in str(decode_error(encode_error(KeyError("k"))))
    assert isinstance(decode_error("garbage"), RuntimeError)
    assert decode_error(["XenError", 99999, "x"]).errno is Errno.EINVAL


def test_garbage_on_a_socket_closes_that_connection_and_no_other(server):
    import socket

    component = server.on_spawn()
    pid = server.on_processes()[component]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(server.address)
    sock.sendall(b"\xc1" * 64)  # 0xc1: never used in msgpack
    sock.settimeout(10)
    assert sock.recv(1) == b"", "the server closed the connection"
    sock.close()
    assert server.on_relay(component, "process", [])["pid"] == pid, "the server serves on"
    server.on_kill(component)


def test_a_zygote_killed_on_its_own_is_started_again_at_the_next_spawn(server):
    old = server._zygote.pid
    os.kill(old, 9)
    wait_until(lambda: server._zygote.poll() is not None, "the zygote to die", 10)
    component = server.on_spawn()
    assert server._zygote.pid != old
    assert parent(server.on_processes()[component]) == server._zygote.pid
    server.on_kill(component)


def test_a_process_cannot_answer_a_call_made_to_another(server):
    """Replies are taken only from the process the call went to: a liar sending a reply
    for every sequence number does not answer another process's call."""
    import socket
    import threading

    from actors.transport.relay import pack

    release = threading.Event()
    connected(server, "vm-slow0001", lambda kind, *args: release.wait(10) and "the real one")
    liar = connected(server, "vm-liar0001")
    answers = []
    caller = threading.Thread(target=lambda: answers.append(
        server.on_relay("vm-slow0001", "anything", [], 10)))
    caller.start()
    wait_until(lambda: server._pending._slots, "the call to wait", 10)
    for seq in range(1, 2000):
        liar._write(["reply", seq, True, "forged"])
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # and one with no hello
    stranger.connect(server.address)
    stranger.sendall(b"".join(pack(["reply", seq, True, "forged"]) for seq in range(1, 2000)))
    assert server.on_relay("vm-liar0001", "x", []) == ["x", []], "the liar's frames were read"
    assert answers == [], "no forged reply was taken"
    release.set()
    caller.join(10)
    assert answers == ["the real one"]
    stranger.close()


RESTARTED = """
import os, sys, structlog
from actors.forkserver.actor import ForkServer
class Peers:
    def call(self, *a, **k): return None
    def send(self, *a): pass
    def prefetch(self, dest): pass
s = ForkServer("t2", sys.argv[1], None, Peers(), structlog.get_logger())
c = s.on_spawn()
print(c, s.on_processes()[c], flush=True)
os._exit(0)  # as a SIGKILL would: no close; its zygote ends, its process lives on
"""


def test_a_restarted_server_knows_its_processes_before_they_connect_again(tmp_path):
    """The server's list outlives it (in /dev/shm): the next one kills a process that has
    not connected again yet, and refuses a hello in its name from another pid."""
    import subprocess
    import sys

    run_id = uuid.uuid4().hex[:8]
    first = subprocess.Popen([sys.executable, "-c", RESTARTED, run_id], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             cwd=pathlib.Path(__file__).parents[2])
    said = next(line for line in first.stdout if line.startswith("vm-"))  # after its log
    component, pid = said.split()[0], int(said.split()[1])
    first.wait(30)
    again = ForkServer("t2", run_id, None, Peers(), structlog.get_logger())
    try:
        assert again.on_processes() == {component: pid}, "known before it connects"
        liar = RelayClient(again.address, component, lambda kind, *a: "hijacked",
                           reconnect_s=0)
        liar.connect()
        liar.serve()  # returns: refused, the pid is not the one the last server forked
        wait_until(lambda: again._processes[component].sock is not None,
                   "the process to connect again", 30)
        assert again.on_relay(component, "process", [])["pid"] == pid
        assert again.on_kill(component)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), "the process to die", 10)
    finally:
        again.on_close()
    assert not pathlib.Path(again._state_path).exists(), "close leaves nothing in /dev/shm"
