"""The embedded cluster is closed to strangers (DESIGN.md "Security"): every Ray server of it
listens on loopback only, so a client coming through this machine's external address is
refused, and a client on this machine without the cluster's token is refused by Ray's token
authentication."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest


def _external_addresses() -> list[str]:
    return [a for a in subprocess.run(["hostname", "-I"], capture_output=True,
                                      text=True).stdout.split()
            if not a.startswith("127.") and a != "::1"]


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (the daemon's GCS, raylets, workers, agents)."""
    found, stack = set(), [pid]
    while stack:
        p = stack.pop()
        found.add(p)
        for task in pathlib.Path(f"/proc/{p}/task").glob("*"):
            try:
                stack += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket those processes listen on (/proc/net/tcp*)."""
    inodes = set()
    for pid in pids:
        for fd in pathlib.Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in pathlib.Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


def _cluster_listeners(cluster_home) -> list[tuple[str, int]]:
    daemon = json.loads((cluster_home / "run" / "cluster.json").read_text())["pid"]
    return _listening(_descendants(daemon))


def test_security_every_server_of_the_cluster_listens_on_loopback_only(xen, cluster_home):
    """Every TCP socket any process of the cluster listens on (the GCS, each raylet and
    object manager, every worker, Ray's agents): loopback only."""
    listeners = _cluster_listeners(cluster_home)
    assert len(listeners) >= 7, listeners  # at least the GCS and each node's two servers
    assert {a for a, _ in listeners} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listeners
    assert xen.address.startswith("127.0.0.1:")


def test_security_a_client_through_the_external_address_is_refused(xen, cluster_home):
    external = _external_addresses()
    assert external, "this machine has no external address to try"
    ports = sorted({port for _, port in _cluster_listeners(cluster_home)})
    for port in ports:  # reachable here, on loopback...
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    for address in external:  # ... refused from outside
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        for port in ports:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                with pytest.raises(ConnectionRefusedError):
                    s.connect((address, port))


def test_security_a_client_without_the_token_is_refused(xen):
    """A driver joining on loopback with authentication off (no token) is turned away."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN",
                                                             "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="disabled", RAY_gcs_server_port_wait_time_s="1",
               RAY_gcs_rpc_server_connect_timeout_s="1", RAY_py_gcs_connect_timeout_s="2",
               HOME=os.environ.get("TMPDIR", "/tmp"))  # no ~/.ray/auth_token to fall back on
    code = ("import ray\n"
            f"ray.init(address={xen.address!r}, namespace='xenray', log_to_driver=False)\n"
            "print('JOINED', ray.nodes() is not None)\n")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert got.returncode != 0 and "JOINED" not in got.stdout
    assert "InvalidAuthToken" in got.stderr or "authentication" in got.stderr.lower(), \
        got.stderr[-2000:]
