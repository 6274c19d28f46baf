"""Every per-domain operation of the hypervisor and xenstored costs the same with 400 domains
as with 50 (issue 13: O(1) or O(log N), no scan over all domains; watch firing costs what
matches the path, not every watch).

Counts, not time: a time measured on a shared machine says little, and a scan over 400
entries may take less than the noise. Each operation is run once on one domain of a host that
has N domains, each built as the toolstack builds one (``builder.write_xenstore``: its
directories, a disk and a vif), introduced, with the watches a guest's xenbus and the
backends register (``control/shutdown``, the backend's state; the otherend's state), a
console port, the event channel and the granted rings of each device, mapped and bound by
Dom0. Then two things are counted:

* the instruments the code keeps: watch entries looked at while firing
  (``StoreStatistics.watches_visited``), event-channel ports and domids looked at to find a
  free one (the hypervisor's ``evtchn_ports_probed``, ``domids_probed``);
* every Python bytecode the call executes (``sys.settrace`` opcode events), through the
  clients, the transport, the shells and the pure cores: a scan hidden anywhere on the path,
  in a comprehension as in a loop, adds bytecodes per domain.

:func:`grown` flags an operation whose count at N=400 is more than :data:`GROWTH` (1.1)
times its count at N=50. An O(1) path executes the same bytecodes at both sizes (dicts and
heaps work in C; a heap's log factor would add a few bytecodes per doubling), while a scan
adds some per domain, 350 domains more: even one hidden in an operation of 300,000 bytecodes
(creating a domain) shows. ``test_the_checker_flags_a_naive_watch_matcher`` shows it failing
on a linear-scan matcher; run against the code before issue 13's fixes (at N=300, where Dom0
still had ports), it flagged the otherend watch, populate_physmap, destroydomain, creating a
domain and RELEASE.

Not measured here, being O(N) by nature: ``getdomaininfolist`` (it lists every domain), and
so what runs on ``VIRQ_DOM_EXC`` in xenstored and xl, which ask for that list, as C
xenstored's ``domain_cleanup`` and libxl do.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from actors import memory
from actors.toolstack import builder
from actors.xenstored.server import TOOLSTACK
from protocols.gnttab import GrantTable
from protocols.hypercall import (DOMID_SELF, Domctl, EvtchnOp, GnttabOp, Hypercall, MemoryOp,
                                 SchedOp, ShutdownReason)
from protocols.libxl_types import DiskSpec, DomainConfig, VifSpec
from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES, PFN_FIRST_FREE
from protocols.xenstore.paths import backend_path, domain_path, frontend_path, is_child
from protocols.xenstore.perms import Conn
from protocols.xenstore.watches import MATCH_SUBTREE, Watch, WatchTable
from protocols.xenstore.wire import XsType
from tests.inprocess import HOST, InProcessHost, domain_endpoint

SMALL, LARGE = 50, 400
GROWTH = 1.1  # allowed count(LARGE) / count(SMALL): see the module's docstring
NR_PAGES = PFN_FIRST_FREE + 4  # start_info .. grant table, then the rings
XVDA = 51712
CFG = DomainConfig(name="hot", memory=1, maxmem=1,
                   disk=(DiskSpec(vdev="xvda", devid=XVDA, target="/dev/null"),),
                   vif=(VifSpec(devid=0, mac="00:16:3e:00:00:01", bridge="xenbr0"),))
# (kind, devid, how many ring pages the frontend grants): blkif has one ring, netif two
DEVICES = (("vbd", XVDA, 1), ("vif", 0, 2))


def bytecodes(call: Callable[[], Any]) -> int:
    """The Python bytecodes ``call()`` executes, in every function it calls (this thread)."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(previous)
    return count


def grown(small: dict[str, int], large: dict[str, int]) -> dict[str, float]:
    """The operations whose count grew more than :data:`GROWTH` times from N=SMALL to
    N=LARGE, with their growth."""
    return {op: large[op] / max(small[op], 1) for op in small
            if large[op] > GROWTH * max(small[op], 1)}


class Domain:
    """One DomU as its toolstack (writing its directories through ``xs``), its kernel's
    xenbus and Dom0's backends set it up."""

    def __init__(self, host, dom0, xs) -> None:
        self.domid, secret = host.create_domain(NR_PAGES)
        port = builder.alloc_console_port(host.xl, self.domid)
        dom0.hv(Hypercall.event_channel_op, EvtchnOp.bind_interdomain,  # xenconsoled
                remote_dom=self.domid, remote_port=port)
        builder.write_xenstore(xs, self.domid, str(uuid.uuid4()), f"hot{self.domid}", CFG,
                               port)
        host.introduce(self.domid, secret)
        clients = host.clients(domain_endpoint(self.domid), self.domid, secret)
        self.hv, self.xs = clients.hv, clients.xs
        self.mapping = memory.Mapping(host.memory_path(self.domid))
        self.table = GrantTable(self.mapping.pages(GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES))
        self.xs.watch("control/shutdown", "shutdown", _ignore)  # xenwatch (manage.c)
        self.ports = {}  # devid -> (frontend port, backend port)
        self.handles = []
        ref = 8  # the first refs are the toolstack's (GNTTAB_RESERVED_XENSTORE ...)
        for kind, devid, rings in DEVICES:
            be, fe = backend_path(kind, self.domid, devid), frontend_path(kind, self.domid,
                                                                          devid)
            self.xs.watch(f"{be}/state", f"{kind}-{devid}", _ignore)  # xenbus_probe_frontend
            dom0.xs.watch(f"{fe}/state", f"be:{self.domid}:{devid}", _ignore)  # otherend
            grefs = []
            for _ in range(rings):
                self.table.grant_access(ref, 0, PFN_FIRST_FREE + ref % 4)
                grefs.append(ref)
                ref += 1
            fport = self.hv(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=DOMID_SELF,
                            remote_dom=0)["port"]

            def talk_to_backend(t: int, fe=fe, grefs=grefs, fport=fport) -> None:
                for i, gref in enumerate(grefs):
                    self.xs.write(f"{fe}/ring-ref{i}", str(gref), tx_id=t)
                self.xs.write(f"{fe}/event-channel", str(fport), tx_id=t)
                self.xs.write(f"{fe}/state", "3", tx_id=t)  # Initialised

            self.xs.transact(talk_to_backend)
            maps = dom0.hv(Hypercall.grant_table_op, GnttabOp.map_grant_ref, ops=[
                {"host_addr": 0, "flags": 2, "ref": g, "dom": self.domid} for g in grefs])
            self.handles += [m["handle"] for m in maps]
            bport = dom0.hv(Hypercall.event_channel_op, EvtchnOp.bind_interdomain,
                            remote_dom=self.domid, remote_port=fport)["local_port"]
            self.ports[devid] = (fport, bport)
            dom0.xs.write(f"{be}/state", "4")  # Connected


def _ignore(path: str, token: str) -> None:
    pass


class StoreClient:
    """The toolstack's xenstore client for ``builder.write_xenstore``, straight on the store
    as xenstored's own toolstack connection (``TOOLSTACK``): the same nodes the wire would
    lay, faster, for the domains that are only there to be many."""

    def __init__(self, server) -> None:
        self.server = server

    def write(self, path: str, value: str, tx_id: int = 0) -> None:
        self.server.store.write(TOOLSTACK, tx_id, path, value.encode())

    def set_perms(self, path: str, perms: list[str], tx_id: int = 0) -> None:
        self.server.store.set_perms(TOOLSTACK, tx_id, path, perms)

    def pipeline(self, requests: list, tx_id: int = 0) -> None:
        for type_, args in requests:
            if type_ is XsType.WRITE:
                self.server.store.write(TOOLSTACK, tx_id, args[0], args[1])
            else:
                self.server.store.set_perms(TOOLSTACK, tx_id, args[0], list(args[1]))

    def transact(self, body: Callable[[int], None]) -> None:
        """One try: nothing else runs meanwhile (the watch events it fires go out with
        xenstored's next reply)."""
        tx_id = self.server.store.transaction_start(TOOLSTACK)
        body(tx_id)
        self.server.store.transaction_end(TOOLSTACK, tx_id, True)


class World:
    """One host and its domains; :meth:`measure` counts each operation on a domain of it."""

    def __init__(self, host) -> None:
        self.host = host
        self.dom0 = host.clients(f"{HOST}/blkback")
        for kind in ("vbd", "vif"):  # blkback's and netback's
            self.dom0.xs.watch(f"backend/{kind}", kind, _ignore)
        for path in ("@introduceDomain", "@releaseDomain"):  # xenconsoled, xl
            host.xs.watch(path, "domlist", _ignore)
        self.domains: list[Domain] = []
        self.toolstack = StoreClient(host.xenstored.server)

    def grow(self, n: int) -> None:
        while len(self.domains) < n:
            self.domains.append(Domain(self.host, self.dom0, self.toolstack))
        self.host.pump()  # the watch events and upcalls, to endpoints that drop them

    def measure(self) -> dict[str, int]:
        """Bytecodes of each operation, and the instruments' counts, on a domain in the
        middle of the table and on a new one (created and destroyed again)."""
        host, dom0, xl = self.host, self.dom0, self.host.xl
        d = self.domains[len(self.domains) // 2]
        fport, bport = d.ports[XVDA]
        stats = host.hypervisor.state.statistics
        store = host.xenstored.server.store
        before = (stats(), store.statistics())
        counts: dict[str, int] = {}

        def count(name: str, call: Callable[[], Any]) -> None:
            counts[name] = bytecodes(call)

        home = domain_path(d.domid)
        count("xs read", lambda: d.xs.read("control/shutdown"))
        count("xs write (fires)", lambda: d.xs.write("data/hot", "1"))
        count("xs mkdir", lambda: d.xs.mkdir("data/dir"))
        count("xs directory", lambda: d.xs.directory("data"))
        count("xs rm", lambda: d.xs.rm("data/dir"))
        count("xs watch", lambda: d.xs.watch("data/hot", "hot", _ignore))
        count("xs unwatch", lambda: d.xs.unwatch("data/hot", "hot"))
        count("xs transaction", lambda: d.xs.transact(
            lambda t: d.xs.write(f"{home}/device/vbd/{XVDA}/state", "4", tx_id=t)))
        count("xs backend write (fires)", lambda: dom0.xs.write(
            f"{backend_path('vbd', d.domid, XVDA)}/state", "4"))
        count("xs otherend watch", lambda: dom0.xs.watch(f"{home}/device/vbd/{XVDA}/state",
                                                         "again", _ignore))
        count("xs otherend unwatch", lambda: dom0.xs.unwatch(
            f"{home}/device/vbd/{XVDA}/state", "again"))
        count("evtchn send (front)", lambda: d.hv(Hypercall.event_channel_op, EvtchnOp.send,
                                                  port=fport))
        count("evtchn send (back)", lambda: dom0.hv(Hypercall.event_channel_op, EvtchnOp.send,
                                                    port=bport))
        count("getdomaininfo", lambda: xl(Hypercall.domctl, Domctl.getdomaininfo,
                                          domain=d.domid))
        handle = []
        count("grant map", lambda: handle.extend(dom0.hv(
            Hypercall.grant_table_op, GnttabOp.map_grant_ref,
            ops=[{"host_addr": 0, "flags": 2, "ref": 8, "dom": d.domid}])))
        count("grant unmap", lambda: dom0.hv(
            Hypercall.grant_table_op, GnttabOp.unmap_grant_ref,
            ops=[{"host_addr": 0, "dev_bus_addr": 0, "handle": handle[0]["handle"]}]))
        count("pause", lambda: xl(Hypercall.domctl, Domctl.pausedomain, domain=d.domid))
        count("unpause", lambda: xl(Hypercall.domctl, Domctl.unpausedomain, domain=d.domid))
        count("decrease_reservation", lambda: xl(
            Hypercall.memory_op, MemoryOp.decrease_reservation, extent_start=[],
            nr_extents=1, extent_order=0, mem_flags=0, domid=d.domid))
        count("populate_physmap", lambda: xl(
            Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=[],
            nr_extents=1, extent_order=0, mem_flags=0, domid=d.domid))
        new: list[Domain] = []
        count("create a domain (all of it)", lambda: new.append(Domain(host, dom0, host.xs)))
        n = new[0]
        count("remote_shutdown (VIRQ_DOM_EXC)", lambda: xl(
            Hypercall.sched_op, SchedOp.remote_shutdown, domain_id=n.domid,
            reason=ShutdownReason.poweroff))
        server = host.xenstored.server
        count("@releaseDomain (shutdown)", lambda: server.fire_release_domain([n.domid]))
        count("grant unmap (backend)", lambda: dom0.hv(
            Hypercall.grant_table_op, GnttabOp.unmap_grant_ref,
            ops=[{"host_addr": 0, "dev_bus_addr": 0, "handle": h} for h in n.handles]))
        count("destroydomain", lambda: xl(Hypercall.domctl, Domctl.destroydomain,
                                          domain=n.domid))
        count("xs release (@releaseDomain)", lambda: host.release(n.domid))
        count("xs rm the domain's directories", lambda: [
            host.xs.rm(p) for p in (backend_path("vbd", n.domid), backend_path("vif", n.domid),
                                    domain_path(n.domid))])
        n.mapping.close()
        after = (stats(), store.statistics())
        counts["watch entries visited"] = after[1].watches_visited - before[1].watches_visited
        for key in ("evtchn_ports_probed", "domids_probed"):
            counts[key] = after[0][key] - before[0][key]
        host.pump()
        return counts


@pytest.fixture(scope="module")
def growth():
    """The counts at N=SMALL and N=LARGE, on one host grown from one to the other."""
    host = InProcessHost(f"/dev/shm/xenray-test-{uuid.uuid4().hex[:12]}")
    world = World(host)
    try:
        world.grow(SMALL)
        small = world.measure()
        world.grow(LARGE)
        large = world.measure()
    finally:
        for d in world.domains:
            d.mapping.close()
        host.close()
    return small, large


def test_no_per_domain_operation_grows_with_the_number_of_domains(growth):
    small, large = growth
    table = "\n".join(f"{op:36} {small[op]:8} {large[op]:8}" for op in small)
    assert not grown(small, large), f"grew from N={SMALL} to N={LARGE}:\n{table}"
    assert small["watch entries visited"] > 0 and small["create a domain (all of it)"] > 0


def test_the_checker_flags_a_naive_watch_matcher():
    """The same measurement of a matcher that looks at every watch, as a store without a
    path index would, beside xenstored's own (:meth:`WatchTable.matching`) on the same
    watches: the checker must call the first growing and the second flat."""
    def naive_matching(watches: list[Watch], name: str) -> list[Watch]:
        return [w for w in watches if is_child(name, w.path, w.depth)]

    def watches(n: int) -> WatchTable:  # two per domain, as its xenbus registers them
        table = WatchTable()
        for d in range(1, n + 1):
            for leaf in ("control/shutdown", f"device/vbd/{XVDA}/state"):
                table.add(Watch(Conn(d, d), f"{domain_path(d)}/{leaf}", leaf, None, 0))
        return table

    name = f"{domain_path(7)}/control/shutdown"
    few, many = watches(SMALL), watches(LARGE)
    small = {"naive": bytecodes(lambda: naive_matching(few.all(), name)),
             "indexed": bytecodes(lambda: few.matching(name, MATCH_SUBTREE))}
    large = {"naive": bytecodes(lambda: naive_matching(many.all(), name)),
             "indexed": bytecodes(lambda: many.matching(name, MATCH_SUBTREE))}
    assert set(grown(small, large)) == {"naive"}
    assert naive_matching(many.all(), name) == many.matching(name, MATCH_SUBTREE) != []
