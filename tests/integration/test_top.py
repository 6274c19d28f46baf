"""``xenray top`` as a user runs it against the session's cluster: a domain writing to its disk
while another pings it shows, from one sample to the next, its VBD_WR and its vif's counters
growing (NETTX, Dom0's vif sending it the echo requests, and NETRX, the replies), its memory
as configured, every host's Domain-0, and with ``--vcpus`` the pinger's two vCPUs' seconds;
in batch tables and in JSON lines."""

import json
import re
from itertools import pairwise

from cluster.xlcfg import parse_config
from tests.integration.conftest import cli

MEMORY_MIB = 32


def cfg(name, ip, extra, disk=None, vcpus=1):
    text = (f'name = "{name}"\nmemory = {MEMORY_MIB}\nvcpus = {vcpus}\nvif = [ "ip={ip}" ]\n'
            f'extra = "{extra}"\n')
    if disk is not None:
        text += f'disk = [ "{disk},raw,xvda,rw" ]\n'
    return parse_config(text)[0]


def busy(xen, domains, tmp_path):
    """``topio`` writes its disk (blkbench, one request at a time) and answers ``topping``'s
    pings, every 20 ms; returns once both are under way and both of topping's vCPUs are up."""
    image = tmp_path / "top.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    domains(cfg("topio", "10.14.0.2", "init=blkbench rw=write runtime=120 iodepth=1 size=4M",
                disk=image), "h1")
    domains(cfg("topping", "10.14.0.3",
                "init=ping 10.14.0.2 count=6000 interval=0.02 timeout=0.5", vcpus=2), "h1")

    def under_way():
        [h1] = [n for n in xen.xenstat() if n["host"] == "h1"]
        io, ping = (next(d for d in h1["domains"] if d["name"] == name)
                    for name in ("topio", "topping"))
        return (io["vbds"] and io["vbds"][0]["wr_reqs"] > 0 and io["networks"]
                and io["networks"][0]["rbytes"] > 0  # it has written, and answered a ping
                and [v["online"] for v in ping["vcpus"]] == [1, 1])

    xen.wait_for(under_way, 30, "topio to write and to answer pings, topping's vCPUs up")


def test_top_batch_json_and_table_show_a_busy_domains_counters_growing(xen, domains,
                                                                        cluster_home, tmp_path):
    busy(xen, domains, tmp_path)

    got = cli(cluster_home, "top", "-b", "-i", "2", "-d", "0.5", "--json", timeout=60)
    assert got.returncode == 0, got.stderr
    samples = [json.loads(line) for line in got.stdout.splitlines()]
    assert len(samples) == 2
    assert [h["host"] for h in samples[0]["hosts"]] == ["h1", "h2"]
    assert all(h["mem_total_k"] == 1024 * 1024 for h in samples[0]["hosts"])
    first, second = ({(d["host"], d["name"]): d for d in s["domains"]} for s in samples)
    assert {("h1", "Domain-0"), ("h2", "Domain-0"), ("h1", "topio"),
            ("h1", "topping")} <= set(second)
    a, b = first["h1", "topio"], second["h1", "topio"]
    assert a["mem_k"] == b["mem_k"] == MEMORY_MIB * 1024
    assert b["maxmem_k"] >= b["mem_k"] and b["vcpus"] == 1
    assert (b["nets"], b["vbds"]) == (1, 1)
    assert b["vbd_wr"] > a["vbd_wr"] > 0 and b["vbd_wsect"] > a["vbd_wsect"]
    assert b["nettx_bytes"] > a["nettx_bytes"] > 0, "Dom0's vif sends it the requests"
    assert b["netrx_bytes"] > a["netrx_bytes"] > 0, "and receives its replies"
    assert a["cpu_pct"] == 0.0, "no previous sample: xentop shows 0.0"
    assert b["cpu_ns"] >= a["cpu_ns"] and b["cpu_pct"] >= 0.0
    assert len(b["state"]) == 6 and set(b["state"]) <= set("dsbcpr-")
    ping = second["h1", "topping"]
    assert ping["vcpus"] == len(ping["vcpus_s"]) == 2 and ping["vcpus_s"][0] is not None
    assert second["h1", "Domain-0"]["vcpus_s"] == [], "Dom0's vCPUs are not scheduled here"

    got = cli(cluster_home, "top", "-b", "-i", "2", "-d", "0.5", "--vcpus", timeout=60)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    header = lines[0].split()
    assert header[:2] == ["NAME", "STATE"] and header[-2:] == ["SSID", "HOST"]
    assert len(header) == 20 and [line.split() for line in lines].count(header) == 2
    rows = [dict(zip(header, line.split())) for line in lines if line.split()[0] == "topio"]
    assert len(rows) == 2
    assert all(r["MEM(k)"] == str(MEMORY_MIB * 1024) and r["HOST"] == "h1" for r in rows)
    assert int(rows[1]["VBD_WR"]) > int(rows[0]["VBD_WR"]) > 0
    assert int(rows[1]["NETTX(k)"]) >= int(rows[0]["NETTX(k)"])
    assert all(r["NETS"] == "1" and r["VBDS"] == "1" for r in rows)
    vcpu_lines = [after for line, after in pairwise(lines) if line.split()[0] == "topping"]
    assert len(vcpu_lines) == 2
    assert all(re.fullmatch(r"VCPUs\(sec\):   0: +\d+s  1: +\d+s", v) for v in vcpu_lines)
