"""Nemeses: the faults a user injects into a running cluster, and their heals (Jepsen's word).

One entry point each way, so that ``xenray fault``, the Python API and a scenario's schedule
all inject the same faults: :func:`inject` carries a fault out on its targets and returns an
:class:`Injected`, which :func:`heal` undoes (a crash has nothing to heal: the part restarts,
or stays dead, as Xen's would).

A target names parts of hosts: ``role`` (one of :data:`ROLES`), ``host``, ``name`` (a
domain), and ``random`` (pick one of the matches with the run's seeded RNG, so a scenario run
twice from one seed hits the same parts). Without ``random`` a fault hits every match.

The kinds:

* ``crash``: SIGKILL. A DomU's death is a crash (its ``on_crash`` runs); a Dom0 daemon is
  restarted by Ray and recovers; the hypervisor's death is a host crash, which the cluster's
  host watch fences (:mod:`cluster.health`); ``host`` kills every process of the host's Ray
  node, the raylet included.
* ``freeze``: SIGSTOP until healed with SIGCONT; for ``host``, every xenray process of the
  host (its raylet, the node's management plane, runs on: a frozen host is a stalled one,
  not a dead one).
* ``memory``: the host's hypervisor gives ``params.mib`` of its free memory away (all of it
  by default), so creates get -ENOMEM, until healed.
* ``partition``: ``params.groups`` of hosts (``[["h1"], ["h2", "h3"]]``, or ``"h1/h2,h3"``)
  are cut apart, for the emulated network (:mod:`cluster.fault.net`) and the agents' calls
  and migration streams (:mod:`actors.transport.partition`), until healed.
* ``link``: a fault on the link between ``params.a`` and ``params.b`` (``loss``,
  ``latency``, ``jitter``, ``duplicate``, ``reorder``, ``bandwidth``, ``seed``) on top of
  its shaping, until healed (:func:`cluster.fault.net.link_fault`).
* ``disk``: a fault on a domain's vbd (``params.vdev``, "xvda" by default, and blkback's
  spec: ``eio``, ``sectors``, ``probability``, ``latency_ms``, ``enospc_after``, ``seed``)
  until healed (:mod:`cluster.fault.disk`).
* ``powercut``: a domain's disk cache turns volatile (writes not yet flushed are only
  cached); the heal is the cut itself: every unflushed write is dropped from the image, and
  the domain dies with its machine (SIGKILL: its ``on_crash`` runs).

A hostile guest is not a fault of the cluster's parts but a domain: give it ``init=hostile``
(:mod:`actors.guest.hostile`), or run a campaign with ``xenray fuzz``.
"""

from __future__ import annotations

import dataclasses
import random
import signal
from collections.abc import Callable
from typing import Any

from cluster.fault.processes import Process, kill_all, node_processes

Cluster = Any  # cluster.api.Cluster, which imports this package (no import cycle)

DAEMONS = ("xl", "xenstored", "xenconsoled", "blkback", "netback", "forkserver")
ROLES = ("domu", *DAEMONS, "hypervisor", "host")
KINDS = ("crash", "freeze", "memory", "partition", "link", "disk", "powercut")
TARGET_KEYS = {"role", "host", "name", "random"}


@dataclasses.dataclass
class Injected:
    """A fault carried out: what it hit (``targets``), what it did (``detail``), and how to
    heal it."""

    kind: str
    targets: list[str]
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    undo: Callable[[], None] | None = dataclasses.field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "targets": self.targets, **self.detail}


def check_target(target: dict[str, Any]) -> None:
    """A target's keys and role, checked before anything is done (one-line ValueError)."""
    unknown = set(target) - TARGET_KEYS
    if unknown:
        raise ValueError(f"unknown target key {sorted(unknown)[0]!r}; "
                         f"a target has {', '.join(sorted(TARGET_KEYS))}")
    role = target.get("role", "domu")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if "name" in target and role != "domu":
        raise ValueError("a target with a name is a domain (role domu)")


def candidates(cluster: Cluster, target: dict[str, Any]) -> list[str]:
    """Every part ``target`` matches, sorted: domain names for ``domu``, host names for
    ``host``, ``<host>/<component>`` otherwise."""
    check_target(target)
    role = target.get("role", "domu")
    hosts = [h for h in cluster.hosts if target.get("host") in (None, h)]
    if target.get("host") is not None and not hosts:
        raise ValueError(f"no host {target['host']!r}; hosts are {', '.join(cluster.hosts)}")
    if role == "host":
        return hosts
    if role == "domu" and "name" in target:  # the registry knows, even with its agent down
        found = cluster.find(target["name"])
        return [target["name"]] if found is not None and found[0] in hosts else []
    if role == "domu":
        return sorted(row["name"] for row in cluster.list({})
                      if row["domid"] != 0 and row["host"] in hosts)
    return [f"{h}/{role}" for h in hosts]


def choose(cluster: Cluster, target: dict[str, Any], rng: random.Random) -> list[str]:
    found = candidates(cluster, target)
    if not found:
        raise ValueError(f"no part of the cluster matches the target {target}")
    return [rng.choice(found)] if target.get("random") else found


def inject(cluster: Cluster, kind: str, target: dict[str, Any], params: dict[str, Any],
           rng: random.Random) -> Injected:
    """Carry out one fault; what it did, and how to heal it."""
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; kinds are {', '.join(KINDS)}")
    if kind in ("partition", "link"):  # between hosts: the params name them
        check_target(target)
        return {"partition": _partition, "link": _link}[kind](cluster, params)
    targets = choose(cluster, target, rng)
    return {"crash": _crash, "freeze": _freeze, "memory": _memory, "disk": _disk,
            "powercut": _powercut}[kind](cluster, targets, target.get("role", "domu"), params)


def heal(injected: Injected) -> None:
    if injected.undo is not None:
        injected.undo()


# -- processes ---------------------------------------------------------------------------

def processes_of(cluster: Cluster, part: str, role: str) -> list[Process]:
    """The OS processes of one part (a domain's name, a host, ``<host>/<component>``)."""
    if role == "domu":  # the hypervisor's view: it answers while the agent is down
        host, domid = _found(cluster, part)
        pids = [cluster._call(host, "hypervisor", "vcpu_pids").get(domid, 0)]
    elif role == "host":
        return node_processes(cluster.raylet_pid(part))
    else:
        host, _, component = part.partition("/")
        pids = [cluster._call(host, component, "process")["pid"]]
    return [p for pid in pids if (p := Process.of(pid)) is not None]


def _found(cluster: Cluster, name: str) -> tuple[str, int]:
    found = cluster.find(name)
    if found is None:
        raise ValueError(f"no domain named {name!r}")
    return found


def _crash(cluster: Cluster, targets: list[str], role: str, params: dict) -> Injected:
    killed: list[int] = []
    for part in targets:
        procs = processes_of(cluster, part, role)
        if role == "host":
            procs.append(Process.of(cluster.raylet_pid(part)))
        killed += kill_all([p for p in procs if p is not None])
    return Injected("crash", targets, {"pids": killed})


def _freeze(cluster: Cluster, targets: list[str], role: str, params: dict) -> Injected:
    procs = [p for part in targets for p in processes_of(cluster, part, role)]
    stopped = kill_all(procs, signal.SIGSTOP)

    def thaw() -> None:
        kill_all(procs, signal.SIGCONT)

    return Injected("freeze", targets, {"pids": stopped}, undo=thaw)


def _memory(cluster: Cluster, targets: list[str], role: str, params: dict) -> Injected:
    if role != "host":
        raise ValueError("memory pressure targets a host (role = \"host\")")
    mib = int(params.get("mib", 1 << 30))
    taken = {host: cluster._call(host, "hypervisor", "memory_pressure", mib)
             for host in targets}

    def undo() -> None:
        for host in targets:
            cluster._call(host, "hypervisor", "memory_pressure", 0)

    return Injected("memory", targets, {"taken_mib": taken}, undo=undo)


def _partition(cluster: Cluster, params: dict) -> Injected:
    from cluster.fault import net

    groups = params.get("groups")
    if isinstance(groups, str):  # "h1/h2,h3": groups split by "/", hosts by ","
        groups = [group.split(",") for group in groups.split("/")]
    if not groups or not all(isinstance(g, list) and g for g in groups):
        raise ValueError("a partition needs groups of hosts: [[\"h1\"], [\"h2\"]] or "
                         "\"h1/h2\"")
    plan = net.partition(cluster, groups)
    return Injected("partition", sorted(plan), {"groups": groups},  # a host dead meanwhile
                    undo=lambda: net.heal_partition(cluster, {}))  # has nothing to heal


def _link(cluster: Cluster, params: dict) -> Injected:
    from cluster.fault import net

    spec = dict(params)
    try:
        a, b = spec.pop("a"), spec.pop("b")
    except KeyError:
        raise ValueError("a link fault names its hosts: a = \"h1\", b = \"h2\"") from None
    both_ways = bool(spec.pop("both_ways", True))
    applied = net.link_fault(cluster, a, b, both_ways=both_ways, **spec)
    return Injected("link", [f"{a}-{b}"], {"spec": applied},
                    undo=lambda: net.clear_link_fault(cluster, a, b, both_ways=both_ways))


def _one_domain(targets: list[str], role: str, kind: str) -> list[str]:
    if role != "domu":
        raise ValueError(f"a {kind} fault targets a domain's disk (role domu)")
    return targets


def _disk(cluster: Cluster, targets: list[str], role: str, params: dict) -> Injected:
    from cluster.fault import disk

    spec = dict(params)
    vdev = spec.pop("vdev", "xvda")
    armed = {name: disk.set_disk_fault(cluster, name, vdev, **spec)
             for name in _one_domain(targets, role, "disk")}

    def undo() -> None:
        for name in armed:
            disk.clear_disk_fault(cluster, name, vdev)

    return Injected("disk", targets, {"vdev": vdev, "spec": params}, undo=undo)


def _powercut(cluster: Cluster, targets: list[str], role: str, params: dict) -> Injected:
    from cluster.fault import disk

    vdev = params.get("vdev", "xvda")
    for name in _one_domain(targets, role, "powercut"):
        disk.set_disk_fault(cluster, name, vdev, volatile=True)
    cut: dict[str, Any] = {}

    def undo() -> None:  # the cut: the disk loses its cache, the machine dies with it
        for name in targets:
            procs = processes_of(cluster, name, "domu")
            cut[name] = disk.power_cut(cluster, name, vdev)
            kill_all(procs)

    return Injected("powercut", targets, {"vdev": vdev, "cut": cut}, undo=undo)
