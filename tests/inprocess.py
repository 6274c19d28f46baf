"""One emulated host in one process, for unit tests that need a component's real peers.

Why: every actor is a plain shell class (``HypervisorShell``, ``XenstoredShell``,
``BlkbackShell``, ...) plus a Ray decorator, and every shell talks to its peers only through a
:class:`~actors.transport.Transport`. So this host runs the *real* shells, the hypervisor's
and xenstored's always and whichever daemons and domains a test starts, and is itself their
transport, in place of Ray. Nothing of a shell is re-implemented here. As the Ray transport:

* ``call`` runs the destination's ``deliver`` at once, in the caller's thread (a destination
  that is not registered, or no longer, is :class:`~actors.transport.PeerGone`).
* ``send`` of a ``hypercall`` to the hypervisor (``HypercallClient.post``, an event-channel
  kick) runs it at once and drops the reply: the same-host pipe runs a posted hypercall after
  the caller's earlier hypercalls and before its later ones; with calls that finish before
  they return, that is now.
* Any other ``send`` (upcalls, vCPU gates, watch events) goes to one FIFO mailbox and is
  delivered, in order, to the destination. A message for an endpoint that is not registered
  (any more) is lost, as one to a dead actor.

An endpoint is a shell's ``deliver`` or, for a test's own stand-in (a frontend driven by
hand), a dict ``{kind: handler}``. The test delivers by pumping (:meth:`pump`,
:meth:`until`), so it chooses when messages arrive; with ``threaded=True`` one mailbox thread
delivers them, as to an actor, for components that block in threads of their own (a kernel's
vCPUs). Its errors are collected and fail :meth:`close`.
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
import structlog

from actors import memory
from actors.domain.actor import DomainShell
from actors.hypervisor.actor import HypervisorShell
from actors.registry.actor import RegistryShell
from actors.toolstack import builder
from actors.toolstack.actor import ToolstackShell
from actors.transport import PeerGone
from actors.transport.clients import HostClients
from actors.xenstored.actor import XenstoredShell
from protocols.hypercall import DOMID_ANY, Domctl, Hypercall, MemoryOp, ShutdownReason
from protocols.libxl_types import DomainConfig

HOST = "h1"
HV, XENSTORED, XL = f"{HOST}/hypervisor", f"{HOST}/xenstored", f"{HOST}/xl"
REGISTRY = "cluster/registry"

Handlers = dict[str, Callable[..., Any]]  # kind -> handler: a test's stand-in for a shell
_STOP = object()


def domain_endpoint(domid: int) -> str:
    """The actor name of a DomU (``h1/dom3``)."""
    return f"{HOST}/dom{domid}"


@dataclasses.dataclass(frozen=True)
class Built:
    """What :meth:`InProcessHost.build` made."""

    domid: int
    secret: str
    memory_path: str
    console_port: int


class InProcessHost:
    """The host's shells and the transport between them (``call``/``send``/``forget``);
    ``xl``/``xs`` are Dom0's toolstack clients, ``endpoints`` every registered actor."""

    def __init__(self, mem_prefix: str, *, threaded: bool = False) -> None:
        self.endpoints: dict[str, Callable[..., Any] | Handlers] = {}
        self.mailbox: queue.SimpleQueue = queue.SimpleQueue()
        self.errors: list[str] = []
        self.log = structlog.get_logger()
        self._shells: list[Any] = []
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._run_mailbox, daemon=True)
            self._thread.start()
        self.hypervisor = self.start(HV, HypervisorShell(HOST, 64, 2, mem_prefix, self,
                                                         self.log))
        self.secret0 = self.hypervisor.on_boot_dom0(16)
        self.xenstored = self.start(XENSTORED, XenstoredShell(
            HOST, self.clients(XENSTORED), self.secret0, None, self.log))
        dom0 = self.clients(XL)
        self.xl, self.xs = dom0.hv, dom0.xs

    def clients(self, endpoint: str, domid: int = 0, secret: str | None = None) -> HostClients:
        """The clients of ``endpoint`` (Dom0's unless ``domid``) over this host."""
        return HostClients.over(self, HOST, domid, self.secret0 if secret is None else secret,
                                endpoint)

    def start(self, endpoint: str, shell: Any) -> Any:
        """Register a shell (or a ``{kind: handler}`` stand-in) as ``endpoint``; returns it.
        A shell with ``close`` is closed with the host."""
        self.endpoints[endpoint] = shell.deliver if hasattr(shell, "deliver") else shell
        if hasattr(shell, "close"):
            self._shells.append(shell)
        return shell

    def memory_path(self, domid: int) -> str:
        return self.hypervisor.state.memory_path(domid)

    # -- the transport ------------------------------------------------------------------

    def call(self, dest: str, kind: str, *args: Any, timeout: float | None = None) -> Any:
        target = self.endpoints.get(dest)
        if target is None:
            raise PeerGone(dest)
        return target[kind](*args) if isinstance(target, dict) else target(kind, *args)

    def send(self, dest: str, kind: str, *args: Any) -> None:
        if (dest, kind) == (HV, "hypercall"):
            self.call(dest, kind, *args)  # posted: run in order, nobody reads the reply
        else:
            self.mailbox.put((dest, kind, args))

    def forget(self, dest: str) -> None:
        pass

    def prefetch(self, dest: str) -> None:
        pass  # every endpoint is a dict lookup away

    # -- delivery -------------------------------------------------------------------------

    def _deliver(self, dest: str, kind: str, args: tuple) -> None:
        try:
            self.call(dest, kind, *args)
        except PeerGone:
            pass  # lost, as a message to a dead actor

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
        (domid, secret). The test writes its xenstore nodes, then :meth:`introduce` s it."""
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
        self.introduce(domid, secret)
        self.set_vcpu_context(domid)
        return Built(domid, secret, memory_path, port)

    def start_toolstack(self) -> ToolstackShell:
        """The real xl (:class:`ToolstackShell`) as ``h1/xl``, with the cluster's name registry
        (over a dict) and an :class:`InProcessLauncher`; run it on a ``threaded`` host (its
        create waits for watch events)."""
        self.start(REGISTRY, RegistryShell({}))
        launcher = InProcessLauncher(self)
        self.toolstack = self.start(XL, ToolstackShell(HOST, self.clients(XL), self.log,
                                                       launcher))
        self._shells.append(launcher)  # closed first: no guest runs on after the test
        return self.toolstack

    def introduce(self, domid: int, secret: str) -> None:
        """``XS_INTRODUCE``, as the toolstack does it through xenstored's shell."""
        self.call(XENSTORED, "introduce", domid, secret, domain_endpoint(domid))

    def release(self, domid: int) -> None:
        self.call(XENSTORED, "release", domid)

    def set_vcpu_context(self, domid: int) -> None:
        """Hand the vCPUs over: they run in this process, upcalls go to the DomU's endpoint."""
        self.xl(Hypercall.domctl, Domctl.setvcpucontext, domain=domid, vcpu=0,
                ctxt=msgpack.packb({"pid": os.getpid(), "endpoint": domain_endpoint(domid)}))

    def close(self) -> None:
        """Stop the mailbox thread (after what is queued), close the shells, remove the
        memory files, and fail if a threaded delivery raised."""
        if self._thread is not None:
            self.mailbox.put(_STOP)
            self._thread.join(timeout=10)
        for shell in reversed(self._shells):
            shell.close()
        for domid in list(self.hypervisor.state.table.domains):
            memory.remove(self.memory_path(domid))
            memory.remove(builder.userdata_path(self.memory_path(domid)))  # xl's, if built
        assert not self.errors, "\n".join(self.errors)
        assert not (self._thread and self._thread.is_alive()), "a handler is stuck"


class InProcessLauncher:
    """The toolstack's launcher on this host: a domain's :class:`DomainShell` runs in this
    process, registered as its endpoint; killing it unregisters it and stops its kernel's
    threads for good, as the death of its process would."""

    def __init__(self, host: InProcessHost) -> None:
        self.host = host
        self.domains: dict[int, DomainShell] = {}
        self.secrets: dict[int, str] = {}  # every domain ever started: a test checks them

    def take(self, domid: int) -> str:
        return domain_endpoint(domid)

    def adopt(self, endpoints: dict[int, str]) -> None:
        """A restarted agent's domains run in this process already."""

    def start(self, domid: int, secret: str, memory_path: str, resume: bool = False) -> int:
        endpoint = domain_endpoint(domid)
        self.secrets[domid] = secret
        self.domains[domid] = self.host.start(endpoint, DomainShell(
            domid, self.host.clients(endpoint, domid, secret), memory_path,
            self.host.log.bind(domid=domid), resume=resume))
        return os.getpid()

    def kill(self, domid: int) -> None:
        self.host.endpoints.pop(domain_endpoint(domid), None)
        shell = self.domains.pop(domid, None)
        if shell is not None:
            shell.kernel.gate.shut_down(ShutdownReason.crash)

    def close(self) -> None:
        for domid in list(self.domains):
            self.kill(domid)
