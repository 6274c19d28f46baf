"""Tables and lines a person reads: one rendering of xl's views, for the CLI and the demo.

Plain text, as ``xl list`` prints it: it reads the same in a terminal and in a pipe (no colour
codes), at 80 columns as at 140 (no column holds free text that can grow: a path goes on a
line of its own; a header is never cut), and it costs nothing to import, which matters for a
command that should answer in a blink.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Column = tuple[str, str]  # (header, "left" | "right")


def text_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    """Columns as wide as their widest cell, two spaces apart, no trailing blanks."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, (h, _) in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if just == "left" else c.rjust(w)
                         for c, w, (_, just) in zip(cells, widths, columns)).rstrip()

    return "\n".join([line([h for h, _ in columns]), *(line(r) for r in rows)])


LIST_COLUMNS = (("Name", "left"), ("ID", "right"), ("Mem", "right"), ("VCPUs", "right"),
                ("State", "left"), ("Time(s)", "right"), ("Host", "left"), ("Health", "left"))


def domain_table(rows: list[dict[str, Any]]) -> str:
    """``xl list``'s columns (plus the host, and whether the domain's process can run at
    all: ``frozen`` when it is stopped) for rows from ``Cluster.list()``."""
    return text_table(LIST_COLUMNS, [
        (r["name"], str(r["domid"]), str(r["mem"]), str(r["vcpus"]), r["state"],
         f"{r['time']:.1f}", r["host"], r["health"]) for r in rows])


VCPU_COLUMNS = (("Name", "left"), ("ID", "right"), ("VCPU", "right"), ("CPU", "right"),
                ("State", "left"), ("Time(s)", "right"), ("Affinity (Hard / Soft)", "left"),
                ("Host", "left"))


def vcpu_table(rows: list[dict[str, Any]]) -> str:
    """``xl vcpu-list`` (``xl_vcpu.c`` ``print_vcpuinfo``): an offline vCPU shows CPU "-" and
    State "--p"; an online one r (running) and b (blocked)."""
    def state(r: dict[str, Any]) -> str:
        if not r["online"]:
            return "--p"
        return ("r" if r["running"] else "-") + ("b" if r["blocked"] else "-") + "-"

    return text_table(VCPU_COLUMNS, [
        (r["name"], str(r["domid"]), str(r["vcpu"]),
         str(r["cpu"]) if r["online"] and r["cpu"] >= 0 else "-", state(r), f"{r['time']:.1f}",
         f"{r['hard']} / {r['soft']}", r["host"]) for r in rows])


SCHED_COLUMNS = (("Name", "left"), ("ID", "right"), ("Weight", "right"), ("Cap", "right"))


def sched_text(kind: str, answers: list[dict[str, Any]], *, pool: bool = True,
               domains: bool = True) -> str:
    """``xl sched-credit`` / ``sched-credit2``: per host its pool line (credit: tslice and
    ratelimit; credit2: ratelimit) unless not ``pool``, then Name, ID, Weight, Cap unless not
    ``domains``."""
    out = []
    for a in answers:
        if pool:
            p = a["pool"]
            params = (f"tslice={p['tslice_ms']}ms " if "tslice_ms" in p else "") + \
                f"ratelimit={p['ratelimit_us']}us"
            out.append(f"Cpupool Pool-0 ({a['host']}): {params}")
        if domains:
            out.append(text_table(SCHED_COLUMNS, [(r["name"], str(r["domid"]),
                                                   str(r["weight"]), str(r["cap"]))
                                                  for r in a["rows"]]))
    return "\n".join(out)


HOST_COLUMNS = (("Host", "left"), ("Memory MiB", "right"), ("Free MiB", "right"),
                ("CPUs", "right"), ("Domains", "right"), ("Hypercalls", "right"),
                ("Pipes", "right"))


def host_table(rows: list[dict[str, Any]]) -> str:
    """``xenray info``: one row per host (``xl info``'s memory and CPU figures, the domains,
    and how many hypercalls its hypervisor served over how many same-host pipes)."""
    return text_table(HOST_COLUMNS, [
        (r["host"], str(r["total_memory_mib"]), str(r["free_memory_mib"]), str(r["nr_cpus"]),
         str(r["domains"]), f"{r['hypercalls']:,}", str(r["pipes"].get("open", 0)))
        for r in rows])


CREATED_COLUMNS = (("Host", "left"), ("Created", "right"), ("Failed", "right"),
                   ("Median s", "right"), ("Max s", "right"))


def creation_summary(results: list[dict[str, Any]], elapsed_s: float) -> str:
    """``create --count N``: per host, how many were created and failed and how long one
    took; then the total and the rate."""
    hosts = sorted({r["host"] for r in results}, key=lambda h: (len(h), h))
    rows = []
    for host in hosts:
        mine = [r for r in results if r["host"] == host]
        lat = sorted(r["latency_s"] for r in mine if r["ok"])
        rows.append((host, str(len(lat)), str(len(mine) - len(lat)),
                     f"{lat[len(lat) // 2]:.2f}" if lat else "-",
                     f"{lat[-1]:.2f}" if lat else "-"))
    ok = sum(r["ok"] for r in results)
    return "\n".join([text_table(CREATED_COLUMNS, rows),
                      f"created {ok} of {len(results)} domains in {elapsed_s:.1f} s "
                      f"({ok / elapsed_s:.1f}/s)" if elapsed_s > 0 else ""]).rstrip()


def sockets_text(rows: list[dict[str, Any]]) -> str:
    """Each host's xenstored socket, for ``XENSTORED_PATH`` (Xen's own tools)."""
    return "\n".join(["xenstored sockets (for XENSTORED_PATH):",
                      *(f"  {r['host']}  {r['xenstored_socket']}" for r in rows)])


def link_text(spec: dict[str, Any]) -> str:
    """A link's spec (``LinkSpec`` fields); jitter, duplication and reordering when set."""
    bw, jitter = spec.get("bandwidth_bps"), spec.get("jitter_s", 0)
    return (f"bandwidth {'unlimited' if not bw else f'{bw / 1e6:g} Mbit/s'}, latency "
            f"{spec.get('latency_s', 0) * 1000:g} ms"
            + (f" ± {jitter * 1000:g} ms" if jitter else "")
            + f", loss {spec.get('loss', 0) * 100:g}%"
            + "".join(f", {k} {spec[k] * 100:g}%" for k in ("duplicate", "reorder")
                      if spec.get(k)))


def link_row_text(row: dict[str, Any]) -> str:
    """One uplink of ``xenray link``: what it does now, the shaping under a fault, a
    partition, and what met it."""
    counts = ", ".join(f"{row.get(k, 0)} {k}" for k in ("frames", "lost", "duplicated",
                                                         "reordered", "partitioned"))
    under = f"  [fault on: {link_text(row['base'])}]" if row.get("fault") else ""
    cut = "  PARTITIONED" if row.get("blocked") else ""
    return f"{row['from']} -> {row['to']}: {link_text(row)}{under}{cut}  ({counts})"


ROUND_COLUMNS = (("Round", "right"), ("Pages sent", "right"), ("Dirtied meanwhile", "right"),
                 ("Time (ms)", "right"), ("MiB/s", "right"), ("", "left"))


def migration_text(report: dict[str, Any]) -> str:
    """A migration's (or save's) rounds, Clark-style, and its totals."""
    rows = [(str(r["round"]), f"{r['pages_sent']:,}", f"{r['pages_dirtied']:,}",
             f"{r['duration_s'] * 1e3:.1f}", f"{r['mib_s']:.1f}",
             "" if r["live"] else "stop-and-copy") for r in report["rounds"]]
    lines = [text_table(ROUND_COLUMNS, rows)]
    totals = [f"{report['bytes_sent'] / 2**20:.1f} MiB sent, {report['bytes_ratio']:.2f}x "
              f"the guest's {report['ram_bytes'] / 2**20:.0f} MiB"]
    if report.get("total_s") is not None:
        totals.append(f"total {report['total_s']:.2f} s")
    if report.get("downtime_ms") is not None:
        parts = report.get("downtime_parts_ms") or {}
        totals.append(f"downtime {report['downtime_ms']:.1f} ms" + (" (" + ", ".join(
            f"{k} {v:.1f}" for k, v in parts.items()) + ")" if parts else ""))
    if report.get("resume_ms") is not None:
        totals.append(f"devices reconnected and init resumed {report['resume_ms']:.0f} ms "
                      "after the unpause")
    if report.get("verify_mismatches") is not None:
        totals.append(f"VERIFY: {report['verify_mismatches']} pages differ")
    return "\n".join([*lines, "; ".join(totals)])
