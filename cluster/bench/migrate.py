"""``xenray bench migrate``: live migration between two hosts (Clark's metrics) beside the raw
cross-node transfer rate of the same bytes through Ray, measured in the same run."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import ray
from rich.console import Console

from actors.toolstack.channel import CHUNK_BYTES, WINDOW
from actors.transport.naming import pin_to_host
from cluster.bench.common import BenchResult

GUEST_MIB = 256
RAW_REPEATS = 3
CASES = (  # (case, init command line): Clark's workload knob, memdirty's rate
    ("idle", "init=idle"),
    ("memdirty low", "init=memdirty wss=64 rate=2000"),
    ("memdirty high", "init=memdirty wss=128"),
)


@ray.remote
class _Sink:
    """The raw baseline's receiver: takes chunks, as the receiving agent does."""

    def take(self, seq: int, data: np.ndarray) -> int:
        return len(data)


@ray.remote
class _Source:
    """The raw baseline's sender, on the source host: the same chunk size and window as a
    migration, through the same object store."""

    def send(self, sink, nbytes: int) -> float:
        data = np.ones(CHUNK_BYTES, dtype=np.uint8)  # as the saver sends its records
        t0 = time.perf_counter()
        inflight = []
        for seq in range(nbytes // CHUNK_BYTES):
            inflight.append(sink.take.remote(seq, data))
            if len(inflight) >= WINDOW:
                ray.get(inflight.pop(0))
        ray.get(inflight)
        return time.perf_counter() - t0


def raw_rate(nbytes: int) -> float:
    """MiB/s of ``nbytes`` from a process on h1 to one on h2, median of a few runs."""
    sink = _Sink.options(**pin_to_host("h2")).remote()
    source = _Source.options(**pin_to_host("h1")).remote()
    try:
        times = [ray.get(source.send.remote(sink, nbytes)) for _ in range(RAW_REPEATS)]
    finally:
        ray.kill(sink)
        ray.kill(source)
    return nbytes / 2**20 / statistics.median(times)


def bench_migrate(out: Console, a: argparse.Namespace) -> BenchResult:
    """An idle 256 MiB domain, then memdirty at a low and a high dirtying rate, each
    migrated h1 -> h2 with libxc's policy."""
    from cluster.api import Cluster
    from cluster.xlcfg import parse_config

    rows = []
    with Cluster(hosts=2, host_memory_mib=GUEST_MIB + 768) as xen:
        with out.status("measuring the raw h1 -> h2 transfer through Ray...") as status:
            raw = raw_rate(GUEST_MIB << 20)
            for case, extra in CASES:
                status.update(f"{case}: creating a {GUEST_MIB} MiB domain on h1")
                cfg, _ = parse_config(f'name="mig"\nmemory={GUEST_MIB}\nextra="{extra}"\n')
                xen.create(cfg, host="h1")
                status.update(f"{case}: migrating it to h2")
                try:
                    r = xen.migrate("mig", "h2")
                finally:
                    if xen.find("mig") is not None:
                        xen.destroy("mig")
                first = r["rounds"][0]
                rows.append({"case": case, "total_s": r["total_s"],
                             "downtime_parts_ms": r["downtime_parts_ms"],
                             "downtime_ms": r["downtime_ms"], "resume_ms": r["resume_ms"],
                             "rounds": len(r["rounds"]), "pages": r["pages_sent"],
                             "ratio_ram": r["bytes_ratio"], "mib_s": first["mib_s"],
                             "of_raw": first["mib_s"] / raw})
    rows.append({"case": "raw Ray transfer", "mib_s": raw, "of_raw": 1.0})
    return BenchResult(
        "migrate", f"live migration h1 -> h2 of a {GUEST_MIB} MiB domain (libxc policy)",
        [("case", "case", ""), ("total_s", "total s", ".2f"),
         ("downtime_ms", "down ms", ".0f"), ("resume_ms", "resume ms", ".0f"),
         ("rounds", "rounds", "d"), ("pages", "pages", ",d"),
         ("ratio_ram", "x RAM", ".2f"), ("mib_s", "MiB/s", ".0f"),
         ("of_raw", "of raw", ".2f")], rows,
        ["down: downtime, from the suspend request to the destination's unpause (" + "; ".join(
            f"{r['case']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["downtime_parts_ms"].items())
            for r in rows if "downtime_parts_ms" in r) + " ms); resume: from the unpause "
         "until the guest's devices are reconnected and its init runs again; MiB/s: round 0",
         f"raw: {GUEST_MIB} MiB in {CHUNK_BYTES >> 20} MiB chunks, {WINDOW} in flight, "
         f"actor on h1 to actor on h2 (median of {RAW_REPEATS})",
         "aims: round-0 page rate at least 0.7 of raw; idle downtime at most 30 ms; "
         "memdirty high stops at libxc's 5 live rounds"])
