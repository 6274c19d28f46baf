"""``xenray audit``: nothing of a destroyed domain may remain (issue 12's "no leaks" checker).

Destroying a domain in Xen is a chain of clean-ups by several parts: the hypervisor frees
its memory and event channels (``domain_kill``) but keeps it a zombie while another domain
still maps its grants; libxl removes its xenstore directories (``libxl__destroy_domid``);
xenconsoled and the backends see it go and unmap and unbind (``cleanup_domain``, xenbus's
Closed). A part that was killed at the wrong moment, or is buggy, leaves its share behind.

The audit asks each host's parts what they hold, compares their views and names every leak
in one line (host, kind, what):

* **domain**: a domain the hypervisor runs that no toolstack record holds; **record**: a
  toolstack record whose domain the hypervisor no longer has;
* **grant-map**: a domain still mapping grants of a destroyed one (which stays a zombie);
* **evtchn**: an event channel in use whose peer domain is gone;
* **shm-file**: a ``/dev/shm`` file of a domain the hypervisor no longer has: its memory
  (``xenray-<run>-<host>-d<domid>``) or a file beside it (``...-d<domid>.<suffix>``, the
  toolstack's ``libxl-json`` record);
* **xenstore**: ``/local/domain/<domid>``, ``/libxl/<domid>``, a backend directory
  (``/local/domain/0/backend/<kind>/<domid>``) or ``/vm/<uuid>`` of a domain that is gone;
* **console**, **device**: xenconsoled's console, or blkback's and netback's device, of a
  domain that is gone;
* **process**: a process of the host's fork server that runs no live domain (its vCPUs, as
  the hypervisor knows them).

A domain is gone unless the hypervisor lists it alive (a zombie is gone). The views are read
one after another, so a domain being built or destroyed meanwhile may look inconsistent: a
leak is reported only if a second look, :data:`SETTLE_S` later, shows it again.
:func:`find_leaks` is the comparison, pure; :func:`audit` reads the views (xenstore through
xenstored's Unix socket, as ``xenstore-ls`` reads it) and runs it.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from cluster.hosts import xenstored_socket
from protocols.errno import Errno, XenError

if TYPE_CHECKING:  # the CLI prints a Leak without loading the Cluster API or xs_wire
    from cluster.api import Cluster

SETTLE_S = 1.0
XENSTORE_DIRS = ("/local/domain", "/libxl", "/vm")
BACKENDS = "/local/domain/0/backend"
DEVICE_LISTS = {"blkback": ("vbd", "devices"), "netback": ("vif", "vifs")}  # statistics rows
_DOMAIN_FILE = re.compile(r"-d(\d+)(\.[^/]*)?$")  # <mem_prefix>-d<domid>[.<suffix>]


@dataclasses.dataclass(frozen=True, order=True)
class Leak:
    """One thing a gone domain left behind (or a domain nothing accounts for)."""

    host: str
    kind: str
    what: str

    def __str__(self) -> str:
        return f"{self.host}  {self.kind:<11} {self.what}"


@dataclasses.dataclass(frozen=True)
class HostView:
    """What one host's parts hold: the toolstack's names (name -> domid, None while built),
    the hypervisor's ``audit`` (with its domains' /dev/shm files), xenstore's directories (path ->
    children), xenconsoled's consoles and each backend's device rows."""

    names: dict[str, int | None]
    hypervisor: dict[str, Any]
    xenstore: dict[str, list[str]]
    consoles: list[dict[str, Any]]
    devices: dict[str, list[dict[str, Any]]]
    processes: dict[str, int] = dataclasses.field(default_factory=dict)  # the fork server's
    vcpu_pids: dict[int, int] = dataclasses.field(default_factory=dict)  # the hypervisor's


def find_leaks(host: str, view: HostView) -> list[Leak]:
    """Every leak ``view`` shows on ``host``, sorted."""
    doms = {d["domid"]: d for d in view.hypervisor["domains"]}
    alive = {domid for domid, d in doms.items() if d["state"] == "alive"}
    leaks: set[Leak] = set()

    def leak(kind: str, what: str) -> None:
        leaks.add(Leak(host, kind, what))

    held = {domid for domid in view.names.values() if domid is not None}
    for domid in sorted(alive - held - {0}):
        leak("domain", f"domain {domid} ({doms[domid]['pages']} pages) has no toolstack record")
    for name, domid in view.names.items():
        if domid is not None and domid not in alive:
            leak("record", f"the toolstack's record {name!r} names domain {domid}, "
                           f"which the hypervisor {_gone(doms, domid)}")
    for domid in sorted(alive):
        _grant_leaks(doms, alive, domid, leak)
        for p in doms[domid]["ports"]:
            if p["remote_dom"] is not None and p["remote_dom"] not in alive:
                bound_by = f" ({p['endpoint']})" if p["endpoint"] else ""
                leak("evtchn", f"domain {domid} port {p['port']}{bound_by} is {p['state']}, "
                               f"its peer domain {p['remote_dom']} is gone")
    for path in view.hypervisor["domain_files"]:
        m = _DOMAIN_FILE.search(path)
        if m and int(m.group(1)) not in doms:
            leak("shm-file", f"{path}: domain {m.group(1)} is gone")
    _xenstore_leaks(view.xenstore, alive, {doms[d]["uuid"] for d in alive}, leak)
    for c in view.consoles:
        if c["domid"] not in alive:
            leak("console", f"xenconsoled serves the console of domain {c['domid']} "
                            f"({c['name']!r}), which is gone")
    for component, rows in view.devices.items():
        for row in rows:
            if row["domid"] not in alive:
                leak("device", f"{component} holds {DEVICE_LISTS[component][0]} {row['devid']} "
                               f"of domain {row['domid']}, which is gone")
    running = {pid for domid, pid in view.vcpu_pids.items() if domid in alive}
    for component, pid in sorted(view.processes.items()):
        if pid not in running:
            leak("process", f"the fork server's process {component} (pid {pid}) runs no "
                            "domain")
    return sorted(leaks)


def _gone(doms: dict[int, dict], domid: int) -> str:
    return "keeps only as a zombie" if domid in doms else "does not have"


def _grant_leaks(doms: dict[int, dict], alive: set[int], mapper: int, leak: Any) -> None:
    """One line per destroyed granter whose grants ``mapper`` still maps."""
    refs: dict[int, list[int]] = defaultdict(list)
    for granter, ref, _flags in doms[mapper]["maps"]:
        if granter not in alive:
            refs[granter].append(ref)
    for granter, grefs in sorted(refs.items()):
        state = "a zombie" if granter in doms else "gone"
        leak("grant-map", f"domain {mapper} maps {len(grefs)} grant(s) of destroyed domain "
                          f"{granter}, now {state} (gref {_ranges(grefs)})")


def _xenstore_leaks(dirs: dict[str, list[str]], alive: set[int], uuids: set[str],
                    leak: Any) -> None:
    for path in (*XENSTORE_DIRS, *(p for p in dirs if p.startswith(f"{BACKENDS}/"))):
        for child in dirs.get(path, []):
            if path == "/vm":
                stale = child not in uuids
            else:
                stale = child.isdigit() and int(child) not in alive and child != "0"
            if stale:
                leak("xenstore", f"{path}/{child}")


def _ranges(numbers: list[int]) -> str:
    """``[8, 9, 10, 12]`` -> ``8-10,12``."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ",".join(out)


# -- reading the views ------------------------------------------------------------------------

def host_view(cluster: Cluster, host: str) -> HostView:
    """Ask each part of ``host`` what it holds (HostUnreachable if one does not answer)."""
    from cluster.api import HostUnreachable
    from cluster.xs_socket import XsSocket

    names = cluster._call(host, "xl", "names")
    hypervisor = cluster._call(host, "hypervisor", "audit")
    consoles = cluster._call(host, "xenconsoled", "statistics")["consoles"]
    devices = {component: cluster._call(host, component, "statistics")[key]
               for component, (_, key) in DEVICE_LISTS.items()}
    processes, vcpu_pids = {}, {}
    if cluster._call(host, "xl", "pool")["launcher"] == "fork":
        processes = cluster._call(host, "forkserver", "processes")
        vcpu_pids = {int(d): p for d, p in cluster._call(host, "hypervisor", "vcpu_pids").items()}
    path = xenstored_socket(cluster.run_dir, host)
    try:
        with XsSocket(path) as xs:
            dirs = xenstore_dirs(xs)
    except OSError as e:
        raise HostUnreachable(host, "xenstored", f"cannot be read at {path}: {e}") from None
    return HostView(names, hypervisor, dirs, consoles, devices, processes, vcpu_pids)


def xenstore_dirs(xs: Any) -> dict[str, list[str]]:
    """The children of the directories the audit compares, read with ``xs.directory``."""
    dirs = {path: _children(xs, path) for path in XENSTORE_DIRS}
    for kind in _children(xs, BACKENDS):
        dirs[f"{BACKENDS}/{kind}"] = _children(xs, f"{BACKENDS}/{kind}")
    return dirs


def _children(xs: Any, path: str) -> list[str]:
    try:
        return xs.directory(path)
    except XenError as e:
        if e.errno != Errno.ENOENT:
            raise
        return []


def snapshot(cluster: Cluster, errors: dict[str, str] | None = None) -> list[Leak]:
    """The leaks one look at every host shows (hosts that do not answer go into ``errors``
    if given; else they raise)."""
    found = cluster._each_host(lambda h: find_leaks(h, host_view(cluster, h)), errors)
    return sorted(leak for leaks in found for leak in leaks)


def audit(cluster: Cluster, *, errors: dict[str, str] | None = None,
          settle: float = SETTLE_S) -> list[Leak]:
    """Every leak on the cluster: what two looks ``settle`` seconds apart both show."""
    first = snapshot(cluster, errors)
    if not first:
        return []
    time.sleep(settle)
    again = set(snapshot(cluster, errors))
    return [leak for leak in first if leak in again]
