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
                ("State", "left"), ("Time(s)", "right"), ("Host", "left"))


def domain_table(rows: list[dict[str, Any]]) -> str:
    """``xl list``'s columns (plus the host) for rows from ``Cluster.list()``."""
    return text_table(LIST_COLUMNS, [
        (r["name"], str(r["domid"]), str(r["mem"]), str(r["vcpus"]), r["state"],
         f"{r['time']:.1f}", r["host"]) for r in rows])


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


def sockets_text(rows: list[dict[str, Any]]) -> str:
    """Each host's xenstored socket, for ``XENSTORED_PATH`` (Xen's own tools)."""
    return "\n".join(["xenstored sockets (for XENSTORED_PATH):",
                      *(f"  {r['host']}  {r['xenstored_socket']}" for r in rows)])


def link_text(spec: dict[str, Any]) -> str:
    bw = spec.get("bandwidth_bps")
    return (f"bandwidth {'unlimited' if not bw else f'{bw / 1e6:g} Mbit/s'}, latency "
            f"{spec.get('latency_s', 0) * 1000:g} ms, loss {spec.get('loss', 0) * 100:g}%")
