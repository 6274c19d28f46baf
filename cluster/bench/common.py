"""What every benchmark shares: the bare Ray actor baseline, and the result a person reads
(a table) or a program reads (``--json``)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import ray
from rich.console import Console

from cluster.report import text_table


@ray.remote
class Bare:
    """The baseline: a Ray actor whose method does nothing."""

    def noop(self, payload: bytes) -> bytes:
        return payload


@dataclasses.dataclass
class BenchResult:
    """One benchmark's answer: ``rows`` of plain numbers and text under ``columns`` (key,
    heading, format), a title, notes (the aim, what explains a gap), and ``data`` for a
    program only (the curves behind the table; in ``--json`` alone)."""

    name: str
    title: str
    columns: list[tuple[str, str, str]]
    rows: list[dict[str, Any]]
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] | None = None

    def print(self, out: Console, as_json: bool = False) -> None:
        """A plain-text table (never cut, whatever the width) and the notes; or JSON."""
        if as_json:
            extra = {} if self.data is None else {"data": self.data}
            print(json.dumps({"benchmark": self.name, "title": self.title, "rows": self.rows,
                              "notes": self.notes, **extra}))
            return
        columns = [(heading, "left" if i == 0 else "right")
                   for i, (_, heading, _) in enumerate(self.columns)]
        cells = [[_cell(row.get(key), fmt) for key, _, fmt in self.columns] for row in self.rows]
        out.print(f"{self.title}\n{text_table(columns, cells)}", markup=False, highlight=False,
                  soft_wrap=True)  # a narrow terminal folds long rows itself; rich must not
        for note in self.notes:
            out.print(note, markup=False, highlight=False)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str) or not fmt:
        return str(value)
    return format(value, fmt)
