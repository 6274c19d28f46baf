"""What ``xenray run`` shows a person: the run as it goes (a progress bar over the workload's
seconds, a line per thing that happens) and the verdict table at the end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def verdict_table(results: dict[str, Any]) -> Table:
    table = Table(title=f"{results['scenario']} (seed {results['seed']})", title_justify="left")
    table.add_column("check")
    table.add_column("verdict")
    table.add_column("details", overflow="fold")
    for v in results["verdicts"]:
        table.add_row(v["check"], "[green]PASS[/green]" if v["ok"] else "[red]FAIL[/red]",
                      escape(v["summary"]))
    return table


def recovery_lines(results: dict[str, Any]) -> list[str]:
    """One line per domain a fault stalled: how long it took to make progress again."""
    lines = []
    for r in results["recoveries"]:
        took = ("did not recover after" if r["recovery_s"] is None
                else f"progressed again {r['recovery_s']:.2f} s after")
        lines.append(f"{r['domain']}: {took} {r['kind']} {', '.join(r['targets'])}")
    return lines


@contextmanager
def live(out: Console, duration: float) -> Iterator[tuple[Any, Any]]:
    """``(say, tick)`` for :class:`cluster.scenario.runner.Runner`: lines above a bar of
    the workload's seconds."""
    with Progress(TextColumn("workload"), BarColumn(), TextColumn("{task.completed:.0f}/"
                  "{task.total:.0f} s"), TimeElapsedColumn(), console=out,
                  transient=True) as bar:
        task = bar.add_task("run", total=duration)

        def say(text: str) -> None:
            bar.console.print(f"  {escape(text)}", highlight=False)

        def tick(seconds: float) -> None:
            bar.update(task, completed=min(seconds, duration))

        yield say, tick
