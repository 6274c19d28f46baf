"""Tables a person reads: one rendering of xl's views, shared by the CLI and the demo."""

from __future__ import annotations

from typing import Any

from rich.table import Table

LIST_COLUMNS = (("Name", "left"), ("ID", "right"), ("Mem", "right"), ("VCPUs", "right"),
                ("State", "left"), ("Time(s)", "right"), ("Host", "left"))


def domain_table(rows: list[dict[str, Any]]) -> Table:
    """``xl list``'s columns (plus the host) for rows from ``Cluster.list()``."""
    table = Table(box=None, header_style="bold")
    for col, just in LIST_COLUMNS:
        table.add_column(col, justify=just)
    for r in rows:
        table.add_row(r["name"], str(r["domid"]), str(r["mem"]), str(r["vcpus"]), r["state"],
                      f"{r['time']:.1f}", r["host"])
    return table


def host_table(rows: list[dict[str, Any]]) -> Table:
    """``xenray info``: one row per host."""
    table = Table(box=None, header_style="bold")
    columns = list(rows[0]) if rows else []
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*(str(r[c]) for c in columns))
    return table
