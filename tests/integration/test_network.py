"""Virtual networking end to end: netfront and netback over real rings, a learning bridge
per host, an uplink between hosts, real Ethernet frames a pcap capture shows to tshark, a
netback restart the guests survive, and hostile frontends that harm nobody else."""

import os
import re
import subprocess
import threading

import pytest
import ray

from actors.transport.naming import NAMESPACE, actor_name
from cluster.xlcfg import parse_config

REPLY = re.compile(r"icmp_seq=(\d+) ttl")


def nic_cfg(name: str, ip: str, extra: str):
    return parse_config(f'name = "{name}"\nmemory = 32\nvif = [ "ip={ip}" ]\n'
                        f'extra = "{extra}"\n')[0]


@pytest.fixture
def domains(xen):
    made = []

    def make(name, ip, extra, host):
        xen.create(nic_cfg(name, ip, extra), host=host)
        made.append(name)

    yield make
    for name in made:
        if xen.find(name) is not None:
            xen.destroy(name)


def result(xen, name, timeout=60):
    return xen.wait_for(lambda: xen.result(name), timeout, f"{name}'s result")


def wait_vif_connected(xen, name, timeout=30):
    """Until the domain's vif 0 is Connected at both ends (an idle guest's NIC comes up after
    its init has started; a ping sent before would be lost, as on real hardware)."""
    host, domid = xen.find(name)
    sock = next(h["xenstored_socket"] for h in xen.info() if h["host"] == host)
    paths = [f"/local/domain/0/backend/vif/{domid}/0/state",
             f"/local/domain/{domid}/device/vif/0/state"]

    def connected():
        got = subprocess.run(["xenstore-read", *paths], capture_output=True, text=True,
                             env={**os.environ, "XENSTORED_PATH": sock}, timeout=30)
        return got.stdout.split() == ["4", "4"]

    xen.wait_for(connected, timeout, f"{name}'s vif to connect")


def test_ping_between_domains_on_one_host_and_across_hosts(xen, domains):
    domains("pong1", "10.1.0.1", "init=idle", "h1")
    wait_vif_connected(xen, "pong1")
    domains("near", "10.1.0.2", "init=ping 10.1.0.1 count=4 interval=0.2", "h1")
    domains("far", "10.1.0.3", "init=ping 10.1.0.1 count=4 interval=0.2", "h2")
    for name in ("near", "far"):
        r = result(xen, name)
        assert (r["transmitted"], r["received"], r["loss_pct"]) == (4, 4, 0.0), r
        assert 0 < r["rtt_ms_min"] <= r["rtt_ms_avg"] <= r["rtt_ms_max"]
    assert any("64 bytes from 10.1.0.1: icmp_seq=4" in line for line in xen.console("far", 10))


def test_capture_of_a_ping_opens_in_tshark_with_arp_and_icmp(xen, domains, tmp_path):
    """tshark comes from Debian (.ci/run installs it)."""
    pcap = tmp_path / "xenbr0.pcap"
    domains("pong2", "10.2.0.1", "init=idle", "h2")
    wait_vif_connected(xen, "pong2")
    captured = {}
    t = threading.Thread(target=lambda: captured.setdefault(
        "n", xen.capture("h2", "xenbr0", pcap, seconds=6.0)))
    t.start()
    domains("pinger2", "10.2.0.2", "init=ping 10.2.0.1 count=3 interval=0.2", "h2")
    assert result(xen, "pinger2")["received"] == 3
    t.join(30)
    assert captured["n"] >= 8  # ARP request and reply, three echo requests and replies
    fields = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.protocols",
                             "-e", "arp.opcode", "-e", "icmp.type"],
                            capture_output=True, text=True, check=True)
    assert fields.stderr.strip() == "" or "warning" not in fields.stderr.lower()
    rows = [line.split("\t") for line in fields.stdout.splitlines()]
    protocols = [r[0] for r in rows]
    assert any(p.startswith("eth:ethertype:arp") for p in protocols)
    assert {r[1] for r in rows if r[1]} >= {"1", "2"}, "an ARP request and its reply"
    assert {r[2] for r in rows if r[2]} >= {"8", "0"}, "echo requests and replies"


def test_netback_restart_guests_reconnect_and_ping_again(xen, domains):
    domains("pong3", "10.3.0.1", "init=idle", "h1")
    domains("pinger3", "10.3.0.2", "init=ping 10.3.0.1 count=200 interval=0.1 timeout=0.5",
            "h1")

    def last_reply():
        seqs = [int(m.group(1)) for line in xen.console("pinger3", 8)
                if (m := REPLY.search(line))]
        return max(seqs, default=0)

    before = xen.wait_for(lambda: (s := last_reply()) >= 3 and s, 30, "the first replies")
    netback = ray.get_actor(actor_name("h1", "netback"), namespace=NAMESPACE)
    ray.kill(netback, no_restart=False)  # a crash: Ray restarts it, it recovers from xenstore
    after = xen.wait_for(lambda: (s := last_reply()) > before + 10 and s, 60,
                         "replies after the restart")
    assert after > before + 10
    stats = ray.get(ray.get_actor(actor_name("h1", "netback"), namespace=NAMESPACE)
                    .deliver.remote("statistics"))
    assert stats["recovered"] >= 2, stats  # both vifs adopted from xenstore


@pytest.mark.parametrize("mode", ["overflow", "chain"])
def test_hostile_netfront_is_disconnected_alone(xen, domains, mode):
    domains(f"pong4{mode}", f"10.4.{len(mode)}.1", "init=idle", "h2")
    domains(f"evil{mode}", f"10.4.{len(mode)}.9", f"init=nethostile mode={mode}", "h2")
    xen.wait_for(lambda: any("nethostile: published" in line
                             for line in xen.console(f"evil{mode}", 5)), 30, "the attack")
    domains(f"ok{mode}", f"10.4.{len(mode)}.2",
            f"init=ping 10.4.{len(mode)}.1 count=3 interval=0.2", "h2")
    assert result(xen, f"ok{mode}")["received"] == 3
    stats = ray.get(ray.get_actor(actor_name("h2", "netback"), namespace=NAMESPACE)
                    .deliver.remote("statistics"))
    assert stats["hostile"] >= 1, stats


def test_link_latency_between_hosts_shows_in_the_rtt(xen, domains):
    xen.set_link("h1", "h2", latency="25ms")
    try:
        assert {(r["from"], r["to"], r["latency_s"]) for r in xen.links()} >= {
            ("h1", "h2", 0.025), ("h2", "h1", 0.025)}
        domains("pong5", "10.5.0.1", "init=idle", "h1")
        wait_vif_connected(xen, "pong5")
        domains("far5", "10.5.0.2", "init=ping 10.5.0.1 count=3 interval=0.1", "h2")
        r = result(xen, "far5")
        assert r["received"] == 3 and r["rtt_ms_min"] >= 50.0, r  # 25 ms each way
    finally:
        xen.set_link("h1", "h2")  # back to unlimited


def test_vif_rate_limits_what_a_guest_can_send(xen):
    """xl.cfg's vif ``rate=`` (libxl writes "bytes,usec"; netback's transmit credit): a
    sender flat out gets about the rate through, held back on its ring, not dropped."""
    def cfg(name, vif, extra):
        return parse_config(f'name = "{name}"\nmemory = 64\nvif = [ "{vif}" ]\n'
                            f'extra = "init=udpstream {extra}"\n')[0]

    xen.create(cfg("slowrecv", "ip=10.6.0.1", "role=recv seconds=30"), host="h1")
    xen.create(cfg("slowsend", "ip=10.6.0.2,rate=100KB/s",
                   "role=send dst=10.6.0.1 size=1024 seconds=3"), host="h1")
    try:
        got = result(xen, "slowrecv", timeout=90)
        sent = result(xen, "slowsend")
    finally:
        xen.destroy("slowrecv")
        xen.destroy("slowsend")
    # 100 KB/s of 1066-byte frames is 96 frames/s: 0.78 Mbit/s of payload
    assert 0.3 < got["mbit_s"] < 1.0, got
    assert got["lost"] == 0 and got["packets"] == sent["packets"], (got, sent)
