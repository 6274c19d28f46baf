"""A domain's progress, read from its console as its workload prints it.

Each init program says what it has done on its console: ``counter N`` twice a second, ping
a line per reply, ``memdirty: N pages dirtied`` (``report=S``), ``udpstream send: N packets``
(``report=S``), blkverify's ``ACK`` lines (``acklog=1``: the writes acknowledged before each
batch). :data:`METERS` says, per init, which lines
count and how: each matching line is one unit, or the line carries the count so far. A
domain that restarts (``on_crash = "restart"``) counts from zero again; its units go on
growing. ``RESULT {json}`` lines are the results the workload publishes.

The consoles are read from the files each host's xenconsoled appends to
(``<log dir>/console/<host>/<name>.log``), every host's, so a migrated domain is followed to
its new host; only what is written after :meth:`Consoles.follow` counts (a name reused in a
long-lived cluster has older lines).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Any

from actors.console.daemon import log_file_name


@dataclasses.dataclass(frozen=True)
class Meter:
    """Which console lines are progress: ``pattern`` matches them; with a group, it is the
    count so far, else each line is one unit. ``final``: the workload ends with its result."""

    pattern: re.Pattern
    final: bool = False

    def reading(self, line: str) -> int | None:
        m = self.pattern.search(line)
        if m is None:
            return None
        return int(m.group(1)) if m.groups() else -1  # -1: one more unit


METERS = {
    "counter": Meter(re.compile(r"^counter \d+$")),
    "ping": Meter(re.compile(r"^\d+ bytes from .* icmp_seq="), final=True),
    "memdirty": Meter(re.compile(r"^memdirty: (\d+) pages dirtied")),
    "udpstream": Meter(re.compile(r"^udpstream (?:send|recv): (\d+) packets"), final=True),
    "blkverify": Meter(re.compile(r"^ACK (\d+) "), final=True),  # acklog=1: writes acked
    "blkbench": Meter(re.compile(r"^blkbench: (\d+) ios"), final=True),
}


class Progress:
    """One domain's units so far, from its console lines fed in order."""

    def __init__(self, init: str) -> None:
        self.meter = METERS.get(init)
        self.units = 0
        self._count = 0  # the count the workload printed last

    @property
    def measured(self) -> bool:
        return self.meter is not None

    def feed(self, line: str) -> dict[str, Any] | None:
        """Count a line; a ``RESULT`` line's data is returned."""
        if line.startswith("RESULT "):
            try:
                return json.loads(line[len("RESULT "):])
            except ValueError:
                return None
        reading = self.meter.reading(line) if self.meter else None
        if reading == -1:
            self.units += 1
        elif reading is not None:
            # a smaller count than the last: the workload started again (a new domain)
            self.units += reading - self._count if reading >= self._count else reading
            self._count = reading
        return None


class Consoles:
    """New complete console lines of each followed domain, from every host's log files."""

    def __init__(self, log_dir: str | os.PathLike, hosts: list[str]) -> None:
        self.dirs = [pathlib.Path(log_dir) / "console" / h for h in hosts]
        self._offsets: dict[pathlib.Path, int] = {}
        self._partial: dict[pathlib.Path, bytes] = {}

    def _paths(self, name: str) -> list[pathlib.Path]:
        return [d / log_file_name(name) for d in self.dirs]

    def follow(self, name: str) -> None:
        """From now on: what the domain's log files hold already is not read."""
        for path in self._paths(name):
            self._offsets[path] = path.stat().st_size if path.exists() else 0

    def read(self, name: str) -> list[str]:
        """Lines written since the last read, the least recently written file first (the
        host a domain left before the one it runs on)."""
        found = []
        for path in self._paths(name):
            try:
                found.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                continue
        lines: list[str] = []
        for _, path in sorted(found):
            with path.open("rb") as f:
                f.seek(self._offsets.get(path, 0))
                data = self._partial.pop(path, b"") + f.read()
                self._offsets[path] = f.tell()
            *complete, rest = data.split(b"\n")
            if rest:
                self._partial[path] = rest
            lines += [c.decode(errors="replace") for c in complete]
        return lines
