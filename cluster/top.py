"""``xenray top``'s table, as ``tools/xentop/xentop.c`` draws it: pure, so it is tested alone.

The samples are libxenstat nodes, one per host (``Cluster.xenstat``, laid out by
:mod:`actors.toolstack.xenstat`). :func:`domain_rows` turns this sample and the one before
into a :class:`Row` per domain; :data:`FIELDS` is xentop's ``fields[]`` (its headers, default
widths, comparisons and printf formats), :func:`sort_rows` its ``qsort`` by the sort column,
:func:`table` its ``top()`` (the header, a line per domain, the ``--vcpus``/``-n``/``-x``
lines), and :func:`summary` its ``do_summary()``. :class:`View` is what the keys change
(:func:`handle_key`, xentop's ``handle_key``). The terminal and the loop live in
:mod:`cluster.cli.top`.

Decisions:

* One table for the whole cluster, with a HOST column xentop has not: it comes last, so each
  of xentop's columns is where a script reading xentop's output expects it. MEM(%) and
  MAXMEM(%) are of the domain's own host's memory. The summary has a memory and CPU line per
  host.
* CPU(%) is xentop's: the domain's ``cpu_time`` grown since the previous sample over the time
  between the two, but that time is the host's own clock at each sample (``clock``), not
  the viewer's; 0.0 with no previous sample of that domain on that host (a first sample, a
  domain just created or just migrated in), and 0.0 rather than xentop's unsigned wrap if
  ``cpu_time`` went back (a domid used again).
* Rows that sort equal keep the order (host, domid): xentop's ``qsort`` leaves it unspecified.
* ``-z`` puts every host's Domain-0 first, in host order.
* xentop's per-vCPU line (``do_vcpu``, key ``v``) is turned on at start by ``--vcpus`` only:
  its short ``-v`` is xenray's ``--verbose`` on every command. Each online vCPU's time is
  getvcpuinfo's; Dom0's line is empty (:mod:`actors.toolstack.xenstat`). VCPUS is
  libxenstat's ``max_vcpu_id + 1``.
"""

from __future__ import annotations

import dataclasses
import time as _time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from protocols.hypercall import DomInfoFlag, ShutdownReason

Node = Mapping[str, Any]  # one host's sample (actors.toolstack.xenstat.node)
DOM0_NAME = "Domain-0"
PROMPT_MAX = 79  # PROMPT_VAL_LEN - 1
KEY_ESCAPE = "\x1b"
KEY_UP, KEY_DOWN = "up", "down"  # the arrow keys, as the terminal reader names them


# -- a domain's state ----------------------------------------------------------------------

def _shutdown_code(flags: int) -> int:
    return (flags >> 16) & 0xFF


def _shut_down(flags: int, crash: bool) -> bool:
    return bool(flags & DomInfoFlag.shutdown) and \
        (_shutdown_code(flags) == ShutdownReason.crash) == crash


# xentop's state_funcs[]: the order of the letters, of the state column's sort, and their tests
STATE_LETTERS: tuple[tuple[str, Callable[[int], bool]], ...] = (
    ("d", lambda f: bool(f & DomInfoFlag.dying)),
    ("s", lambda f: _shut_down(f, crash=False)),
    ("b", lambda f: bool(f & DomInfoFlag.blocked)),
    ("c", lambda f: _shut_down(f, crash=True)),
    ("p", lambda f: bool(f & DomInfoFlag.paused)),
    ("r", lambda f: bool(f & DomInfoFlag.running)),
)
# do_summary's tally: the first of these a domain is in counts it (none: not counted)
SUMMARY_STATES = (("r", "running"), ("b", "blocked"), ("p", "paused"), ("s", "shutdown"),
                  ("c", "crashed"), ("d", "dying"))


def state_letters(flags: int) -> str:
    """xentop's STATE: six characters ``dsbcpr``, a ``-`` for each state the domain is not
    in (a blocked domain is ``--b---``, a crashed one ``---c--``)."""
    return "".join(letter if test(flags) else "-" for letter, test in STATE_LETTERS)


def summary_state(flags: int) -> str | None:
    """The state ``do_summary`` counts the domain in: running, else blocked, paused,
    shutdown, crashed, dying (None if none of them)."""
    tests = dict(STATE_LETTERS)
    return next((state for letter, state in SUMMARY_STATES if tests[letter](flags)), None)


def tally(rows: Iterable[Row]) -> dict[str, int]:
    """How many of ``rows`` ``do_summary`` counts in each state, in its order."""
    counts = {state: 0 for _, state in SUMMARY_STATES}
    for row in rows:
        state = summary_state(row.flags)
        if state is not None:
            counts[state] += 1
    return counts


# -- rows ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Row:
    """One domain of one sample, with what xentop derives from it."""

    host: str
    domid: int
    name: str
    flags: int
    cpu_ns: int
    cpu_pct: float
    mem: int  # bytes (xenstat_domain_cur_mem)
    mem_pct: float  # of its host's memory
    maxmem: int | None  # bytes; None: no limit
    maxmem_pct: float | None
    vcpus: int
    ssid: int
    vcpu_stats: tuple[Mapping[str, Any], ...] = ()  # xenstat_vcpu per vCPU: online, ns
    networks: tuple[Mapping[str, Any], ...] = ()
    vbds: tuple[Mapping[str, Any], ...] = ()

    @property
    def state(self) -> str:
        return state_letters(self.flags)

    @property
    def nettx(self) -> int:
        """Bytes Dom0's vifs sent the domain (``tot_net_bytes(domain, FALSE)``)."""
        return sum(n["tbytes"] for n in self.networks)

    @property
    def netrx(self) -> int:
        return sum(n["rbytes"] for n in self.networks)

    def vbd_total(self, counter: str) -> int | None:
        """``tot_vbd_reqs``: the sum over the vbds that could be read; None if every one
        failed (xentop prints ``-``), 0 for a domain without vbds."""
        good = [v for v in self.vbds if not v.get("error")]
        if self.vbds and not good:
            return None
        return sum(v[counter] for v in good)


def cpu_pct(cpu_ns: int, prev_cpu_ns: int | None, elapsed_s: float) -> float:
    """xentop's ``get_cpu_pct``: ns of CPU over µs elapsed, as a percentage (100.0 is one
    pCPU's worth). 0.0 without a previous sample, or if no time passed."""
    if prev_cpu_ns is None or elapsed_s <= 0 or cpu_ns < prev_cpu_ns:
        return 0.0
    return ((cpu_ns - prev_cpu_ns) / 10.0) / (elapsed_s * 1e6)


def domain_rows(nodes: Iterable[Node], previous: Iterable[Node] | None = None) -> list[Row]:
    """A row per domain of this sample's ``nodes``, its CPU(%) against ``previous`` (the
    sample before: the same domid on the same host), in host then domid order."""
    before = {n["host"]: n for n in previous or ()}
    rows = []
    for node in nodes:
        prev = before.get(node["host"])
        prev_ns = {d["domid"]: d["cpu_ns"] for d in prev["domains"]} if prev else {}
        elapsed = node["clock"] - prev["clock"] if prev else 0.0
        total = node["tot_mem"] or 1
        for d in node["domains"]:
            rows.append(Row(
                host=node["host"], domid=d["domid"], name=d["name"], flags=d["flags"],
                cpu_ns=d["cpu_ns"], cpu_pct=cpu_pct(d["cpu_ns"], prev_ns.get(d["domid"]),
                                                    elapsed),
                mem=d["cur_mem"], mem_pct=d["cur_mem"] / total * 100,
                maxmem=d["max_mem"],
                maxmem_pct=None if d["max_mem"] is None else d["max_mem"] / total * 100,
                vcpus=d["num_vcpus"], ssid=d["ssid"], vcpu_stats=tuple(d["vcpus"]),
                networks=tuple(d["networks"]), vbds=tuple(d["vbds"])))
    return rows


# -- the columns ---------------------------------------------------------------------------

_UNLIMITED = (1 << 64) - 1  # (unsigned long long)-1: how xentop compares "no limit"


@dataclasses.dataclass(frozen=True)
class Field:
    """One of xentop's ``fields[]``: its header, default width, sort key (``descending``:
    xentop's ``-compare``) and cell (the row printed in ``width``). ``grows``: xentop widens
    the column to fit its largest number (``adjust_field_widths``)."""

    header: str
    width: int
    key: Callable[[Row], Any]
    descending: bool
    cell: Callable[[Row, int], str]
    grows: Callable[[Row], int] | None = None


def _num(value: Callable[[Row], int | None]) -> Callable[[Row, int], str]:
    def cell(row: Row, width: int) -> str:
        v = value(row)
        return f"{'-' if v is None else v:>{width}}"
    return cell


def _vbd(counter: str) -> Callable[[Row], int | None]:
    return lambda r: r.vbd_total(counter)


def _pct(value: float | None, width: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:{width}.1f}"


FIELDS: tuple[Field, ...] = (
    Field("NAME", 10, lambda r: r.name.lower(), False,
          lambda r, w: f"{r.name[:w]:>{w}}"),
    Field("STATE", 6, lambda r: tuple(not t(r.flags) for _, t in STATE_LETTERS), False,
          lambda r, w: f"{r.state:>{w}}"),
    Field("CPU(sec)", 10, lambda r: r.cpu_ns, True, _num(lambda r: r.cpu_ns // 10**9)),
    Field("CPU(%)", 6, lambda r: r.cpu_pct, True, lambda r, w: _pct(r.cpu_pct, w)),
    Field("MEM(k)", 10, lambda r: r.mem, True, _num(lambda r: r.mem // 1024)),
    Field("MEM(%)", 6, lambda r: r.mem, True, lambda r, w: _pct(r.mem_pct, w)),
    Field("MAXMEM(k)", 10, lambda r: _UNLIMITED if r.maxmem is None else r.maxmem, True,
          lambda r, w: f"{'no limit':>{w}}" if r.maxmem is None else f"{r.maxmem // 1024:>{w}}"),
    Field("MAXMEM(%)", 9, lambda r: _UNLIMITED if r.maxmem is None else r.maxmem, True,
          lambda r, w: _pct(r.maxmem_pct, w)),
    Field("VCPUS", 5, lambda r: r.vcpus, True, _num(lambda r: r.vcpus)),
    Field("NETS", 4, lambda r: len(r.networks), True, _num(lambda r: len(r.networks))),
    Field("NETTX(k)", 8, lambda r: r.nettx, True, _num(lambda r: r.nettx // 1024),
          grows=lambda r: r.nettx // 1024),
    Field("NETRX(k)", 8, lambda r: r.netrx, True, _num(lambda r: r.netrx // 1024),
          grows=lambda r: r.netrx // 1024),
    Field("VBDS", 4, lambda r: len(r.vbds), True, _num(lambda r: len(r.vbds))),
    Field("VBD_OO", 8, lambda r: r.vbd_total("oo_reqs") or 0, True, _num(_vbd("oo_reqs"))),
    Field("VBD_RD", 8, lambda r: r.vbd_total("rd_reqs") or 0, True, _num(_vbd("rd_reqs")),
          grows=lambda r: r.vbd_total("rd_reqs") or 0),
    Field("VBD_WR", 8, lambda r: r.vbd_total("wr_reqs") or 0, True, _num(_vbd("wr_reqs")),
          grows=lambda r: r.vbd_total("wr_reqs") or 0),
    Field("VBD_RSECT", 10, lambda r: r.vbd_total("rd_sects") or 0, True,
          _num(_vbd("rd_sects")), grows=lambda r: r.vbd_total("rd_sects") or 0),
    Field("VBD_WSECT", 10, lambda r: r.vbd_total("wr_sects") or 0, True,
          _num(_vbd("wr_sects")), grows=lambda r: r.vbd_total("wr_sects") or 0),
    Field("SSID", 4, lambda r: r.ssid, False, _num(lambda r: r.ssid)),
    Field("HOST", 4, lambda r: r.host, False, lambda r, w: f"{r.host:>{w}}"),
)
NAME, HOST = 0, len(FIELDS) - 1


def sort_rows(rows: Iterable[Row], sort_field: int = NAME, *,
              dom0_first: bool = False) -> list[Row]:
    """xentop's sort by column ``sort_field`` (an index of :data:`FIELDS`): names and SSIDs
    ascending, numbers largest first, states dying first then shutdown, blocked, crashed,
    paused, running. Ties stay in (host, domid) order. ``dom0_first``: Domain-0s first."""
    field = FIELDS[sort_field]
    ordered = sorted(rows, key=lambda r: (r.host, r.domid))
    ordered.sort(key=field.key, reverse=field.descending)
    if dom0_first:
        dom0s = sorted((r for r in ordered if r.name == DOM0_NAME), key=lambda r: r.host)
        ordered = dom0s + [r for r in ordered if r.name != DOM0_NAME]
    return ordered


def widths(rows: Sequence[Row], *, full_name: bool = False) -> list[int]:
    """Each column's width for these rows: the default, widened to the digits of the
    largest number of a growing column (``INT_FIELD_WIDTH(n + 1)``), to the longest name
    with ``full_name`` (else names are cut to 10), and to the longest host name."""
    out = [f.width for f in FIELDS]
    for i, f in enumerate(FIELDS):
        if f.grows is not None:
            out[i] = max([out[i], *(len(str(f.grows(r) + 1)) for r in rows)])
    if full_name:
        out[NAME] = max([out[NAME], *(len(r.name) for r in rows)])
    out[HOST] = max([out[HOST], *(len(r.host) for r in rows)])
    return out


# -- what the keys change ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class View:
    """What xentop's options and keys set: the sort column, the delay, the optional lines,
    the first domain shown (the arrow keys scroll), and a prompt being typed (``d``)."""

    sort_field: int = NAME
    delay: float = 3.0
    vcpus: bool = False  # --vcpus, key v: a line of per-vCPU times under its domain
    networks: bool = False  # -n, key n: a line per vif under its domain
    vbds: bool = False  # -x, key b: a line per vbd
    repeat_header: bool = False  # -r, key r: the header before each domain
    full_name: bool = False  # -f: names not cut to 10 characters
    dom0_first: bool = False  # -z
    first: int = 0  # first_domain_index
    prompt: str | None = None  # "Delay(sec)" while one is being typed
    typed: str = ""


def handle_key(view: View, key: str) -> View | None:
    """xentop's ``handle_key``: the view after ``key`` (a character, or :data:`KEY_UP` /
    :data:`KEY_DOWN`), None to quit. While a prompt is open, keys edit its value: Enter
    applies it (a delay must be a positive number; another is ignored, as xentop's
    ``set_delay`` does), Escape drops it."""
    if view.prompt is not None:
        if key in ("\r", "\n"):
            try:
                delay = float(view.typed)
            except ValueError:
                delay = 0.0
            return dataclasses.replace(view, prompt=None, typed="",
                                       delay=delay if delay > 0 else view.delay)
        if key == KEY_ESCAPE:
            return dataclasses.replace(view, prompt=None, typed="")
        if key in ("\x7f", "\x08"):
            return dataclasses.replace(view, typed=view.typed[:-1])
        if len(key) == 1 and key.isprintable() and len(view.typed) < PROMPT_MAX:
            return dataclasses.replace(view, typed=view.typed + key)
        return view
    match key.lower() if len(key) == 1 else key:
        case "q" | "\x1b":
            return None
        case "v":
            return dataclasses.replace(view, vcpus=not view.vcpus)
        case "n":
            return dataclasses.replace(view, networks=not view.networks)
        case "b":
            return dataclasses.replace(view, vbds=not view.vbds)
        case "r":
            return dataclasses.replace(view, repeat_header=not view.repeat_header)
        case "s":
            return dataclasses.replace(view, sort_field=(view.sort_field + 1) % len(FIELDS))
        case "d":
            return dataclasses.replace(view, prompt="Delay(sec)", typed="")
        case "down":
            return dataclasses.replace(view, first=view.first + 1)
        case "up":
            return dataclasses.replace(view, first=max(0, view.first - 1))
    return view


# -- lines ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Line:
    """A line of the table: ``header`` or ``domain`` (one cell per column, joined by a
    space; the terminal shows the sort column bold, the header reversed) or ``detail`` (a
    ``--vcpus``/``-n``/``-x`` line, one cell)."""

    kind: str
    cells: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.cells)


def vcpu_lines(row: Row) -> list[str]:
    """``do_vcpu``: each online vCPU's seconds, a new line before vCPU 5, 10, ... (by its
    number: an offline vCPU is skipped with its wrap)."""
    lines = ["VCPUs(sec): "]
    for i, vcpu in enumerate(row.vcpu_stats):
        if vcpu["online"]:
            if i != 0 and i % 5 == 0:
                lines.append("        ")
            lines[-1] += f" {i:2d}: {vcpu['ns'] // 10**9:10d}s"
    return lines


def network_lines(row: Row) -> list[str]:
    """``do_network``: a line per vif (RX, then TX, as Dom0's vif counts them)."""
    return [f"Net{i} RX: {n['rbytes']:8d}bytes {n['rpackets']:8d}pkts {n['rerrs']:8d}err "
            f"{n['rdrop']:8d}drop  TX: {n['tbytes']:8d}bytes {n['tpackets']:8d}pkts "
            f"{n['terrs']:8d}err {n['tdrop']:8d}drop" for i, n in enumerate(row.networks)]


def vbd_lines(row: Row) -> list[str]:
    """``do_vbd``: a line per vbd, its device number and major:minor, then its counters."""
    out = []
    for v in row.vbds:
        dev = v["dev"]
        head = f"VBD BlkBack {dev:4d} [{dev >> 8:2x}:{dev & 0xff:2x}]  OO: "
        if v.get("error"):
            out.append(f"{head}{'-':>8}   RD: {'-':>8}   WR: {'-':>8}   "
                       f"RSECT: {'-':>10}   WSECT: {'-':>10}")
        else:
            out.append(f"{head}{v['oo_reqs']:8d}   RD: {v['rd_reqs']:8d}   "
                       f"WR: {v['wr_reqs']:8d}   RSECT: {v['rd_sects']:10d}   "
                       f"WSECT: {v['wr_sects']:10d}")
    return out


def table(view: View, rows: Iterable[Row]) -> list[Line]:
    """xentop's ``top()`` below the summary: the rows sorted, from ``view.first`` on, the
    header first (and before each domain with ``repeat_header``), each domain's line and
    its ``--vcpus``, ``-n`` and ``-x`` lines."""
    shown = sort_rows(rows, view.sort_field, dom0_first=view.dom0_first)
    shown = shown[min(view.first, max(0, len(shown) - 1)):]
    ws = widths(shown, full_name=view.full_name)
    header = Line("header", tuple(f"{f.header:>{w}}" for f, w in zip(FIELDS, ws)))
    lines = [] if shown else [header]
    for i, row in enumerate(shown):
        if i == 0 or view.repeat_header:
            lines.append(header)
        lines.append(Line("domain", tuple(f.cell(row, w) for f, w in zip(FIELDS, ws))))
        if view.vcpus:
            lines += [Line("detail", (text,)) for text in vcpu_lines(row)]
        if view.networks:
            lines += [Line("detail", (text,)) for text in network_lines(row)]
        if view.vbds:
            lines += [Line("detail", (text,)) for text in vbd_lines(row)]
    return lines


def summary(nodes: Sequence[Node], rows: Iterable[Row], now: float | None = None) -> list[str]:
    """``do_summary`` for the cluster: the time and Xen's version, the domains by state,
    then each host's memory and CPUs."""
    now = _time.time() if now is None else now
    versions = ", ".join(dict.fromkeys(n["xen_version"] for n in nodes)) or "?"
    rows = list(rows)
    counts = tally(rows)
    clock = _time.strftime("%H:%M:%S", _time.localtime(now))
    states = (f"{len(rows)} domains: {counts['running']} running, {counts['blocked']} blocked, "
             f"{counts['paused']} paused, {counts['crashed']} crashed, "
             f"{counts['dying']} dying, {counts['shutdown']} shutdown")
    lines = [f"xenray top - {clock}   Xen {versions}", states]
    width = max((len(n["host"]) for n in nodes), default=0)
    for n in nodes:
        used = n["tot_mem"] - n["free_mem"]
        mhz = f" @ {n['cpu_hz'] // 1_000_000}MHz" if n["cpu_hz"] else ""
        lines.append(f"{n['host']:<{width}}  Mem: {n['tot_mem'] // 1024}k total, "
                     f"{used // 1024}k used, {n['free_mem'] // 1024}k free    "
                     f"CPUs: {n['num_cpus']}{mhz}")
    return lines


BOTTOM_ITEMS = (("D", "elay", None), ("N", "etworks", "networks"), ("B", "vBds", "vbds"),
                ("V", "CPUs", "vcpus"), ("R", "epeat header", "repeat_header"),
                ("S", "ort order", None), ("Q", "uit", None))


def bottom_line(view: View) -> list[tuple[str, str]]:
    """``do_bottom_line``: the prompt being typed, or the keys, as (text, style) pieces:
    ``key`` (the letter, reversed), ``on`` (an option that is on), ``plain``."""
    if view.prompt is not None:
        return [(f"{view.prompt}: {view.typed}", "plain")]
    out: list[tuple[str, str]] = []
    for key, rest, option in BOTTOM_ITEMS:
        on = "on" if option is not None and getattr(view, option) else "plain"
        if key == "B":  # "vBds": the key letter is the second one
            out += [("v", on), ("B", "key"), ("ds", on)]
        else:
            out += [(key, "key"), (rest, on)]
        out.append(("  ", "plain"))
    return out


# -- JSON ----------------------------------------------------------------------------------

def row_json(row: Row) -> dict[str, Any]:
    """A row as numbers: each column (``mem_k`` ..., None where xentop prints "no limit",
    "n/a" or "-"), the raw ``cpu_ns`` and byte counts, each vCPU's time (``vcpus_s`` as the
    VCPUs line shows it, None for an offline vCPU, which it skips; ``vcpus_ns`` raw), and
    each vif's and vbd's counters."""
    return {
        "name": row.name, "host": row.host, "domid": row.domid, "state": row.state,
        "cpu_s": row.cpu_ns // 10**9, "cpu_ns": row.cpu_ns, "cpu_pct": round(row.cpu_pct, 3),
        "mem_k": row.mem // 1024, "mem_pct": round(row.mem_pct, 3),
        "maxmem_k": None if row.maxmem is None else row.maxmem // 1024,
        "maxmem_pct": None if row.maxmem_pct is None else round(row.maxmem_pct, 3),
        "vcpus": row.vcpus,
        "vcpus_s": [v["ns"] // 10**9 if v["online"] else None for v in row.vcpu_stats],
        "vcpus_ns": [v["ns"] for v in row.vcpu_stats], "nets": len(row.networks),
        "nettx_k": row.nettx // 1024, "netrx_k": row.netrx // 1024,
        "nettx_bytes": row.nettx, "netrx_bytes": row.netrx,
        "vbds": len(row.vbds), "vbd_oo": row.vbd_total("oo_reqs"),
        "vbd_rd": row.vbd_total("rd_reqs"), "vbd_wr": row.vbd_total("wr_reqs"),
        "vbd_rsect": row.vbd_total("rd_sects"), "vbd_wsect": row.vbd_total("wr_sects"),
        "ssid": row.ssid, "vifs": [dict(n) for n in row.networks],
        "vbd_devices": [dict(v) for v in row.vbds],
    }


def host_json(node: Node, rows: Iterable[Row]) -> dict[str, Any]:
    """A host's summary: its memory and CPUs, and its domains by state."""
    mine = [r for r in rows if r.host == node["host"]]
    return {"host": node["host"], "time": node["time"], "xen_version": node["xen_version"],
            "cpus": node["num_cpus"], "cpu_mhz": node["cpu_hz"] // 1_000_000,
            "mem_total_k": node["tot_mem"] // 1024,
            "mem_used_k": (node["tot_mem"] - node["free_mem"]) // 1024,
            "mem_free_k": node["free_mem"] // 1024, "domains": len(mine), **tally(mine)}


def sample_json(view: View, nodes: Sequence[Node], rows: Sequence[Row],
                errors: Mapping[str, str], now: float | None = None) -> dict[str, Any]:
    """One sample as one JSON object (``--json`` prints one a line): when, each host's
    summary, the domains in the view's sort order, and what did not answer."""
    return {"time": _time.time() if now is None else now,
            "hosts": [host_json(n, rows) for n in nodes],
            "domains": [row_json(r) for r in sort_rows(rows, view.sort_field,
                                                        dom0_first=view.dom0_first)],
            "errors": dict(errors)}


def node_errors(nodes: Iterable[Node]) -> dict[str, str]:
    """The backends that did not answer, ``host/component`` -> why."""
    return {f"{n['host']}/{component}": why for n in nodes
            for component, why in n.get("errors", {}).items()}
