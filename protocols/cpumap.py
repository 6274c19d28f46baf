"""pCPU lists as xl writes them (``cpus=`` in xl.cfg, ``xl vcpu-pin``, ``xl vcpu-list``).

Why: libxl's ``parse_cpurange`` (``tools/xl/xl_parse.c``) takes "all", "3", "0-3", "^1" (take
away), "node:0" or "nodes:0" and comma-separated mixes of them, applied left to right ("^all"
is refused); ``print_bitmap`` (``xl_vcpu.c``) prints "all" or ranges. Both ends live here so
they agree, and xl.cfg's parser checks its ``cpus=`` with the same grammar.

Decisions: a host here is one NUMA node, so "nodes:0" is every pCPU and another node is an
error; a pCPU beyond the host's is an error, as libxl refuses a cpumap with none it has.
"""

from __future__ import annotations

import re

_ITEM = re.compile(r"(\^)?(nodes?:)?(?:(all)|(\d+)(?:-(\d+))?)")


def _items(text: str) -> list[tuple[bool, bool, int | None, int | None]]:
    """``update_cpumap_range`` for each comma-separated part: (take away, a NUMA node range,
    first, last; None, None: all). ValueError with xl's words."""
    out = []
    for part in text.replace(" ", "").split(","):
        m = _ITEM.fullmatch(part)
        if m is None or (m[5] and int(m[5]) < int(m[4])):
            raise ValueError(f"Invalid pcpu range: {part}.")
        neg, nodes, everything, lo, hi = m.groups()
        if everything and neg:
            raise ValueError('Can\'t combine "^" and "all".')
        first = None if everything else int(lo)
        out.append((bool(neg), bool(nodes), first, None if everything else int(hi or lo)))
    return out


def check_cpulist(text: str) -> None:
    """xl's syntax of a pCPU list, before any host is known (xl.cfg's ``cpus=``)."""
    _items(text)


def parse_cpulist(text: str, nr_cpus: int) -> frozenset[int]:
    """The pCPUs ``text`` names on a host of ``nr_cpus``; ValueError with xl's words."""
    cpus: set[int] = set()
    for neg, nodes, first, last in _items(text):
        if first is None:
            chosen = set(range(nr_cpus))
        elif nodes:
            if last > 0:
                raise ValueError(f"no NUMA node {last} here: a host is one node (0)")
            chosen = set(range(nr_cpus))
        else:
            if last >= nr_cpus:
                raise ValueError(f"pcpu {last} does not exist (the host has {nr_cpus})")
            chosen = set(range(first, last + 1))
        cpus = cpus - chosen if neg else cpus | chosen
    if not cpus:
        raise ValueError(f"`{text}' leaves no pcpu")
    return frozenset(cpus)


def format_cpus(cpus: frozenset[int] | None, nr_cpus: int) -> str:
    """``print_bitmap``: "all", else ranges such as "0-1,3"; None is every pCPU."""
    if cpus is None or set(range(nr_cpus)) <= cpus:
        return "all"
    if not cpus:
        return "none"
    out, run = [], []
    for c in sorted(cpus):
        if run and c != run[-1] + 1:
            out.append(_span(run))
            run = []
        run.append(c)
    out.append(_span(run))
    return ",".join(out)


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def to_bitmap(cpus: frozenset[int] | None, nr_cpus: int) -> bytes:
    """A ``xenctl_bitmap`` of ``nr_cpus`` bits (None: every pCPU)."""
    bits = bytearray((nr_cpus + 7) // 8)
    for i in range(nr_cpus) if cpus is None else cpus:
        bits[i // 8] |= 1 << (i % 8)
    return bytes(bits)


def from_bitmap(bitmap: bytes, nr_cpus: int) -> frozenset[int]:
    return frozenset(i for i in range(min(nr_cpus, 8 * len(bitmap)))
                     if bitmap[i // 8] >> (i % 8) & 1)
