"""``xenray bench create``: domain creation on one host, by each launcher, in the same run.

1. **Ray actor, no pool** (the path before the pool: ``--launcher ray --pool 0``): every create
   starts its domain's Ray worker, ``--domains`` of them one after the other.
2. **Ray actor, pool**: a host whose pool holds ``--domains`` started Ray workers; the same
   creates, one after the other.
3. **Fork, one at a time** (the default launcher): the host's zygote forks each domain's
   process; the same creates.
4. **Fork, a burst**: on the same host, ``--domains`` creates at once (``create_many``):
   domains/s, LightVM's measure.

For each: the latency of the 1st, 10th and last domain and their ratio to the 1st, the median,
domains/s, and the median ms of each libxl step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from cluster.bench.common import BenchResult

DOMAIN_MIB = 16
WAIT_POOL_S = 600.0


def _config(name: str) -> Any:
    from cluster.xlcfg import parse_config

    return parse_config(f'name="{name}"\nmemory={DOMAIN_MIB}\nextra="init=idle"\n')[0]


def _full_pool(xen: Any, status: Any) -> None:
    """Wait until h1's pool holds all it should (started ahead, not part of any create)."""
    deadline = time.monotonic() + WAIT_POOL_S
    while (p := xen._call("h1", "xl", "pool"))["starting"] or len(p["idle"]) < p["size"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the pool did not fill")
        status.update(f"filling h1's pool: {len(p['idle'])}/{p['size']} processes started")
        time.sleep(0.5)


def _one_by_one(xen: Any, n: int, prefix: str, status: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        info = xen.create(_config(f"{prefix}{i}"), host="h1")
        out.append({"latency_s": time.perf_counter() - t, "steps_ms": info["steps_ms"]})
        status.update(f"{prefix}: created {i + 1}/{n} domains")
    return out


def _phase(label: str, results: list[dict[str, Any]], elapsed_s: float) -> dict[str, Any]:
    lat = [r["latency_s"] for r in results]
    n = len(lat)
    return {"path": label, "first_s": lat[0], "tenth_s": lat[min(10, n) - 1], "last_s": lat[-1],
            "last_ratio": lat[-1] / lat[0], "median_s": statistics.median(lat),
            "per_s": n / elapsed_s,
            "steps_ms": {step: statistics.median(r["steps_ms"].get(step, 0) for r in results)
                         for step in results[0]["steps_ms"]}}


def _run(n: int, launcher: str, pool: int,
         bodies: list[Callable[[Any, Any], tuple[list[dict], float]]],
         status: Any) -> list[tuple[list[dict], float, dict[str, Any]]]:
    """Each of ``bodies`` in turn on one new one-host cluster (its pool full first): its
    results, seconds, and its launcher and processes taken from a pool (or forked)."""
    from cluster.api import Cluster

    with Cluster(hosts=1, host_memory_mib=DOMAIN_MIB * 3 * n + 512, launcher=launcher,
                 pool=pool) as xen:
        out = []
        for body in bodies:
            _full_pool(xen, status)
            before = xen._call("h1", "xl", "pool")["taken"]
            results, elapsed = body(xen, status)
            after = xen._call("h1", "xl", "pool")
            out.append((results, elapsed, {"launcher": after["launcher"],
                                           "taken": after["taken"] - before}))
        return out


def bench_create(out: Console, a: argparse.Namespace) -> BenchResult:
    n = a.domains or 20
    rows = []
    with out.status("starting a one-host cluster...") as status:
        def serial(prefix: str) -> Callable[[Any, Any], tuple[list[dict], float]]:
            def body(xen: Any, st: Any) -> tuple[list[dict], float]:
                t0 = time.perf_counter()
                res = _one_by_one(xen, n, prefix, st)
                return res, time.perf_counter() - t0
            return body

        def burst(xen: Any, st: Any) -> tuple[list[dict], float]:
            st.update(f"burst: creating {n} domains at once")
            t0 = time.perf_counter()
            res = xen.create_many(_config("burst"), n, hosts=["h1"], parallel=n)
            failed = [r["error"] for r in res if not r["ok"]]
            if failed:
                raise RuntimeError(f"{len(failed)} creates failed: {failed[0]}")
            return res, time.perf_counter() - t0

        for launcher, pool, phases in (
                ("ray", 0, [("Ray actor, no pool (before)", serial("nopool"))]),
                ("ray", n, [(f"Ray actor, pool of {n}", serial("pooled"))]),
                ("fork", 0, [("fork, one at a time", serial("forked")),
                             ("fork, all at once", burst)])):
            done = _run(n, launcher, pool, [body for _, body in phases], status)
            rows += [{**_phase(label, results, elapsed), **launched}
                     for (label, _), (results, elapsed, launched) in zip(phases, done)]
    base = rows[0]
    for row in rows:
        row["speedup"] = base["median_s"] / row["median_s"]
    notes = [f"{r['path']}: median ms per step: " + ", ".join(
        f"{step} {ms:.0f}" for step, ms in r["steps_ms"].items()) for r in rows]
    return BenchResult(
        "create", f"domain creation on one host ({n} domains of {DOMAIN_MIB} MiB, init=idle)",
        [("path", "path", ""), ("first_s", "1st s", ".2f"), ("tenth_s", "10th s", ".2f"),
         ("last_s", "last s", ".2f"), ("last_ratio", "last/1st", ".2f"),
         ("median_s", "median s", ".2f"), ("per_s", "domains/s", ".1f"),
         ("speedup", "median vs Ray, no pool", ".1f")],
        rows, notes + ["aims (issue 13): 10 domains/s on one host; the last no slower than "
                       "1.5x the 1st"])
