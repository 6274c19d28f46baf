"""``xenray bench sched``: what the hypervisor's schedulers give, beside the ideal shares.

On a host with one pCPU, for credit2 (Xen's default) and credit, in the same run:

1. **Weights**: two ``cpuburn`` domains with weights 256 and 512. Ideal: 1/3 and 2/3 of the
   pCPU.
2. **Cap**: one ``cpuburn`` domain with cap 25, alone. Ideal: 25%.
3. **Latency**: ``cyclictest`` (a guest that sleeps 2 ms and measures how late it wakes) alone,
   then beside a ``cpuburn`` hog. The baseline is the same guest alone on the same host; for
   credit also with BOOST switched off, to show what BOOST buys.

CPU shares are the hypervisor's own accounting (``getdomaininfo``'s ``cpu_time`` deltas, as
``xl list`` shows), over ``--runtime`` seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from rich.console import Console

from cluster.bench.common import BenchResult

LATENCY_INTERVAL_S = 0.002


def _config(name: str, init: str, **extra: Any) -> Any:
    from cluster.xlcfg import parse_config

    lines = [f'name="{name}"', "memory=32", f'extra="init={init}"']
    lines += [f"{k}={v}" for k, v in extra.items()]
    return parse_config("\n".join(lines) + "\n")[0]


def _cpu_s(xen: Any) -> dict[str, float]:
    return {r["name"]: r["time"] for r in xen.list() if r["domid"] != 0}


def _shares(xen: Any, names: list[str], runtime: float) -> dict[str, float]:
    """Each domain's share of one pCPU over ``runtime`` s, from the hypervisor's cpu_time."""
    time.sleep(0.5)  # past the domains' boot
    before, t0 = _cpu_s(xen), time.monotonic()
    time.sleep(runtime)
    after, elapsed = _cpu_s(xen), time.monotonic() - t0
    return {n: (after[n] - before[n]) / elapsed for n in names}


def _latency(xen: Any, name: str, runtime: float) -> dict[str, Any]:
    count = max(100, int(runtime / LATENCY_INTERVAL_S))
    xen.create(_config(name, f"cyclictest interval={LATENCY_INTERVAL_S} count={count}"))
    xen.wait_for(lambda: xen.result(name) is not None, runtime * 10 + 60,
                 f"{name}'s cyclictest result")
    result = xen.result(name)
    xen.destroy(name)
    return result


def _one_scheduler(sched: str, params: dict[str, Any], runtime: float,
                   status: Any) -> list[dict[str, Any]]:
    from cluster.api import Cluster

    label = sched + ("" if params.get("boost", True) else " (no BOOST)")
    rows: list[dict[str, Any]] = []
    with Cluster(hosts=1, host_cpus=1, sched=sched, sched_params=params,
                 progress=status.update) as xen:
        if params.get("boost", True):
            status.update(f"{label}: weights 256 and 512")
            xen.create(_config("w256", "cpuburn", cpu_weight=256))
            xen.create(_config("w512", "cpuburn", cpu_weight=512))
            shares = _shares(xen, ["w256", "w512"], runtime)
            total = sum(shares.values())
            for name, ideal in (("w256", 1 / 3), ("w512", 2 / 3)):
                rows.append({"sched": label, "case": f"weight {name[1:]} of 256+512",
                             "measured": shares[name] / total, "ideal": ideal,
                             "ratio": shares[name] / total / ideal})
            rows.append({"sched": label, "case": "pCPU busy (both)", "measured": total,
                         "ideal": 1.0, "ratio": total})
            xen.destroy("w256")
            xen.destroy("w512")
            status.update(f"{label}: cap 25")
            xen.create(_config("cap25", "cpuburn", cap=25))
            share = _shares(xen, ["cap25"], runtime)["cap25"]
            rows.append({"sched": label, "case": "cap 25, alone", "measured": share,
                         "ideal": 0.25, "ratio": share / 0.25})
            xen.destroy("cap25")
        status.update(f"{label}: cyclictest alone")
        alone = _latency(xen, "lat-alone", runtime)
        status.update(f"{label}: cyclictest beside a hog")
        xen.create(_config("hog", "cpuburn"))
        beside = _latency(xen, "lat-hog", runtime)
        for case, r in (("wake-up latency, alone", alone),
                        ("wake-up latency, beside a hog", beside)):
            rows.append({"sched": label, "case": case, "p50_us": r["p50_us"],
                         "p99_us": r["p99_us"], "max_us": r["max_us"],
                         "ratio": r["p50_us"] / max(alone["p50_us"], 1.0)})
    return rows


def bench_sched(out: Console, a: argparse.Namespace) -> BenchResult:
    runtime = a.runtime
    rows: list[dict[str, Any]] = []
    with out.status("starting...") as status:
        for sched, params in (("credit2", {}), ("credit", {}), ("credit", {"boost": False})):
            rows += _one_scheduler(sched, params, runtime, status)
    shares = [r for r in rows if "ideal" in r and r["case"].startswith("weight")]
    worst = max(abs(r["ratio"] - 1) for r in shares)
    lat = {r["sched"]: r for r in rows if r["case"].endswith("beside a hog")}
    notes = [f"one pCPU; shares over {runtime:g} s from the hypervisor's cpu_time; "
             f"latency: cyclictest, a {LATENCY_INTERVAL_S * 1e3:g} ms sleep, in us; ratio: "
             "measured ÷ ideal (shares) or ÷ the same guest alone (latency)",
             f"weights: worst share {worst:.0%} off the ideal",
             "BOOST: beside a hog, credit's wake-up p50/p99 is "
             f"{lat['credit']['p50_us']:.0f}/{lat['credit']['p99_us']:.0f} us, without BOOST "
             f"{lat['credit (no BOOST)']['p50_us']:.0f}/"
             f"{lat['credit (no BOOST)']['p99_us']:.0f} us (p99 "
             f"{lat['credit (no BOOST)']['p99_us'] / max(lat['credit']['p99_us'], 1):.1f}x)"]
    return BenchResult(
        "sched", "the schedulers on one pCPU: CPU shares and wake-up latency",
        [("sched", "scheduler", ""), ("case", "case", ""), ("measured", "share", ".3f"),
         ("ideal", "ideal", ".3f"), ("p50_us", "p50 us", ".0f"), ("p99_us", "p99 us", ".0f"),
         ("max_us", "max us", ".0f"), ("ratio", "ratio", ".2f")], rows, notes,
        data={"runtime_s": runtime, "median_ratio": statistics.median(
            r["ratio"] for r in shares)})
