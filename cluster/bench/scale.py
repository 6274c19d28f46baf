"""``xenray bench scale``: how each cost of a cluster grows with the number of domains N, on
H hosts of a cluster the benchmark starts itself, or of the one ``xenray up`` runs (issue 13's
measured curves).

LightVM (SOSP'17) found Xen's creation time growing with N because of xenstore and the
toolstack. So one run fills the hosts with N idle domains (``memory = 16``, ``init=idle``)
in batches through ``Cluster.create_many`` and, on the empty cluster (the baseline) and after
each batch (N/4, N/2, 3N/4, N), samples what could grow with N:

* each host's xenstored over its Unix socket, as a Dom0 tool reaches it (real xs_wire):
  XS_READ and XS_WRITE of a Dom0 node, and the time from a write to the WATCH_EVENT it fires;
* ``xl list`` of every host (``Cluster.list()``);
* ``@releaseDomain``: one more domain created on the first host, then destroyed while
  watchers wait for ``@releaseDomain/<domid>`` (how long until each sees it) and xenstored
  counts the WATCH_EVENTs it sends for that one destroy (its fan-out).

With ``--launcher ray``, each sample and each batch starts once every host's pool of
started domain processes is full again (``actors.toolstack.pool``: the state a create is
meant to find; the default launcher, ``fork``, keeps none). The batches
give each domain's creation latency against k, its order on its host (LightVM's Figure 4),
and domains/s. With all N running: the USS and PSS of every domain process
(``/proc/<pid>/smaps_rollup``) and their idle CPU (``/proc/<pid>/stat``), beside a bare Ray
actor's in the same run (what a domain as a Ray actor would cost at least); then the time to destroy all, the hosts in
parallel, and whether every host's free memory is back where it started.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import math
import os
import pathlib
import socket
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console

from actors.procstat import cpu_ns
from actors.transport.naming import pin_to_host
from cluster.xs_socket import XsSocket
from protocols.xenstore.paths import RELEASE_DOMAIN
from protocols.xenstore.wire import XsType, parse_reply

if TYPE_CHECKING:  # imported where used: it imports ray, which a joined cluster must precede
    from cluster.bench.common import BenchResult

DOMAIN_MIB = 16
HOST_BASE_MIB = 512  # Dom0 (256) and room to spare
XS_OPS = 200  # XS_READs and XS_WRITEs timed per host and fill level
WATCH_FIRES = 50  # writes timed to their watch event, per host and fill level
LIST_RUNS = 5
RELEASE_WATCHERS = 4
IDLE_S = 5.0  # the window over which idle CPU is read
EVENT_TIMEOUT_S = 10.0
FREE_MEMORY_WAIT_S = 30.0
POOL_WAIT_S = 300.0  # for every host's pool of started domain processes to fill
BENCH_NODE = "/local/domain/0/bench-scale"
PROBE = "scale-probe"
CONFIG = f'name="scale"\nmemory={DOMAIN_MIB}\nextra="init=idle"\n'


# -- the plan, and what the numbers mean (pure) ------------------------------------------

def fill_levels(n: int) -> list[int]:
    """Where the costs are sampled: 0 (the baseline), N/4, N/2, 3N/4 and N, rounded up,
    each once."""
    return sorted({0, *(math.ceil(n * q / 4) for q in range(1, 5))})


def host_memory_mib(n: int, hosts: int) -> int:
    """Each host's memory: its share of N, the probe, one domain of slack in the placement."""
    return HOST_BASE_MIB + DOMAIN_MIB * (math.ceil(n / hosts) + 2)


def order(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every ``create_many`` result of the run with ``k``, its order on its host over the
    whole run (a batch's own ``k`` after the earlier batches' on that host), and, if it was
    created, ``i``, its order in the cluster (each batch in the order its domains came up)."""
    offset: Counter[str] = Counter()
    records: list[dict[str, Any]] = []
    created = 0
    for batch in batches:
        top = offset.copy()
        for r in batch:
            k = None if r.get("k") is None else offset[r["host"]] + r["k"]
            if k is not None:
                top[r["host"]] = max(top[r["host"]], k)
            created += bool(r["ok"])
            records.append({**r, "k": k, "i": created if r["ok"] else None})
        offset = top
    return records


def creation_summary(records: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Per host, the latency of its 1st and its last domain; domains/s over the batches."""
    ok = [r for r in records if r["ok"]]
    per_host: dict[str, dict[str, Any]] = {}
    for host in sorted({r["host"] for r in ok}):
        mine = sorted((r for r in ok if r["host"] == host), key=lambda r: r["k"])
        first, last = mine[0], mine[-1]
        per_host[host] = {"domains": len(mine), "first_s": first["latency_s"],
                          "last_k": last["k"], "last_s": last["latency_s"],
                          "last_over_first": last["latency_s"] / first["latency_s"]}
    return {"created": len(ok), "failed": len(records) - len(ok), "wall_s": wall_s,
            "domains_per_s": len(ok) / wall_s if wall_s else None, "per_host": per_host,
            "errors": sorted({r["error"] for r in records if not r["ok"]})}


def smaps_rollup(text: str) -> dict[str, float]:
    """RSS, PSS and USS (pages mapped by this process alone: ``Private_*``) in MiB, from the
    text of ``/proc/<pid>/smaps_rollup`` (proc(5))."""
    kib: Counter[str] = Counter()
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith(" kB"):
            kib[key] += int(rest.split()[0])
    uss = kib["Private_Clean"] + kib["Private_Dirty"] + kib["Private_Hugetlb"]
    return {"rss_mib": kib["Rss"] / 1024, "pss_mib": kib["Pss"] / 1024, "uss_mib": uss / 1024}


def memory_summary(domains: list[dict[str, Any]]) -> dict[str, Any]:
    """Per host and over all: domains, the median USS and PSS of one, and their sums."""
    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"domains": len(rows),
                **{f"{m}_mib": statistics.median(r[f"{m}_mib"] for r in rows)
                   for m in ("uss", "pss")},
                **{f"{m}_total_mib": sum(r[f"{m}_mib"] for r in rows) for m in ("uss", "pss")}}

    by_host: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in domains:
        by_host[row["host"]].append(row)
    return {"per_host": {h: summary(rows) for h, rows in sorted(by_host.items())},
            "total": summary(domains) if domains else None}


def cpu_percent(before_ns: int, after_ns: int, wall_s: float) -> float:
    """CPU time used over a wall-clock window, as a percentage of one core."""
    return (after_ns - before_ns) / 1e9 / wall_s * 100


def memory_back(before: dict[str, int], after: dict[str, int]) -> bool:
    """Every host has at least the free memory it had before the run."""
    return all(after.get(host, -1) >= mib for host, mib in before.items())


CURVES = {  # name: (series, key); each a median over hosts at every fill level
    "read_us": ("xenstore", "read_us"), "write_us": ("xenstore", "write_us"),
    "watch_us": ("xenstore", "watch_us"), "list_ms": ("list", "list_ms"),
    "seen_ms": ("release", "seen_ms"), "events": ("release", "events"),
    "create_s": ("release", "create_s")}


def curves(data: dict[str, Any]) -> dict[str, list[float | None]]:
    """Each cost against N: its samples' median over hosts at each fill level (None where
    none was measured)."""
    def at(series: str, key: str, n: int) -> float | None:
        values = [s[key] for s in data[series] if s["n"] == n and s.get(key) is not None]
        return statistics.median(values) if values else None

    return {name: [at(series, key, n) for n in data["levels"]]
            for name, (series, key) in CURVES.items()}


def _row(measure: str, unit: str, value: Any, baseline: float | None = None,
         baseline_is: str | None = None) -> dict[str, Any]:
    ratio = (value / baseline if isinstance(value, (int, float)) and baseline else None)
    return {"measure": measure, "unit": unit, "value": value, "baseline": baseline,
            "baseline_is": baseline_is, "ratio": ratio}


COLUMNS = [("measure", "measure", ""), ("value", "value", ",.2f"), ("unit", "unit", ""),
           ("baseline", "baseline", ",.2f"), ("baseline_is", "baseline (same run)", ""),
           ("ratio", "÷ baseline", ".2f")]


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The table a person reads: each cost at N beside its baseline from the same run (the
    empty cluster, a host's 1st domain, or a bare Ray actor)."""
    n = report["levels"][-1]
    created = report["creation"]["summary"]
    hosts = created["per_host"].values()
    rows = []
    if hosts:
        rows.append(_row("create: each host's last domain (median over hosts)", "s",
                         statistics.median(h["last_s"] for h in hosts),
                         statistics.median(h["first_s"] for h in hosts), "its 1st domain"))
    rows.append(_row(f"create: domains/s, {created['created']} in batches", "/s",
                     created["domains_per_s"]))
    for measure, unit, key in (
            ("create: one more domain, alone", "s", "create_s"),
            ("xenstore XS_READ, p50", "µs", "read_us"),
            ("xenstore XS_WRITE, p50", "µs", "write_us"),
            ("xenstore write to its watch event, p50", "µs", "watch_us"),
            ("@releaseDomain: destroy to watcher", "ms", "seen_ms"),
            ("@releaseDomain: WATCH_EVENTs per destroy", "", "events"),
            ("xl list, every host", "ms", "list_ms")):
        curve = report["curves"][key]
        rows.append(_row(f"{measure} (N={n})", unit, curve[-1], curve[0], "N=0"))
    memory, bare = report["memory"]["summary"]["total"], report["memory"]["bare"]
    if memory is not None:
        for m in ("uss", "pss"):
            rows.append(_row(f"memory: {m.upper()} per domain (median)", "MiB",
                             memory[f"{m}_mib"], bare and bare[f"{m}_mib"],
                             "a bare Ray actor"))
        rows.append(_row(f"memory: USS of all {memory['domains']} domains", "MiB",
                         memory["uss_total_mib"]))
    idle = report["idle_cpu"]
    rows.append(_row("idle CPU per domain (median)", "% core", idle["domain_pct"],
                     idle["bare_pct"], "a bare Ray actor"))
    rows.append(_row(f"idle CPU of all {idle['domains']} domains", "% core",
                     idle["domains_total_pct"]))
    gone = report["destroy"]
    rows.append(_row(f"destroy all {gone['domains']} (hosts in parallel)", "s",
                     gone["seconds"]))
    rows.append(_row("free memory back after destroy", "",
                     "yes" if gone["memory_back"] else "no"))
    return rows


def notes(report: dict[str, Any]) -> list[str]:
    """Each curve, the pool's part, what failed, and issue 13's aims beside what was
    measured."""
    out = [f"against N = {' '.join(map(str, report['levels']))} (median over hosts):"]
    for label, key, fmt in (("XS_READ µs", "read_us", ".0f"), ("XS_WRITE µs", "write_us", ".0f"),
                            ("write to watch event µs", "watch_us", ".0f"),
                            ("xl list ms", "list_ms", ".1f"),
                            ("destroy to @releaseDomain ms", "seen_ms", ".1f"),
                            ("WATCH_EVENTs per destroy", "events", ".0f"),
                            ("one more domain, alone s", "create_s", ".2f")):
        out.append(f"  {label}: " + " ".join("-" if v is None else format(v, fmt)
                                             for v in report["curves"][key]))
    created = report["creation"]["summary"]
    pools = report["pool"].values()
    taken = sum(p["taken"] for p in pools)
    if all(p.get("launcher", "ray") == "fork" for p in pools):
        out.append(f"launcher: fork; {taken} domain processes forked by the hosts' zygotes")
    else:
        out.append(f"launcher: ray; pool: {'/'.join(sorted({str(p['size']) for p in pools}))} "
                   f"started domain processes per host; {taken} of "
                   f"{taken + sum(p['missed'] for p in pools)} creates took one, the rest "
                   "started their own")
    out.append("create, per host, last ÷ 1st: " + ", ".join(
        f"{h} {s['last_over_first']:.2f} (k={s['last_k']})"
        for h, s in created["per_host"].items()))
    if created["failed"]:
        out.append(f"{created['failed']} creations failed: " + "; ".join(created["errors"]))
    seen = [r for r in report["release"] if r["seen_by"] < r["watchers"]]
    if seen:
        out.append("@releaseDomain missed: " + ", ".join(
            f"N={r['n']}: {r['seen_by']} of {r['watchers']} watchers" for r in seen))
    if report["destroy"]["errors"]:
        out.append("destroys failed: " + "; ".join(report["destroy"]["errors"]))
    memory, idle = report["memory"]["summary"]["total"], report["idle_cpu"]
    per_100 = idle["domains_total_pct"] / idle["domains"] * 100 if idle["domains"] else None
    out.append("aims (issue 13): a host's 200th domain at most 1.5× its 1st; at least 10 "
               "domains/s on one host; at most 30 MiB USS per idle domain (measured "
               + ("-" if memory is None else f"{memory['uss_mib']:.1f}") + "); 100 idle "
               "domains under 5% of a core (measured "
               + ("-" if per_100 is None else f"{per_100:.1f}%") + " per 100)")
    if report.get("files"):
        out.append(f"plots and JSON: {', '.join(report['files'])}")
    return out


# -- measuring -----------------------------------------------------------------------------

class Watcher(XsSocket):
    """A Dom0 tool's watch on a connection of its own, with a thread that notes when each
    event path first arrives (``request`` skips events while it waits for a reply, so this
    connection makes no request after the WATCH)."""

    def __init__(self, path: str | os.PathLike, watch: str, depth: int | None = None) -> None:
        super().__init__(path)
        try:
            self.request(XsType.WATCH, watch, "bench", depth)
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(None)
        self.seen: dict[str, float] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="bench-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            at = time.perf_counter()
            with self._cond:
                for msg in self._decoder.feed(data):
                    if msg.type == XsType.WATCH_EVENT:
                        self.seen.setdefault(parse_reply(msg)[0], at)
                self._cond.notify_all()

    def wait(self, path: str, timeout: float = EVENT_TIMEOUT_S) -> float:
        """When (``perf_counter``) the first event for ``path`` arrived; TimeoutError if
        none has within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: path in self.seen, max(0.0, timeout)):
                raise TimeoutError(f"no watch event for {path} within {timeout:g} s")
            return self.seen[path]

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader
        self._thread.join()
        super().__exit__(*exc)


def _median_us(fn: Callable[[], Any], n: int) -> float:
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    return statistics.median(lat) * 1e6


def time_xenstore(path: str | os.PathLike, ops: int = XS_OPS,
                  fires: int = WATCH_FIRES) -> dict[str, float]:
    """Median µs of an XS_READ and an XS_WRITE of a Dom0 node, and from a write under a
    watched node until its WATCH_EVENT arrives on another connection."""
    node, watched = f"{BENCH_NODE}/value", f"{BENCH_NODE}/watched"
    with XsSocket(path) as xs, Watcher(path, watched) as watcher:
        xs.request(XsType.WRITE, node, b"0" * 16)
        read = _median_us(lambda: xs.request(XsType.READ, node), ops)
        write = _median_us(lambda: xs.request(XsType.WRITE, node, b"1" * 16), ops)
        lat = []
        for j in range(fires):
            child = f"{watched}/{j}"
            t = time.perf_counter()
            xs.request(XsType.WRITE, child, b"1")
            lat.append(watcher.wait(child) - t)
        xs.request(XsType.RM, BENCH_NODE)
    return {"read_us": read, "write_us": write, "watch_us": statistics.median(lat) * 1e6}


def time_release(path: str | os.PathLike, domid: int, destroy: Callable[[], None],
                 events_sent: Callable[[], int], watchers: int = RELEASE_WATCHERS,
                 timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
    """Destroy domain ``domid`` while ``watchers`` connections watch ``@releaseDomain`` with
    depth 1 (their events name the domain): how many saw it and how long after the destroy
    began, and how many WATCH_EVENTs xenstored sent meanwhile (``events_sent()``, its
    counter), to every watcher of every path. A watcher that has not seen it ``timeout``
    seconds after the destroy began has missed it."""
    event = f"{RELEASE_DOMAIN}/{domid}"
    with contextlib.ExitStack() as stack:
        ws = [stack.enter_context(Watcher(path, RELEASE_DOMAIN, depth=1))
              for _ in range(watchers)]
        before = events_sent()
        t = time.perf_counter()
        destroy()
        destroy_s = time.perf_counter() - t
        deadline = time.monotonic() + timeout
        seen = []
        for w in ws:
            with contextlib.suppress(TimeoutError):
                seen.append(w.wait(event, deadline - time.monotonic()) - t)
        events = events_sent() - before
    return {"watchers": watchers, "seen_by": len(seen),
            "seen_ms": statistics.median(seen) * 1e3 if seen else None,
            "seen_max_ms": max(seen) * 1e3 if seen else None,
            "destroy_ms": destroy_s * 1e3, "events": events}


def process_memory(pid: int) -> dict[str, float] | None:
    """RSS, PSS, USS of a process on this machine; None if it cannot be read."""
    try:
        return smaps_rollup(pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text())
    except OSError:
        return None


def _sample(xen: Any, n: int, cfg: Any, sockets: dict[str, str], data: dict[str, Any]) -> None:
    """At N = ``n``: ``xl list``, each host's xenstore, then one more domain on the first
    host, created alone and destroyed under @releaseDomain watchers."""
    lat = []
    for _ in range(LIST_RUNS):
        t = time.perf_counter()
        rows = xen.list()
        lat.append(time.perf_counter() - t)
    data["list"].append({"n": n, "list_ms": statistics.median(lat) * 1e3, "rows": len(rows)})
    on_host = Counter(r["host"] for r in rows if r["domid"] != 0)
    for host, path in sockets.items():
        data["xenstore"].append({"n": n, "host": host, "host_domains": on_host[host],
                                 **time_xenstore(path)})
    host = xen.hosts[0]
    t = time.perf_counter()
    probe = xen.create(cfg, host=host, name=PROBE)
    create_s = time.perf_counter() - t
    release = time_release(sockets[host], probe["domid"], lambda: xen.destroy(PROBE),
                           lambda: xen._call(host, "xenstored", "statistics")["watch_events"])
    data["release"].append({"n": n, "host": host, "create_s": create_s, **release})


def _memory_and_cpu(xen: Any, names: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Memory and idle CPU of the process of each domain named, and of a bare Ray actor
    beside them."""
    import ray

    from cluster.bench.common import Bare

    rows = [r for r in xen.list() if r["name"] in names]
    bare = Bare.options(**pin_to_host(xen.hosts[0])).remote()
    try:
        bare_pid = ray.get(bare.__ray_call__.remote(lambda self: os.getpid()))
        domains = [{"name": r["name"], "host": r["host"], "pid": r["pid"], **mem}
                   for r in rows if r.get("pid") and (mem := process_memory(r["pid"]))]
        bare_memory = process_memory(bare_pid)
        pids = [d["pid"] for d in domains]
        before = {pid: cpu_ns(pid) for pid in [*pids, bare_pid]}
        t = time.monotonic()
        time.sleep(IDLE_S)  # the window the CPU is read over
        wall = time.monotonic() - t
        pct = {pid: cpu_percent(before[pid], cpu_ns(pid), wall) for pid in before}
    finally:
        ray.kill(bare)
    memory = {"domains": domains, "unread": len(rows) - len(domains),
              "summary": memory_summary(domains), "bare": bare_memory}
    idle = {"seconds": wall, "domains": len(pids),
            "domain_pct": statistics.median(pct[p] for p in pids) if pids else None,
            "domains_total_pct": sum(pct[p] for p in pids), "bare_pct": pct[bare_pid]}
    return memory, idle


def _pools(xen: Any) -> dict[str, dict[str, Any]]:
    """Each host's pool of started domain processes (``actors.toolstack.pool``)."""
    return {host: xen._call(host, "xl", "pool") for host in xen.hosts}


def _wait_for_pools(xen: Any) -> None:
    """Until every host's pool is full again: each sample and each batch starts from the
    prepared state a create is meant to find, not from a refill still running."""
    xen.wait_for(lambda: all(len(p["idle"]) >= p["size"] for p in _pools(xen).values()),
                 POOL_WAIT_S, "every host's pool of domain processes to fill")


def _free(xen: Any) -> dict[str, int]:
    return {r["host"]: r["free_memory_mib"] for r in xen.info()}


def _destroy_all(xen: Any, records: list[dict[str, Any]],
                 free_before: dict[str, int]) -> dict[str, Any]:
    """Each host's domains one after another, the hosts in parallel; then until every
    host's free memory is back (or a deadline)."""
    by_host: defaultdict[str, list[str]] = defaultdict(list)
    for r in records:
        if r["ok"]:
            by_host[r["host"]].append(r["name"])
    errors: list[str] = []
    lat: list[float] = []

    def one(host: str) -> None:
        for name in by_host[host]:
            t = time.perf_counter()
            try:
                xen.destroy(name)
            except Exception as e:  # reported; the others are destroyed all the same
                errors.append(f"{name}: {e}")
                continue
            lat.append(time.perf_counter() - t)

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max(1, len(by_host))) as pool:
        list(pool.map(one, by_host))
    seconds = time.perf_counter() - t
    with contextlib.suppress(TimeoutError):
        xen.wait_for(lambda: memory_back(free_before, _free(xen)), FREE_MEMORY_WAIT_S,
                     "free memory to come back")
    free_after = _free(xen)
    return {"domains": len(lat), "seconds": seconds,
            "per_domain_ms": statistics.median(lat) * 1e3 if lat else None,
            "errors": errors, "free_before_mib": free_before, "free_after_mib": free_after,
            "memory_back": memory_back(free_before, free_after)}


def bench_scale(out: Console, a: argparse.Namespace) -> BenchResult:
    """``--domains`` N (100) over ``--hosts`` H (4) of a cluster of its own, or, with
    ``--running``, the hosts of the cluster ``xenray up`` runs. Its own cluster's pools
    hold a batch's share of each host (``--pool`` to choose), as a host ready for a burst
    of that size would."""
    from cluster.api import Cluster
    from cluster.xlcfg import parse_config

    n = a.domains or 100
    with out.status("joining the cluster..." if a.running else "starting the hosts...") \
            as status:
        if a.running:  # joined before ray is imported: it sets the cluster's token
            xen = Cluster.running()
        else:
            hosts = a.hosts or 4
            pool = a.pool if a.pool is not None else -(-n // (len(fill_levels(n)) - 1) // hosts)
            xen = Cluster(hosts=hosts, host_memory_mib=host_memory_mib(n, hosts), pool=pool,
                          launcher=a.launcher, progress=status.update).start()
        try:
            data = _measure(xen, n, parse_config(CONFIG)[0], status)
        finally:
            xen.stop()  # a joined cluster is only left
    return _result(data, a.out)


def _measure(xen: Any, n: int, cfg: Any, status: Any) -> dict[str, Any]:
    """The whole run on ``xen``; a run stopped half way (an error, Ctrl-C) destroys what
    it created, so a joined cluster is left as it was."""
    made: list[str] = []
    try:
        return _fill_and_empty(xen, n, cfg, status, made)
    except BaseException:
        for name in [*made, PROBE]:
            with contextlib.suppress(Exception):
                if xen.holder(name) is not None:
                    xen.destroy(name)
        raise


def _fill_and_empty(xen: Any, n: int, cfg: Any, status: Any,
                    made: list[str]) -> dict[str, Any]:
    """The fill levels' samples and batches (each domain to be created named in ``made``
    first), memory and idle CPU at N, the destroy."""
    levels = fill_levels(n)
    data: dict[str, Any] = {"hosts": len(xen.hosts), "domains": n, "domain_mib": DOMAIN_MIB,
                            "levels": levels, "xenstore": [], "list": [], "release": []}
    info = xen.info()
    free_before = {r["host"]: r["free_memory_mib"] for r in info}
    sockets = {r["host"]: r["xenstored_socket"] for r in info}
    batches, wall = [], 0.0
    for b, level in enumerate(levels):
        status.update(f"N={level}: waiting for the hosts' pools of domain processes")
        _wait_for_pools(xen)
        status.update(f"N={level}: timing xenstore, xl list and @releaseDomain")
        _sample(xen, level, cfg, sockets, data)
        if level == n:
            break
        status.update(f"N={level}: waiting for the hosts' pools of domain processes")
        _wait_for_pools(xen)
        count, came_up = levels[b + 1] - level, []

        def progress(done: int, total: int, result: dict[str, Any]) -> None:
            came_up.append(result)
            status.update(f"created {level + done}/{n} domains")

        made += [f"scale{b + 1}-{i}" for i in range(1, count + 1)]  # create_many's names
        t = time.perf_counter()
        results = xen.create_many(cfg, count, name=f"scale{b + 1}", progress=progress)
        wall += time.perf_counter() - t
        batches.append(came_up if len(came_up) == len(results) else results)
    records = order(batches)
    data["pool"] = {h: {k: p[k] for k in ("launcher", "size", "taken", "missed")}
                    for h, p in _pools(xen).items()}
    status.update(f"reading memory and idle CPU ({IDLE_S:g} s)")
    data["memory"], data["idle_cpu"] = _memory_and_cpu(
        xen, {r["name"] for r in records if r["ok"]})
    status.update(f"destroying {len(records)} domains")
    data["destroy"] = _destroy_all(xen, records, free_before)
    data["creation"] = {"domains": records, "summary": creation_summary(records, wall)}
    data["curves"] = curves(data)
    return data


def _result(data: dict[str, Any], out_dir: str | None) -> BenchResult:
    """The table, the notes, and ``data`` with the files written: its JSON and plots."""
    from cluster.bench.common import BenchResult
    from cluster.plots import write_scale_report

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    data["files"] = write_scale_report(data, out_dir or f"runs/bench-scale-{stamp}")
    return BenchResult("scale", f"costs against N: {data['domains']} idle domains of "
                       f"{DOMAIN_MIB} MiB on {data['hosts']} hosts", COLUMNS,
                       table_rows(data), notes(data), data)
