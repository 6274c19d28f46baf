"""``xenray bench create``: domain creation latency as a host fills up, and domains/s."""

from __future__ import annotations

import argparse
import statistics
import time

from rich.console import Console

from cluster.bench.common import BenchResult


def bench_create(out: Console, a: argparse.Namespace) -> BenchResult:
    """Creation latency of the 1st, 10th and last of ``--domains`` domains on one host."""
    from cluster.api import Cluster
    from cluster.xlcfg import parse_config

    n = a.domains or 50
    lat, steps = [], []
    with Cluster(hosts=1, host_memory_mib=64 * n + 512) as xen:
        with out.status(f"creating {n} domains on h1...") as status:
            t0 = time.perf_counter()
            for i in range(n):
                cfg, _ = parse_config(f'name="bench{i}"\nmemory=16\nextra="init=idle"\n')
                t = time.perf_counter()
                steps.append(xen.create(cfg, host="h1")["steps_ms"])
                lat.append(time.perf_counter() - t)
                status.update(f"created {i + 1}/{n} domains")
            total = time.perf_counter() - t0
    rows = [{"domain": f"#{k}", "latency_s": lat[k - 1], "ratio": lat[k - 1] / lat[0]}
            for k in sorted({1, min(10, n), n})]
    medians = {step: statistics.median(s[step] for s in steps) for step in steps[0]}
    return BenchResult("create", f"domain creation on one host ({n} domains)",
                       [("domain", "domain", ""), ("latency_s", "latency s", ".2f"),
                        ("ratio", "ratio to 1st", ".2f")], rows,
                       [f"median {statistics.median(lat):.2f} s per domain; "
                        f"{n / total:.2f} domains/s overall",
                        "median ms per step (libxl's domcreate order): " + ", ".join(
                            f"{step} {ms:.0f}" for step, ms in medians.items())])
