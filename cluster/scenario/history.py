"""A run's history: every operation, fault, heal and progress sample, in the order it
happened, as JSON lines (Jepsen's history; ``DIR/history.jsonl``), and the views of it the
checkers and the timeline read.

Each event is a dict with ``event`` (its type), ``t`` (seconds since the run began, on a
monotonic clock) and ``wall`` (UTC, ISO 8601). The types:

* ``run``: the scenario, its seed and duration; ``workload``: every initial domain is up, the
  schedule starts (the scenario's times count from here); ``end``: the schedule is over.
* ``create``: a domain (``domain``, of ``group``) created on ``host`` in ``took_s``, with
  ``init``, ``disks`` (image paths) and ``vifs``; ``ok`` false and ``error`` if it failed.
* ``op``: ``phase`` ``invoke`` then ``ok`` or ``fail`` (``error``) of op ``index``, or
  ``info`` if it was still running long after the end (it may yet happen, or not).
* ``inject``: fault ``index``, ``occurrence``, ``kind``, the ``target`` asked for and the
  ``targets`` hit (nemesis names: a domain, a host, ``<host>/<component>``), or ``error``;
  ``at`` is when the schedule said, ``started`` when the nemesis began, ``t`` when it was
  done; ``heal``: the same fault healed.
* ``progress``: ``units`` (each domain's progress so far, in its workload's units);
  ``result``: a domain's published result, ``final`` if its workload ends with it.
* ``census``: ``xl list``'s State of each of the run's domains still there when the run
  ends (``states``), and the hosts that did not answer (``errors``).
* ``destroy``: a domain destroyed when the run ends.
* ``memory``: each host's free pages (``free_pages``), ``phase`` ``before`` the run's
  domains are created and ``after`` they are destroyed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

# The parts of a host whose loss stalls the domains that use them, by what they use.
_STALLS = {"blkback": "disks", "netback": "vifs", "xenconsoled": "all", "hypervisor": "all"}
_NETWORK_FAULTS = ("partition", "link")  # a host target: the domains with a NIC there


class History:
    """Appends events to a JSONL file as they happen (thread-safe) and keeps them."""

    def __init__(self, path: str | os.PathLike, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._file = open(path, "w", buffering=1)
        self._clock, self._wall = clock, wall
        self._t0 = clock()
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []

    def now(self) -> float:
        return self._clock() - self._t0

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            wall = datetime.datetime.fromtimestamp(self._wall(), datetime.UTC)
            entry = {"event": event, "t": round(self.now(), 4),
                     "wall": wall.isoformat(timespec="milliseconds"), **fields}
            self._file.write(json.dumps(entry, default=str) + "\n")
            self.events.append(entry)
            return entry

    def close(self) -> None:
        self._file.close()


def load(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# -- views ----------------------------------------------------------------------------------

def of(events: Iterable[dict], kind: str) -> list[dict]:
    return [e for e in events if e["event"] == kind]


def workload_start(events: list[dict]) -> float:
    starts = of(events, "workload")
    return starts[0]["t"] if starts else 0.0


def into_workload(events: list[dict], t: float) -> float:
    """``t`` as seconds since the workload started (as a scenario's times count)."""
    return round(t - workload_start(events), 3)


def end(events: list[dict]) -> float:
    ends = of(events, "end")
    return ends[0]["t"] if ends else max((e["t"] for e in events), default=0.0)


@dataclasses.dataclass(frozen=True)
class Window:
    """One occurrence of a fault: from the start of its inject to its heal (a crash: to the
    end of its inject, while the nemesis looked its targets up and killed them)."""

    index: int
    occurrence: int
    kind: str
    targets: tuple[str, ...]
    start: float
    end: float


def fault_windows(events: list[dict]) -> list[Window]:
    """Every fault carried out (injects that failed are not), in inject order."""
    heals = {(e["index"], e["occurrence"]): e["t"] for e in of(events, "heal")}
    last = end(events)
    out = []
    for e in of(events, "inject"):
        if "error" in e:
            continue
        key = (e["index"], e["occurrence"])
        stop = e["t"] if e["kind"] == "crash" else heals.get(key, last)
        out.append(Window(*key, e["kind"], tuple(e["targets"]), e.get("started", e["t"]), stop))
    return out


def domains(events: list[dict]) -> dict[str, dict]:
    """Each domain created (the last create of that name that succeeded)."""
    return {e["domain"]: e for e in of(events, "create") if e.get("ok")}


def host_at(events: list[dict], name: str, t: float) -> str | None:
    """Where domain ``name`` ran at ``t``: its create's host, then each migration's."""
    host = None
    for e in events:
        if e["t"] > t:
            break
        if e["event"] == "create" and e["domain"] == name and e.get("ok"):
            host = e["host"]
        elif (e["event"] == "op" and e.get("kind") == "migrate" and e["phase"] == "ok"
              and e["domain"] == name):
            host = e["args"]["host"]
    return host


def affected(events: list[dict], window: Window) -> set[str]:
    """The domains a fault stalls by design: those it targets by name, and those that use a
    part of a host it hit (every domain of a crashed or frozen host or hypervisor; those with
    a disk for blkback, a NIC for netback or a network fault; all for xenconsoled, through
    which their progress is seen). A target ``<domain>/<device>`` is that domain's."""
    known = domains(events)
    out: set[str] = set()
    if window.kind == "memory":
        return out  # running domains keep the memory they have
    targets = window.targets
    if window.kind == "link":  # "h1-h2": the link's two hosts
        targets = tuple(host for t in targets for host in t.split("-"))
    for target in targets:
        head, _, part = target.partition("/")
        if head in known:
            out.add(head)
            continue
        if part and part not in _STALLS:
            continue  # xenstored, xl: running domains do not need them
        uses = _STALLS.get(part, "vifs" if window.kind in _NETWORK_FAULTS else "all")
        for name, facts in known.items():
            if host_at(events, name, window.start) != head:
                continue
            if uses == "all" or (uses == "disks" and facts.get("disks")) or \
                    (uses == "vifs" and facts.get("vifs")):
                out.add(name)
    return out


def progress(events: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Each domain's progress samples: ``(t, units so far)``."""
    out: dict[str, list[tuple[float, float]]] = {}
    for e in of(events, "progress"):
        for name, units in e["units"].items():
            out.setdefault(name, []).append((e["t"], units))
    return out


def advances(samples: list[tuple[float, float]]) -> list[float]:
    """The sample times at which progress had grown since the sample before."""
    return [t for (_, u0), (t, u) in zip(samples, samples[1:]) if u > u0]


def finished(events: list[dict]) -> dict[str, float]:
    """When each domain's workload ended (its first ``final`` result: a ping's summary, not
    one of memdirty's periodic checks)."""
    out: dict[str, float] = {}
    for e in of(events, "result"):
        if e.get("final"):
            out.setdefault(e["domain"], e["t"])
    return out
