"""libxenstat for one host: the node ``xentop`` reads, put together by Dom0's toolstack.

Xen's ``xentop`` reads its numbers through libxenstat in Dom0 (``tools/libs/stat/xenstat.c``,
``xenstat_linux.c``): the host from ``XEN_SYSCTL_physinfo``, each domain from
``XEN_SYSCTL_getdomaininfolist`` (flags, ``cpu_time``, ``tot_pages``, ``max_pages``,
``max_vcpu_id``, ``ssidref``) and its name from xenstore, its vCPUs from
``XEN_DOMCTL_getvcpuinfo`` (``online``, ``cpu_time``), its networks from Dom0's vif
devices' counters (``/proc/net/dev``) and its vbds from blkback's sysfs ``statistics/``. Here
the toolstack agent gathers the same in one call (``xl xenstat``: the hypercalls down its
same-host pipe, the counters from its host's netback and blkback), and :func:`node` lays them
out as libxenstat's ``xenstat_node``, so ``xenray top`` costs one round trip per host.

Decisions:

* A network's counters are Dom0's vif device's, as libxenstat reads them, not the guest's:
  ``tbytes`` is what the vif *transmitted into the guest* (netback's rx path, Linux's
  ``xenvif_start_xmit``) and ``rbytes`` what it received from the guest (netback's tx path,
  ``xenvif_tx_submit`` counts ``rx_bytes``). So xentop's NETTX grows when the guest receives.
* A domain the toolstack has no name for (one being built) is left out, as libxenstat leaves
  out a domain whose xenstore name it cannot read ("being destroyed"), and so is one whose
  getvcpuinfo fails (destroyed since the list: libxenstat's "domain is in transition").
* Dom0 has no vCPU entries: its vCPUs are not scheduled here, so the hypervisor has no
  getvcpuinfo for them (-EINVAL) and no time of theirs (its ``cpu_time`` is 0). Its entries
  would be made up, and libxenstat would drop a domain whose getvcpuinfo fails, so Dom0 is
  kept with none: xentop's VCPUs line for it is empty, as for a domain with no vCPU online.
* ``clock`` (the host's monotonic seconds) is taken just before the domain list, so the CPU
  percentage over two samples of one host divides by that host's elapsed time; ``time`` is the
  wall clock, for the display.
* A backend that does not answer costs only its own columns: its component goes into
  ``errors`` and the domains show no devices of that kind.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from protocols.errno import XenError
from protocols.hypercall import Domctl, Hypercall, Sysctl, XenVersion
from protocols.page import PAGE_SIZE

UINT_MAX = 0xFFFF_FFFF  # max_pages of a domain without a limit (libxenstat: "no limit")
DOM0_NAME = "Domain-0"
BACKENDS = (("netback", "vifs"), ("blkback", "devices"))  # component, its statistics' rows
BACKEND_TIMEOUT_S = 5.0  # a backend slower than this costs its columns, not the host's row


def gather(host: str, hv: Callable[..., Any], names: Mapping[int, str],
           clock: Callable[[], float], statistics: Callable[[str], Mapping[str, Any]],
           wall: Callable[[], float] = _time.time) -> dict[str, Any]:
    """The host's :func:`node`, read now: ``hv`` is Dom0's hypercall client, ``names`` the
    toolstack's domid -> name, ``statistics(component)`` asks one of the host's backends
    (``netback``, ``blkback``) for its statistics; one that fails goes into the node's
    ``errors``."""
    t, c = wall(), clock()
    infos = hv(Hypercall.sysctl, Sysctl.getdomaininfolist, first_domain=0,
               max_domains=1 << 15)
    vcpus = collect_vcpus(hv, infos, names)
    physinfo = hv(Hypercall.sysctl, Sysctl.physinfo)
    version = version_string(hv(Hypercall.xen_version, XenVersion.version),
                             hv(Hypercall.xen_version, XenVersion.extraversion))
    rows: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for component, key in BACKENDS:
        try:
            rows[component] = statistics(component)[key]
        except Exception as e:  # noqa: BLE001 - the hypervisor's columns are still good
            errors[component] = f"host {host}'s {component} did not answer: {e}"
    return node(host=host, time=t, clock=c, version=version, physinfo=physinfo, infos=infos,
                names=names, vcpus=vcpus, vifs=rows.get("netback"), vbds=rows.get("blkback"),
                errors=errors)


def collect_vcpus(hv: Callable[..., Any], infos: Iterable[Mapping[str, Any]],
                  names: Mapping[int, str]) -> dict[int, list[dict[str, int]]]:
    """``xenstat_collect_vcpus``: domid -> each vCPU 0..max_vcpu_id of the named domains as
    ``xenstat_vcpu`` (``online``, ``ns``), from getvcpuinfo; Dom0 has none (module docstring),
    and a domain whose getvcpuinfo fails is not in it."""
    out: dict[int, list[dict[str, int]]] = {0: []}
    for info in infos:
        domid = info["domain"]
        if domid == 0 or domid not in names:
            continue
        try:
            answers = [hv(Hypercall.domctl, Domctl.getvcpuinfo, domain=domid, vcpu=vcpu)
                       for vcpu in range(info["max_vcpu_id"] + 1)]
        except XenError:
            continue
        out[domid] = [{"online": a["online"], "ns": a["cpu_time"]} for a in answers]
    return out


def version_string(version: int, extraversion: str) -> str:
    """``xenstat_node_xen_version``: "4.22-xenray" from XENVER_version and extraversion."""
    return f"{version >> 16}.{version & 0xFFFF}{extraversion}"


def network(row: Mapping[str, Any]) -> dict[str, int]:
    """One vif as ``xenstat_network``, from netback's row (whose tx is the guest's, rx the
    bridge's to the guest): Dom0's device view, transmit = to the guest."""
    return {"id": row["devid"],
            "tbytes": row.get("rx_bytes", 0), "tpackets": row.get("rx_packets", 0),
            "terrs": row.get("rx_errors", 0),
            "tdrop": row.get("rx_dropped", 0) + row.get("carrier_dropped", 0),
            "rbytes": row.get("tx_bytes", 0), "rpackets": row.get("tx_packets", 0),
            "rerrs": row.get("tx_errors", 0), "rdrop": 0}


def vbd(row: Mapping[str, Any]) -> dict[str, Any]:
    """One vbd as ``xenstat_vbd`` (type BlkBack), from blkback's row: its ring's counters,
    closed rings' included. ``oo_reqs`` is 0: requests are served as they come, so there is no
    request pool to run out of (``BlkbackStatistics``)."""
    return {"dev": row["devid"], "error": False, "oo_reqs": 0,
            "rd_reqs": row.get("rd_req", 0), "wr_reqs": row.get("wr_req", 0),
            "rd_sects": row.get("rd_sect", 0), "wr_sects": row.get("wr_sect", 0)}


def _by_domid(rows: Iterable[Mapping[str, Any]] | None, make: Any) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for row in sorted(rows or (), key=lambda r: (r["domid"], r["devid"])):
        out.setdefault(row["domid"], []).append(make(row))
    return out


def node(*, host: str, time: float, clock: float, version: str, physinfo: Mapping[str, Any],
         infos: Iterable[Mapping[str, Any]], names: Mapping[int, str],
         vcpus: Mapping[int, list[dict[str, int]]],
         vifs: Iterable[Mapping[str, Any]] | None, vbds: Iterable[Mapping[str, Any]] | None,
         errors: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``xenstat_get_node(XENSTAT_ALL)``: the host and each named domain with its vCPUs
    (memory in bytes, as libxenstat keeps it; ``max_mem`` None for no limit), with its
    networks and vbds. ``infos`` is getdomaininfolist's answer, ``names`` domid -> name (Dom0
    is "Domain-0"), ``vcpus`` :func:`collect_vcpus`' (a domain not in it is left out),
    ``vifs`` and ``vbds`` netback's and blkback's device rows (None: that backend did not
    answer)."""
    nets, disks = _by_domid(vifs, network), _by_domid(vbds, vbd)
    domains = []
    for info in infos:
        domid = info["domain"]
        name = DOM0_NAME if domid == 0 else names.get(domid)
        if name is None or domid not in vcpus:
            continue
        domains.append({
            "domid": domid, "name": name, "flags": info["flags"],
            "cpu_ns": info["cpu_time"],
            "num_vcpus": info["max_vcpu_id"] + 1,
            "online_vcpus": info["nr_online_vcpus"], "vcpus": vcpus[domid],
            "cur_mem": info["tot_pages"] * PAGE_SIZE,
            "max_mem": None if info["max_pages"] == UINT_MAX else info["max_pages"] * PAGE_SIZE,
            "ssid": info.get("ssidref", 0),
            "networks": nets.get(domid, []), "vbds": disks.get(domid, []),
        })
    return {"host": host, "time": time, "clock": clock, "xen_version": version,
            "num_cpus": physinfo["nr_cpus"], "cpu_hz": physinfo.get("cpu_khz", 0) * 1000,
            "tot_mem": physinfo["total_pages"] * PAGE_SIZE,
            "free_mem": physinfo["free_pages"] * PAGE_SIZE,
            "domains": domains, "errors": dict(errors or {})}
