"""``xenray bench net``: UDP packets/s and Mbit/s between two guests, beside a baseline.

One run measures, moments apart on the same machine:

1. **raw ring**: two OS processes passing the same frames through one ``/dev/shm`` netif tx
   ring (io/netif.h: 12-byte requests, 256 slots) with their data pages, eventfd doorbells and
   the notify hold-off; no grants, no bridge, no hypervisor: the ceiling of the split driver;
2. **xenray, one host**: ``udpstream`` from one PV guest to another on the same host's bridge
   (netfront, the hypervisor, netback, the bridge, netback, netfront);
3. **xenray, two hosts**: the same across the uplink between two hosts (over Ray).

The guests' rows are the receiver's own numbers (``udpstream role=recv``): what arrived.
"""

from __future__ import annotations

import argparse
import os
import time

from rich.console import Console

from cluster.bench.common import BenchResult
from cluster.bench.raw_ring import doorbell, forked_ring, mapped
from protocols.netif import TX_SLOT_SIZE, NetifTxRequest, NetifTxResponse
from protocols.page import PAGE_SIZE
from protocols.ring import BackRing, FrontRing

PAYLOAD = 1024  # UDP payload bytes per datagram
FRAME = PAYLOAD + 42  # + Ethernet, IPv4 and UDP headers
NR_PAGES = 256


# --- the raw ring baseline -------------------------------------------------------------------

def _ring_backend(path: str, kick_fd: int, notify_fd: int) -> None:
    """netback's tx loop without a bridge: copy each frame out of its page, answer OKAY."""
    with mapped(path, 1 + NR_PAGES) as view:
        back = BackRing(view[:PAGE_SIZE], TX_SLOT_SIZE)
        back.init()
        stop = False
        while not stop:
            reqs = back.get_requests(TX_SLOT_SIZE)
            if not reqs:
                if not back.final_check_for_requests():
                    doorbell(kick_fd)
                continue
            for raw in reqs:
                req = NetifTxRequest.unpack(raw)
                base = (1 + req.id) * PAGE_SIZE
                bytes(view[base:base + req.size])  # the copy netback makes
                back.put_response(NetifTxResponse(req.id, 0).pack())
                stop = stop or req.size == 0  # the last request
            if back.push_responses():
                os.eventfd_write(notify_fd, 1)
        back.release()


def bench_raw_ring(seconds: float) -> dict[str, float]:
    """Frames of ``FRAME`` bytes through the ring for ``seconds``: packets/s and Mbit/s."""
    with forked_ring(1 + NR_PAGES, _ring_backend, "net") as ring:
        view = ring.view
        front = FrontRing(view[:PAGE_SIZE], TX_SLOT_SIZE)
        front.init()
        frame = os.urandom(FRAME)
        free = list(range(NR_PAGES))

        def reap() -> None:
            """Take the answered slots back; wait for the doorbell if there are none."""
            got = front.get_responses()
            free.extend(NetifTxResponse.unpack(r).id for r in got)
            if not got and not front.final_check_for_responses():
                ring.wait()

        try:
            sent = 0
            t0 = now = time.perf_counter()
            while now - t0 < seconds:
                while free:
                    id_ = free.pop()
                    view[(1 + id_) * PAGE_SIZE:(1 + id_) * PAGE_SIZE + FRAME] = frame
                    front.put_request(NetifTxRequest(id_ + 8, 0, 0, id_, FRAME).pack())
                    sent += 1
                if front.push_requests():
                    os.eventfd_write(ring.kick, 1)
                reap()
                now = time.perf_counter()
            elapsed = now - t0
            while not free:  # the stop request needs a slot
                reap()
            front.put_request(NetifTxRequest(8, 0, 0, free.pop(), 0).pack())
            if front.push_requests():
                os.eventfd_write(ring.kick, 1)
        finally:
            front.release()
    return _row(sent, elapsed, 0)


def _row(packets: float, seconds: float, lost: float) -> dict[str, float]:
    pps = packets / seconds if seconds > 0 else 0.0
    return {"pps": pps, "mbit_s": pps * PAYLOAD * 8 / 1e6, "lost": lost}


# --- xenray: udpstream between two guests ----------------------------------------------------

def bench_guests(xen, send_host: str, recv_host: str, tag: str,
                 seconds: float) -> dict[str, float]:
    from cluster.xlcfg import parse_config

    net = {"same": 1, "cross": 2}[tag]
    rx_ip, tx_ip = f"10.99.{net}.1", f"10.99.{net}.2"
    names = (f"udprecv-{tag}", f"udpsend-{tag}")

    def cfg(name: str, ip: str, extra: str):
        return parse_config(f'name = "{name}"\nmemory = 64\nvif = [ "ip={ip}" ]\n'
                            f'extra = "init=udpstream {extra}"\n')[0]

    try:
        xen.create(cfg(names[0], rx_ip, f"role=recv seconds={seconds + 30:g}"), host=recv_host)
        xen.create(cfg(names[1], tx_ip, f"role=send dst={rx_ip} size={PAYLOAD} "
                                        f"seconds={seconds:g}"), host=send_host)
        got = xen.wait_for(lambda: xen.result(names[0]), seconds + 60, f"{names[0]}'s result")
        sent = xen.wait_for(lambda: xen.result(names[1]), 30, f"{names[1]}'s result")
    finally:
        for name in names:
            if xen.find(name) is not None:
                xen.destroy(name)
    row = _row(got["packets"], got["seconds"], got["lost"])
    row["offered_pps"] = sent["pps"]
    return row


def bench_net(out: Console, a: argparse.Namespace) -> BenchResult:
    from cluster.api import Cluster

    seconds = getattr(a, "runtime", 5.0)
    rows: dict[str, dict[str, float]] = {}
    with out.status("raw ring: two processes, one /dev/shm netif tx ring..."):
        rows["raw netif ring"] = bench_raw_ring(2.0)
    with out.status("starting a 2-host cluster...") as status, Cluster(hosts=2) as xen:
        status.update(f"xenray: udpstream between two guests on h1 for {seconds:g} s...")
        rows["xenray, 1 host"] = bench_guests(xen, "h1", "h1", "same", seconds)
        status.update(f"xenray: udpstream from h2 to h1 for {seconds:g} s...")
        rows["xenray, 2 hosts"] = bench_guests(xen, "h2", "h1", "cross", seconds)
    ring = rows["raw netif ring"]["pps"]
    table = [{"path": label, **r, "ring_ratio": ring / r["pps"] if r["pps"] else None}
             for label, r in rows.items()]
    return BenchResult("net", f"UDP, {PAYLOAD}-byte datagrams ({FRAME}-byte frames)",
                       [("path", "path", ""), ("pps", "pkt/s", ",.0f"),
                        ("mbit_s", "Mbit/s", ",.1f"), ("offered_pps", "sent pkt/s", ",.0f"),
                        ("lost", "lost", ",.0f"), ("ring_ratio", "ring ÷ path", ".1f")], table)
