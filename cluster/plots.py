"""PNG figures of what an experiment measured (matplotlib, headless, imported only when a
figure is asked for)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_migration_report(report: dict[str, Any], directory: str | os.PathLike) -> list[str]:
    """``--report DIR``: the migration's JSON and a PNG of pages sent and dirtied per round,
    as Clark et al.'s figures plot them. Returns the files written."""
    plt = pyplot()
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"migrate-{report['name']}-{report['from']}-{report['to']}"
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    rounds = report["rounds"]
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.bar([x - 0.2 for x in xs], [r["pages_sent"] for r in rounds], width=0.4,
           label="pages sent")
    ax.bar([x + 0.2 for x in xs], [r["pages_dirtied"] for r in rounds], width=0.4,
           label="pages dirtied during the round")
    ax.set_xlabel("round (the last is stop-and-copy)")
    ax.set_ylabel("pages (4 KiB)")
    ax.set_yscale("symlog")
    ax.set_xticks(xs)
    ax.set_title(f"{report['name']}: {report['from']} -> {report['to']}, downtime "
                 f"{report['downtime_ms']:.1f} ms, total {report['total_s']:.2f} s")
    ax.legend()
    fig.tight_layout()
    png_path = out / f"{stem}.png"
    fig.savefig(png_path)
    plt.close(fig)
    return [str(json_path), str(png_path)]


def write_scale_report(report: dict[str, Any], directory: str | os.PathLike) -> list[str]:
    """``bench scale --out DIR``: its JSON and three PNGs: creation latency against k, per
    host and in the cluster (LightVM's Figure 4); xenstore and ``xl list`` latency against N;
    memory per domain beside a bare Ray actor. Returns the files written."""
    plt = pyplot()
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "scale.json"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    levels = report["levels"]
    curves = report["curves"]
    where = f"{report['hosts']} hosts, {report['domains']} domains of {report['domain_mib']} MiB"

    created = [d for d in report["creation"]["domains"] if d["ok"]]
    fig, (by_host, overall) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for host in sorted({d["host"] for d in created}):
        mine = sorted((d for d in created if d["host"] == host), key=lambda d: d["k"])
        by_host.plot([d["k"] for d in mine], [d["latency_s"] for d in mine], marker=".",
                     label=host)
    by_host.set_xlabel("k: the domain's order on its host")
    by_host.set_ylabel("creation latency (s)")
    by_host.set_title("per host")
    by_host.legend(fontsize="small")
    in_order = sorted(created, key=lambda d: d["i"])
    overall.plot([d["i"] for d in in_order], [d["latency_s"] for d in in_order], marker=".",
                 color="black", label="each domain")
    overall.set_xlabel("its order in the cluster")
    overall.set_title(f"overall: {report['creation']['summary']['domains_per_s'] or 0:.2f} "
                      "domains/s")
    for ax in (by_host, overall):
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.suptitle(f"domain creation: {where}")
    fig.tight_layout()
    creation_png = out / "scale-creation.png"
    fig.savefig(creation_png)
    plt.close(fig)

    fig, (xs, ms) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for key, label in (("read_us", "XS_READ"), ("write_us", "XS_WRITE"),
                       ("watch_us", "write to its watch event")):
        xs.plot(levels, curves[key], marker="o", label=label)
    xs.set_ylabel("µs (p50, median over hosts)")
    xs.set_title("xenstored over its Unix socket")
    for key, label in (("list_ms", "xl list, every host"),
                       ("seen_ms", "destroy to @releaseDomain")):
        ms.plot(levels, curves[key], marker="o", label=label)
    ms.set_ylabel("ms")
    ms.set_title("the toolstack")
    for ax in (xs, ms):
        ax.set_xlabel("N: domains in the cluster")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    fig.suptitle(f"latency against N: {where}")
    fig.tight_layout()
    latency_png = out / "scale-latency.png"
    fig.savefig(latency_png)
    plt.close(fig)

    memory = report["memory"]
    groups = [(host, s) for host, s in memory["summary"]["per_host"].items()]
    if memory["summary"]["total"] is not None:
        groups.append(("all", memory["summary"]["total"]))
    if memory["bare"] is not None:
        groups.append(("bare Ray actor", memory["bare"]))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    xs_ = list(range(len(groups)))
    ax.bar([x - 0.2 for x in xs_], [s["uss_mib"] for _, s in groups], width=0.4, label="USS")
    ax.bar([x + 0.2 for x in xs_], [s["pss_mib"] for _, s in groups], width=0.4, label="PSS")
    ax.set_xticks(xs_, [name for name, _ in groups])
    ax.set_ylabel("MiB per domain process (median)")
    ax.set_title(f"memory per domain: {where}")
    ax.legend()
    fig.tight_layout()
    memory_png = out / "scale-memory.png"
    fig.savefig(memory_png)
    plt.close(fig)
    return [str(json_path), str(creation_png), str(latency_png), str(memory_png)]
