"""``xenray bench hypercall``: a null hypercall over Ray and over the same-host pipe, beside a
bare Ray actor call measured in the same run."""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ray
from rich.console import Console

from actors.guest.blk import percentile
from actors.transport import launch
from actors.transport.hypercall_client import Credential, HypercallClient
from actors.transport.naming import actor_name, pin_to_host
from actors.transport.raycall import RayTransport
from cluster.bench.common import Bare, BenchResult
from cluster.hosts import stop_host
from cluster.runtime import EmbeddedRay, connect
from protocols.hypercall import Hypercall, XenVersion

CALLS = 2000
WARMUP = 100


@ray.remote
class _SameHostCaller:
    """A Dom0 process on the hypervisor's host: times null hypercalls over its pipe."""

    def __init__(self, hypervisor: str, secret: str) -> None:
        from actors.transport.samehost import SameHostTransport

        cred = Credential(0, secret, "h1/bench")
        self.call = HypercallClient(SameHostTransport(hypervisor, cred, lambda *a: None,
                                                      RayTransport()), hypervisor, cred)

    def time(self, n: int) -> list[float]:
        return _time(lambda: self.call(Hypercall.xen_version, XenVersion.version), n)


def _time(fn, n: int) -> list[float]:
    """Latencies in µs of ``n`` calls of ``fn``, after a warm-up (the first opens the pipe)."""
    for _ in range(WARMUP):
        fn()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - t) * 1e6)
    return lat


def bench_hypercall(out: Console, a: argparse.Namespace) -> BenchResult:
    """Null hypercall (XENVER_version) round trip, over Ray and over the same-host pipe,
    vs a bare Ray actor round trip."""
    run_id = f"bench{os.getpid()}"
    embedded = EmbeddedRay({"h1": {"cpus": 2}})
    results: dict[str, list[float]] = {}
    try:
        connect(embedded.address)
        hv = launch.start("hypervisor", "h1", "hypervisor", "h1", 1024, 2, run_id, None)
        bare = Bare.options(**pin_to_host("h1")).remote()
        secret = launch.ask(hv, "boot_dom0", 64)
        name = actor_name("h1", "hypervisor")
        call = HypercallClient(RayTransport(), name, Credential(0, secret, "bench"))
        payload = b"\x93\x11\x00\x80"  # the same size as the null hypercall's envelope
        with out.status(f"timing {CALLS} round trips of each..."):
            results["bare Ray actor call"] = _time(lambda: ray.get(bare.noop.remote(payload)),
                                                   CALLS)
            results["null hypercall over Ray"] = _time(
                lambda: call(Hypercall.xen_version, XenVersion.version), CALLS)
            caller = _SameHostCaller.options(**pin_to_host("h1")).remote(name, secret)
            results["null hypercall, same-host pipe"] = ray.get(caller.time.remote(CALLS))
    finally:
        stop_host("h1", run_id=run_id)  # the hypervisor's /dev/shm files go with it
        embedded.shutdown()
    base = statistics.median(results["bare Ray actor call"])
    rows = []
    for label, lat in results.items():
        p50 = statistics.median(lat)
        rows.append({"path": label, "p50_us": p50, "p99_us": percentile(sorted(lat), 0.99),
                     "calls_per_s": 1e6 / p50, "ratio": p50 / base})
    return BenchResult("hypercall", f"hypercall round trip ({CALLS} calls each)",
                       [("path", "path", ""), ("p50_us", "p50 µs", ",.0f"),
                        ("p99_us", "p99 µs", ",.0f"), ("calls_per_s", "calls/s", ",.0f"),
                        ("ratio", "p50 ÷ bare Ray call", ".2f")], rows)
