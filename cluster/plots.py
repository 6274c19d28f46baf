"""PNG figures of what an experiment measured (matplotlib, headless, imported only when a
figure is asked for)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any


def write_migration_report(report: dict[str, Any], directory: str | os.PathLike) -> list[str]:
    """``--report DIR``: the migration's JSON and a PNG of pages sent and dirtied per round,
    as Clark et al.'s figures plot them. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
