"""A run's timeline as a PNG (``DIR/timeline.png``): one row per measured domain (per group
of domains, ``[[domain]]`` with a ``count``: their progress summed), its progress over the
run's seconds, with every fault occurrence as a shaded band across all rows
(a crash, which has no duration, as a line) and every op as a dashed line. A stall is a flat
stretch of a line; a recovery is where it climbs again after a band."""

from __future__ import annotations

import os
import pathlib

from cluster.scenario import history as h

COLOURS = {"crash": "tab:red", "freeze": "tab:blue", "partition": "tab:purple",
           "link": "tab:pink", "disk": "tab:orange", "powercut": "tab:brown",
           "memory": "tab:olive", "hostile": "tab:gray"}


def rows(events: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Each row's progress samples: a domain's, or the sum of its group's (``name ×N``)."""
    groups: dict[str, list[str]] = {}
    for name, e in h.domains(events).items():
        groups.setdefault(e.get("group") or name, []).append(name)
    label = {n: (g if members == [g] else f"{g} ×{len(members)}")
             for g, members in groups.items() for n in members}
    out: dict[str, list[tuple[float, float]]] = {}
    for e in h.of(events, "progress"):
        sums: dict[str, float] = {}
        for name, units in e["units"].items():
            row = label.get(name, name)
            sums[row] = sums.get(row, 0) + units
        for row, units in sums.items():
            out.setdefault(row, []).append((e["t"], units))
    return out


def write_timeline(events: list[dict], path: str | os.PathLike, *, title: str) -> pathlib.Path:
    from cluster.plots import pyplot

    plt = pyplot()
    t0 = h.workload_start(events)
    series = rows(events)
    names = sorted(series) or ["(no measured domain)"]
    fig, axes = plt.subplots(len(names), 1, sharex=True, squeeze=False, dpi=100,
                             figsize=(9, 1.0 + 1.4 * len(names)))
    windows = h.fault_windows(events)
    ops = [e for e in h.of(events, "op") if e["phase"] == "invoke"]
    outcome = {e["index"]: e["phase"] for e in h.of(events, "op") if e["phase"] != "invoke"}
    for row, (ax,) in enumerate(axes):
        name = names[row]
        if name in series:
            ts = [t - t0 for t, _ in series[name]]
            ax.step(ts, [u for _, u in series[name]], where="post", color="black", lw=1.2)
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.grid(alpha=0.3)
        for w in windows:
            colour = COLOURS.get(w.kind, "tab:gray")
            label = f"{w.kind} {', '.join(w.targets)}"
            if w.kind != "crash":
                ax.axvspan(w.start - t0, w.end - t0, color=colour, alpha=0.2,
                           label=label if row == 0 else None)
            else:
                ax.axvline(w.start - t0, color=colour, lw=2, label=label if row == 0 else None)
        for e in ops:
            failed = " (failed)" if outcome.get(e["index"]) in ("fail", "info") else ""
            ax.axvline(e["t"] - t0, color="tab:green", ls="--", lw=1,
                       label=f"{e['kind']} {e['domain']}{failed}" if row == 0 else None)
    axes[0][0].set_title(f"{title}: progress of each domain (units of its workload)")
    if windows or ops:
        handles, labels = axes[0][0].get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        axes[0][0].legend(unique.values(), unique.keys(), loc="upper left", fontsize="small",
                          bbox_to_anchor=(1.01, 1.0))
    axes[-1][0].set_xlabel("seconds since the workload started")
    axes[-1][0].set_xlim(left=0, right=max(h.end(events) - t0, 1.0))
    fig.tight_layout()
    out = pathlib.Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
