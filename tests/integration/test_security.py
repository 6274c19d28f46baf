"""The embedded cluster is closed to strangers (DESIGN.md "Security"): every Ray server of it
listens on loopback only, so a client coming through this machine's external address is
refused, and a client on this machine without the cluster's token is refused by Ray's token
authentication."""

import os
import socket
import subprocess
import sys

import pytest
import ray


def _external_addresses() -> list[str]:
    return [a for a in subprocess.run(["hostname", "-I"], capture_output=True,
                                      text=True).stdout.split()
            if not a.startswith("127.") and a != "::1"]


def _cluster_ports(xen) -> list[int]:
    """The GCS's port, and each node's raylet and object manager ports."""
    ports = [int(xen.address.rsplit(":", 1)[1])]
    for node in ray.nodes():
        if node.get("Alive"):
            ports += [node["NodeManagerPort"], node["ObjectManagerPort"]]
    return ports


def test_security_the_cluster_listens_on_loopback_only(xen):
    addresses = [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]
    assert addresses and set(addresses) == {"127.0.0.1"}
    assert xen.address.startswith("127.0.0.1:")


def test_security_a_client_through_the_external_address_is_refused(xen):
    external = _external_addresses()
    assert external, "this machine has no external address to try"
    ports = _cluster_ports(xen)
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
