"""Network faults on the emulated inter-host network, and the checker that holds a workload's
losses against them.

* A **partition** between groups of hosts: every host's netback drops the frames to and
  from the hosts of the other groups (``set_partition``; counted ``partitioned`` on the
  uplink), and its toolstack agent's calls to them (migration streams included) are lost,
  as if the cables between them were pulled, until :func:`heal_partition`. It cuts
  xenray's traffic only: Ray's own (its GCS heartbeats, the calls to the registry) goes
  on, so no host is declared dead for it.
* A **link fault** (loss, latency with jitter, duplication, reordering, bandwidth; netem's
  semantics, ``actors/hostnet/link.py``) goes on top of the shaping ``Cluster.set_link``
  set: the uplink keeps both and applies their composition (``link.compose``), and
  :func:`clear_link_fault` gives the shaping back.
* The **checker**: ``ping`` and ``udpstream`` (``actors/guest/net.py``) say when they lost,
  on a guest's clock; :func:`losses` reads that, :func:`losses_outside` returns the losses
  that no fault window explains, and :func:`guest_clock_offset` puts a guest's clock on the
  caller's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from actors.hostnet.link import parse_link_spec
from cluster.api import Cluster, DomainNotFound

SLACK_S = 0.25  # a frame sent this long before a fault starts may still be in flight then


# -- partitions -------------------------------------------------------------------------------

def partition_plan(hosts: Sequence[str], groups: Iterable[Iterable[str]]) -> dict[str, list[str]]:
    """Each host's blocked hosts when ``groups`` are cut apart: every host of another group.
    Hosts named in no group form one more group together. ValueError for a host that is not
    one of ``hosts`` or is named twice."""
    groups = [list(group) for group in groups]
    named: dict[str, int] = {}
    for i, group in enumerate(groups):
        for host in group:
            if host not in hosts:
                raise ValueError(f"no host {host!r}; hosts are {', '.join(hosts)}")
            if host in named:
                raise ValueError(f"host {host!r} is in two groups")
            named[host] = i
    group_of = {host: named.get(host, len(groups)) for host in hosts}
    return {host: [h for h in hosts if group_of[h] != group_of[host]] for host in hosts}


def partition(cluster: Cluster, groups: Iterable[Iterable[str]],
              errors: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Cut ``groups`` of hosts apart, both ways (:func:`partition_plan`), on every host at
    once; returns the plan. A host that does not answer goes into ``errors`` (when given;
    else it raises)."""
    plan = partition_plan(cluster.hosts, groups)
    cluster._each_host(lambda h: _cut(cluster, h, plan[h]), errors)
    return plan


def heal_partition(cluster: Cluster, errors: dict[str, str] | None = None) -> None:
    """Every host reaches every other again."""
    cluster._each_host(lambda h: _cut(cluster, h, []), errors)


def _cut(cluster: Cluster, host: str, blocked: list[str]) -> None:
    """Everything ``host`` carries to other hosts: its uplinks' frames (netback) and its
    agent's calls, migration streams included (``actors/transport/partition.py``)."""
    cluster._call(host, "netback", "set_partition", blocked)
    cluster._call(host, "xl", "set_partition", blocked)


# -- link faults ------------------------------------------------------------------------------

def _directions(cluster: Cluster, a: str, b: str, both_ways: bool) -> list[tuple[str, str]]:
    for host in (a, b):
        cluster._check_host(host)
    if a == b:
        raise ValueError(f"a link joins two different hosts, not {a!r} and itself")
    return [(a, b), (b, a)] if both_ways else [(a, b)]


def link_fault(cluster: Cluster, a: str, b: str, *, both_ways: bool = True,
               bandwidth: str | float | None = None, latency: str | float | None = None,
               jitter: str | float | None = None, loss: str | float | None = None,
               duplicate: str | float | None = None, reorder: str | float | None = None,
               seed: int | None = None) -> dict[str, Any]:
    """Put a fault on the link between hosts ``a`` and ``b`` (in place of any before), on
    top of its shaping: "20ms", "5ms", "1%", "100M" as ``xenray link`` takes them. ``seed``
    makes the fates reproducible. Returns the fault's spec."""
    spec = dataclasses.asdict(parse_link_spec(bandwidth, latency, loss, jitter=jitter,
                                              duplicate=duplicate, reorder=reorder,
                                              seed=seed))
    for src, dst in _directions(cluster, a, b, both_ways):
        cluster._call(src, "netback", "set_link_fault", dst, spec)
    return spec


def clear_link_fault(cluster: Cluster, a: str, b: str, *, both_ways: bool = True) -> None:
    """Take the fault off the link between ``a`` and ``b``: its shaping is back."""
    for src, dst in _directions(cluster, a, b, both_ways):
        cluster._call(src, "netback", "set_link_fault", dst, None)


# -- the checker ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Loss:
    """``count`` packets numbered ``first``..``last`` lost, sent between ``start`` and
    ``end`` (or, for a ping, whose answer was due by ``end``), on the sending guest's clock."""

    first: int
    last: int
    count: int
    start: float
    end: float


def losses(result: dict[str, Any], sender: dict[str, Any] | None = None) -> list[Loss]:
    """What a workload's published result says it lost: a ``ping``'s unanswered requests,
    or a ``udpstream`` receiver's gaps, with ``sender`` (the sender's result) for the
    datagrams before the first and after the last that arrived."""
    if result.get("init") == "ping":
        timeout = result["timeout"]
        return [Loss(seq, seq, 1, sent, sent + timeout) for seq, sent in result["unanswered"]]
    if result.get("init") == "udpstream" and result.get("role") == "recv":
        if sender is None:
            raise ValueError("a udpstream receiver's losses need its sender's result too")
        out = [Loss(first, last, missing, sender["t0"] if sent_from is None else sent_from,
                    sent_to) for first, last, missing, sent_from, sent_to in result["gaps"]]
        highest, sent = result["highest"], sender["packets"]
        if sent - 1 > highest:  # the tail: after the last datagram that arrived
            after = result["last_sent"] if highest >= 0 else sender["t0"]
            out.append(Loss(highest + 1, sent - 1, sent - 1 - highest, after, sender["t_end"]))
        return out
    raise ValueError(f"not a ping or udpstream receiver's result: {result.get('init')!r}")


def losses_outside(found: Iterable[Loss], windows: Iterable[tuple[float, float]], *,
                   offset: float = 0.0, slack: float = SLACK_S) -> list[Loss]:
    """The losses no fault window explains: those whose time (moved onto the windows' clock
    by ``offset``, see :func:`guest_clock_offset`) meets no window widened by ``slack``
    either side (packets in flight when a fault starts, the offset's own error)."""
    spans = [(start - slack, end + slack) for start, end in windows]
    return [loss for loss in found
            if not any(loss.start + offset <= hi and loss.end + offset >= lo
                       for lo, hi in spans)]


def guest_clock_offset(cluster: Cluster, name: str, clock: Callable[[], float] = time.monotonic,
                       tries: int = 3) -> tuple[float, float]:
    """``(offset, error)``: ``clock()`` less domain ``name``'s clock (``os.clock``), to add to
    a guest's time to get the caller's, and how far off it may be. Each try reads the
    domain's clock between two readings of ``clock`` (as NTP does); the one with the
    shortest round trip wins, and is off by at most half of it."""
    found = cluster.find(name)
    if found is None:
        raise DomainNotFound(name)
    host = found[0]
    process = cluster._call(host, "xl", "endpoint", name).partition("/")[2]
    best = None
    for _ in range(tries):
        before = clock()
        guest = cluster._call(host, process, "statistics")["clock"]
        after = clock()
        if best is None or after - before < 2 * best[1]:
            best = ((before + after) / 2 - guest, (after - before) / 2)
    return best
