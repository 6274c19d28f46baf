"""``xenray bench``: costs measured beside a baseline taken in the same run.

These machines are shared and noisy, so every benchmark reports medians and a ratio to a
baseline measured moments before on the same cluster, never an absolute pass/fail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ray
from rich.console import Console
from rich.table import Table

from cluster.bench.blk import bench_blk
from cluster.bench.net import bench_net
from cluster.hosts import stop_host
from actors.transport.naming import NAMESPACE, actor_name, pin_to_host
from cluster.runtime import EmbeddedRay, connect


@ray.remote
class _Bare:
    """The baseline: a Ray actor whose method does nothing."""

    def noop(self, payload: bytes) -> bytes:
        return payload


@ray.remote
class _SameHostCaller:
    """A Dom0 process on the hypervisor's host: times null hypercalls over its pipe."""

    def __init__(self, hypervisor: str, secret: str) -> None:
        from actors.transport.samehost import SameHostTransport
        from actors.transport.hypercall_client import Credential, HypercallClient
        from actors.transport.raycall import RayTransport

        cred = Credential(0, secret, "h1/bench")
        self.call = HypercallClient(SameHostTransport(hypervisor, cred, lambda *a: None,
                                                      RayTransport()), hypervisor, cred)

    def time(self, n: int) -> list[float]:
        from protocols.hypercall import Hypercall, XenVersion

        lat = []
        for i in range(100 + n):
            t = time.perf_counter()
            self.call(Hypercall.xen_version, XenVersion.version)
            if i >= 100:  # after the warm-up (the first opens the pipe)
                lat.append((time.perf_counter() - t) * 1e6)
        return lat


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_hypercall(out: Console, a: argparse.Namespace, n: int = 2000) -> int:
    """Null hypercall (XENVER_version) round trip, over Ray and over the same-host pipe,
    vs a bare Ray actor round trip."""
    from actors.transport.hypercall_client import Credential, HypercallClient
    from actors.hypervisor.actor import HypervisorActor
    from actors.transport.raycall import RayTransport
    from protocols.hypercall import Hypercall, XenVersion

    run_id = f"bench{os.getpid()}"
    embedded = EmbeddedRay({"h1": {"cpus": 2}})
    try:
        connect(embedded.address)
        name = actor_name("h1", "hypervisor")
        hv = HypervisorActor.options(name=name, namespace=NAMESPACE, **pin_to_host("h1")).remote(
            "h1", 1024, 2, run_id, None)
        bare = _Bare.options(**pin_to_host("h1")).remote()
        secret = ray.get(hv.deliver.remote("boot_dom0", 64))
        call = HypercallClient(RayTransport(), name, Credential(0, secret, "bench"))
        payload = b"\x93\x11\x00\x80"  # the same size as the null hypercall's envelope
        results = {}
        with out.status(f"timing {n} round trips of each..."):
            for label, fn in (("bare Ray actor call", lambda: ray.get(bare.noop.remote(payload))),
                              ("null hypercall", lambda: call(Hypercall.xen_version,
                                                              XenVersion.version))):
                for _ in range(100):
                    fn()
                lat = []
                for _ in range(n):
                    t = time.perf_counter()
                    fn()
                    lat.append((time.perf_counter() - t) * 1e6)
                results[label] = lat
            caller = _SameHostCaller.options(**pin_to_host("h1")).remote(name, secret)
            results["null hypercall, same-host pipe"] = ray.get(caller.time.remote(n))
    finally:
        stop_host("h1", run_id=run_id)  # the hypervisor's /dev/shm files go with it
        embedded.shutdown()
    base = statistics.median(results["bare Ray actor call"])
    table = Table(title=f"hypercall round trip ({n} calls each)", header_style="bold")
    for col in ("path", "p50 µs", "p99 µs", "calls/s", "p50 ratio"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for label, lat in results.items():
        p50 = statistics.median(lat)
        table.add_row(label, f"{p50:.0f}", f"{_percentile(lat, 0.99):.0f}",
                      f"{1e6 / p50:.0f}", f"{p50 / base:.2f}x")
    out.print(table)
    return 0


def bench_create(out: Console, a: argparse.Namespace) -> int:
    """Domain creation latency for the 1st, 10th, 50th domain on one host, and domains/s."""
    from cluster.api import Cluster
    from cluster.xlcfg import parse_config

    n = a.domains
    lat = []
    with Cluster(hosts=1, host_memory_mib=64 * n + 512) as xen:
        with out.status(f"creating {n} domains on h1...") as status:
            t0 = time.perf_counter()
            for i in range(n):
                cfg, _ = parse_config(f'name="bench{i}"\nmemory=16\nextra="init=idle"\n')
                t = time.perf_counter()
                xen.create(cfg, host="h1")
                lat.append(time.perf_counter() - t)
                status.update(f"created {i + 1}/{n} domains")
            total = time.perf_counter() - t0
    table = Table(title=f"domain creation on one host ({n} domains)", header_style="bold")
    table.add_column("domain")
    table.add_column("latency s", justify="right")
    table.add_column("ratio to 1st", justify="right")
    for k in sorted({1, min(10, n), n}):
        table.add_row(f"#{k}", f"{lat[k - 1]:.2f}", f"{lat[k - 1] / lat[0]:.2f}x")
    out.print(table)
    out.print(f"median {statistics.median(lat):.2f} s per domain; "
              f"{n / total:.2f} domains/s overall")
    return 0


BENCHMARKS = {"hypercall": bench_hypercall, "create": bench_create, "blk": bench_blk,
              "net": bench_net}
