"""One emulated host in one process, for unit tests that need a component's real peers.

Why: blkback, xenconsoled and the PV kernel are pure given their clients (HypercallClient,
XsClient) and a transport, so their tests run them against the real hypervisor state machine
(msgpack hypercalls, /dev/shm memory files, event channels) and the real xenstored server
(xs_wire) without Ray. One host for all those tests keeps the transport's semantics, which
the components rely on, the same everywhere. As the real transports (``actors.transport.raycall``):

* ``call`` runs at once in the caller's thread. Hypercalls go through one lock, as the
  hypervisor actor serialises them, and its effects are carried out as its actor does.
  An xs request goes down the caller's own xenstored connection (one per (domid,
  endpoint)): what xenstored sends that connection during the call is the reply, anything
  else (watch events) is pushed one-way as ``xs_event``, as actors/xenstored/actor.py does.
* ``send`` of a ``hypercall`` to the hypervisor (``HypercallClient.post``, an event-channel
  kick) runs it at once and drops the reply. The same-host pipe (actors/transport/samehost.py) runs
  a posted hypercall after the caller's earlier hypercalls and before its later ones; with
  calls that finish before they return, that is now. Its upcalls still go one-way.
* Any other ``send`` (upcalls, vCPU gates, watch events) goes to one FIFO mailbox and is
  delivered, in order, to ``endpoints[dest][kind](*args)``. A message for an endpoint that
  is not registered (any more) is lost, as one to a dead actor; a kind the endpoint does
  not take is an error, as in ``Endpoint.deliver``.

The test delivers by pumping (:meth:`pump`, :meth:`until`), so it chooses when messages
arrive; with ``threaded=True`` one mailbox thread delivers them, as to an actor, for
components that block in threads of their own (a kernel's vCPUs). Its errors are collected
and fail :meth:`close`.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import msgpack

from actors import memory
from actors.hypervisor.effects import Deliver, GateVcpus, ReleaseMemory, SizeMemory
from actors.hypervisor.state import Hypervisor
from actors.toolstack import builder
from actors.transport.hypercall_client import Credential, HypercallClient
from actors.transport.xs_client import XsClient
from actors.xenstored.server import XenstoredServer
from protocols.hypercall import DOMID_ANY, Domctl, Hypercall, MemoryOp
from protocols.libxl_types import DomainConfig

HOST = "h1"
HV, XENSTORED, XL = f"{HOST}/hypervisor", f"{HOST}/xenstored", f"{HOST}/xl"

Handlers = dict[str, Callable[..., Any]]


@dataclasses.dataclass(frozen=True)
class Built:
    """What :meth:`InProcessHost.build` made."""

    domid: int
    secret: str
    memory_path: str
    console_port: int

  # kind -> handler: what an actor's on_<kind> does
_STOP = object()


def domain_endpoint(domid: int) -> str:
    """The actor name of a DomU (``h1/dom3``)."""
    return f"{HOST}/dom{domid}"


class InProcessHost:
    """The host's hypervisor and xenstored, and the transport to them (``call``/``send``/
    ``forget``); ``xl``/``xs`` are Dom0's toolstack clients, ``endpoints`` the actors."""

    def __init__(self, mem_prefix: str, *, threaded: bool = False) -> None:
        self._lock = threading.Lock()
        self._maps: dict[str, memory.Mapping] = {}
        self.hv = Hypervisor(HOST, memory_mib=64, pcpus=2, mem_prefix=mem_prefix,
                             frames=self._frames)
        self.secret0 = self.hv.boot_dom0(memory_mib=16).secret
        self.xenstored = XenstoredServer()
        self._xs_conns: dict[tuple[int, str], int] = {}
        self._calling = threading.local()  # the xs connection whose call this thread runs
        self.endpoints: dict[str, Handlers] = {}
        self.mailbox: queue.SimpleQueue = queue.SimpleQueue()
        self.errors: list[str] = []
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._run_mailbox, daemon=True)
            self._thread.start()
        self.xl, self.xs = self.clients(XL)

    def clients(self, endpoint: str, domid: int = 0,
                secret: str | None = None) -> tuple[HypercallClient, XsClient]:
        """A hypercall and a xenstore client for ``endpoint`` (Dom0's unless ``domid``)."""
        secret = self.secret0 if secret is None else secret
        return (HypercallClient(self, HV, Credential(domid, secret, endpoint)),
                XsClient(self, HOST, domid, secret, endpoint))

    # -- the transport ------------------------------------------------------------------

    def call(self, dest: str, kind: str, *args: Any, timeout: float | None = None) -> Any:
        if (dest, kind) == (HV, "hypercall"):
            with self._lock:
                reply, effects = self.hv.hypercall(*args)
                for e in effects:
                    self._carry_out(e)
            return reply
        assert (dest, kind) == (XENSTORED, "xs"), (dest, kind)
        domid, _secret, endpoint, data = args
        conn_id = self._xs_connection(domid, endpoint)
        self._calling.conn_id, self._calling.buf = conn_id, []
        try:
            assert self.xenstored.handle(conn_id, data), "xenstored closed the connection"
            return b"".join(self._calling.buf)
        finally:
            self._calling.conn_id = None

    def send(self, dest: str, kind: str, *args: Any) -> None:
        if (dest, kind) == (HV, "hypercall"):
            self.call(dest, kind, *args)  # posted: run in order, nobody reads the reply
        else:
            self.mailbox.put((dest, kind, args))

    def forget(self, dest: str) -> None:
        pass

    def _carry_out(self, effect: Any) -> None:
        """What the hypervisor's actor does with an effect (WatchVcpu and ConsoleLine: the
        vCPUs are this process's threads, and console lines are only logged)."""
        if isinstance(effect, Deliver):
            self.send(effect.endpoint, "upcall", effect.domid, list(effect.ports))
        elif isinstance(effect, GateVcpus):
            self.send(effect.endpoint, "vcpu_gate", effect.paused, effect.seq)
        elif isinstance(effect, SizeMemory):
            memory.create(effect.path, effect.nr_pages)
        elif isinstance(effect, ReleaseMemory):
            memory.remove(effect.path)

    def _frames(self, domid: int, pfn: int, count: int) -> memoryview:
        """The hypervisor's view of a domain's pages: one mapping per file, as its actor."""
        path = self.hv.memory_path(domid)
        m = self._maps.get(path)
        if m is None or pfn + count > m.nr_pages:  # first use, or the domain grew
            m = self._maps[path] = memory.Mapping(path)
        return m.pages(pfn, count)

    def _xs_connection(self, domid: int, endpoint: str) -> int:
        key = (domid, endpoint)
        with self._lock:
            if key not in self._xs_conns:
                holder: list[int] = []

                def send(data: bytes) -> None:
                    if getattr(self._calling, "conn_id", None) == holder[0]:
                        self._calling.buf.append(data)
                    else:
                        self.send(endpoint, "xs_event", data)

                holder.append(self.xenstored.open_connection(domid, domid == 0, send))
                self._xs_conns[key] = holder[0]
            return self._xs_conns[key]

    # -- delivery -------------------------------------------------------------------------

    def _deliver(self, dest: str, kind: str, args: tuple) -> None:
        handlers = self.endpoints.get(dest)
        if handlers is not None:
            handlers[kind](*args)

    def _run_mailbox(self) -> None:
        while (message := self.mailbox.get()) is not _STOP:
            try:
                self._deliver(*message)
            except Exception:
                self.errors.append(traceback.format_exc())

    def until(self, predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
        """Deliver messages (the mailbox thread does, if threaded) until ``predicate()``
        holds, and return its value; fail at the deadline."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            if self._thread is None and not self.mailbox.empty():  # the test is the consumer
                self._deliver(*self.mailbox.get())
            else:
                time.sleep(0.002)
        return value

    def pump(self) -> None:
        """Deliver messages, and those they cause, until the mailbox is empty."""
        self.until(self.mailbox.empty, "the mailbox to empty (messages keep coming?)")

    # -- the toolstack's basics -----------------------------------------------------------

    def create_domain(self, nr_pages: int) -> tuple[int, str]:
        """A paused DomU with ``nr_pages`` of memory and its vCPUs handed over; returns
        (domid, secret)."""
        res = self.xl(Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
                      handle=bytes(16), flags=0, max_vcpus=1, max_evtchn_port=1023,
                      max_grant_frames=-1, max_maptrack_frames=-1)
        domid = res["domain"]
        self.xl(Hypercall.domctl, Domctl.max_mem, domain=domid, max_memkb=nr_pages * 4)
        self.xl(Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=[],
                nr_extents=nr_pages, extent_order=0, mem_flags=0, domid=domid)
        self.set_vcpu_context(domid)
        return domid, res["secret"]

    def build(self, cfg: DomainConfig, name: str | None = None) -> Built:
        """The toolstack's build steps (``actors.toolstack.builder``), as its shell runs them:
        a paused domain with memory, boot pages and xenstore, introduced to xenstored, its
        vCPUs handed to this process."""
        name = name or cfg.name
        domid, secret, uuid = builder.create_domain(self.xl, cfg)
        memory_path = builder.populate(self.xl, domid, cfg, name)
        port = builder.write_boot_pages(self.xl, domid, memory_path, cfg)
        builder.write_xenstore(self.xs, domid, uuid, name, cfg, port)
        self.xenstored.introduce_domain(domid)
        self.set_vcpu_context(domid)
        return Built(domid, secret, memory_path, port)

    def set_vcpu_context(self, domid: int) -> None:
        """Hand the vCPUs over: they run in this process, upcalls go to the DomU's endpoint."""
        self.xl(Hypercall.domctl, Domctl.setvcpucontext, domain=domid, vcpu=0,
                ctxt=msgpack.packb({"pid": os.getpid(), "endpoint": domain_endpoint(domid)}))

    def close(self) -> None:
        """Stop the mailbox thread (after what is queued), drop the maps and memory files,
        and fail if a threaded delivery raised."""
        if self._thread is not None:
            self.mailbox.put(_STOP)
            self._thread.join(timeout=10)
        for m in self._maps.values():
            m.close()
        for domid in list(self.hv.table.domains):
            memory.remove(self.hv.memory_path(domid))
        assert not self.errors, "\n".join(self.errors)
        assert not (self._thread and self._thread.is_alive()), "a handler is stuck"
