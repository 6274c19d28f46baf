"""A SIGKILLed xenstored restarts from its journal (issue 12, "Recovery"), on the session
cluster, with real signals to its real process: a guest's disk keeps working while xenstored
answers nobody (stopped, then killed, then starting again); a write the real
``xenstore-write`` had acknowledged is read back by the real ``xenstore-read`` afterwards; a
socket client sees its connection close; and the watches registered before the kill still
work: xl cleans up a domain that crashes afterwards (``@releaseDomain``), and blkback
connects the disk of a domain created afterwards."""

import os
import signal
import socket
import subprocess

from actors.blkback.vbd import create_image
from actors.transport.naming import actor_name
from cluster.api import HostUnreachable
from cluster.xlcfg import parse_config
from protocols.xenstore.wire import XsDecoder, XsType, make_request

HOST = "h1"
NODE = "/local/domain/0/restart-test"
STREAM = "blkbench rw=randwrite bs=4096 iodepth=8 size=16M runtime=600"  # until it crashes


def disk_cfg(name: str, image, init: str):
    return parse_config(f'name = "{name}"\nmemory = 32\n'
                        f'disk = [ "{image},raw,xvda,rw" ]\non_crash = "destroy"\n'
                        f'extra = "init={init}"\n')[0]


def tool(sock: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env={**os.environ, "XENSTORED_PATH": sock},
                          capture_output=True, text=True, timeout=30, **kw)


def pid_of_xenstored(xen) -> int | None:
    """Its pid; None while Ray starts it again (a call then fails, as Ray says it is gone)."""
    try:
        return xen._call(HOST, "xenstored", "process")["pid"]
    except HostUnreachable:
        return None


def test_a_sigkilled_xenstored_restarts_from_its_journal(xen, domains, tmp_path):
    sock = next(h["xenstored_socket"] for h in xen.info() if h["host"] == HOST)
    image = tmp_path / "stream.img"
    create_image(image, 16 << 20)
    domid = domains(disk_cfg("xsr-stream", image, STREAM), HOST)["domid"]
    blkback = actor_name(HOST, "blkback")
    written = lambda: xen._transport.call(blkback, "statistics")["totals"].get("wr_req", 0)  # noqa: E731
    xen.wait_for(lambda: written() > 100, 60, "the write stream to be under way")
    assert tool(sock, "xenstore-write", NODE, "committed").returncode == 0
    watcher = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # xs_wire, as pyxs speaks it
    watcher.settimeout(60)
    watcher.connect(sock)
    watcher.sendall(make_request(XsType.WATCH, NODE, "w", None, req_id=1).pack())
    decoder, got = XsDecoder(), []
    while len(got) < 2:  # OK, then the event of its registration
        got += decoder.feed(watcher.recv(4096))
    assert [m.type for m in got] == [XsType.WATCH, XsType.WATCH_EVENT]

    old = xen._call(HOST, "xenstored", "process")["pid"]
    os.kill(old, signal.SIGSTOP)  # from here on xenstored answers nobody...
    try:
        stopped_at = written()
        xen.wait_for(lambda: written() > stopped_at + 200, 60,
                     "the guest's disk to go on without xenstored")
    finally:
        os.kill(old, signal.SIGKILL)  # ...then it dies (SIGKILL needs no SIGCONT)
    assert watcher.recv(4096) == b""  # its connection closed with the process
    watcher.close()
    new = xen.wait_for(lambda: pid_of_xenstored(xen), 60, "xenstored's new incarnation")
    assert new != old
    recovered = xen._call(HOST, "xenstored", "statistics")["durable"]["recovered"]
    assert recovered is not None and recovered["damage"] is None
    got = tool(sock, "xenstore-read", NODE)  # a new connection, on the replaced socket
    assert got.returncode == 0 and got.stdout == "committed\n", got.stderr
    restarted_at = written()
    xen.wait_for(lambda: written() > restarted_at + 200, 60, "the stream to go on")

    # xl's @releaseDomain watch, registered with the dead xenstored, still works: a crash
    # is noticed and on_crash = destroy carried out, xenstore directories and all.
    pid = next(r["pid"] for r in xen.list() if r["name"] == "xsr-stream")
    os.kill(pid, signal.SIGKILL)
    xen.wait_for(lambda: xen.find("xsr-stream") is None, 60, "the crashed domain's destroy")
    assert tool(sock, "xenstore-read", f"/local/domain/{domid}/name").returncode != 0

    # blkback's watch still works: a domain created now gets its disk connected.
    image2 = tmp_path / "after.img"
    create_image(image2, 4 << 20)
    domains(disk_cfg("xsr-after", image2, "blkverify blocks=32 iodepth=4"), HOST)
    result = xen.wait_for(lambda: xen.result("xsr-after"), 120, "the new domain's blkverify")
    assert result["verified"] == 32 and result["bad"] == []
