"""A DomU's shell, and the process that runs it: the only domain file that knows about Ray.

The process is started as no domain (forked by the host's zygote, :mod:`.zygote`, or started
as a Ray actor by the ``ray`` launcher), and the toolstack binds it to a domain once the domain is built and paused; it maps
the domain's memory and builds the kernel with the domain's credential for hypercalls and
xenstore (with ``resume=True`` for a restored or migrated domain, whose kernel resumes the
suspended guest in that memory rather than booting). The kernel reads start_info at the first
unpause, so a restore may fill the memory after the shell is up. The hypervisor then drives
it one-way (``vcpu_gate``, ``upcall``) and xenstored pushes watch events (``xs_event``); each
handler hands over to the kernel and returns at once, while the kernel's own threads (from
the :class:`~actors.runtime.Runtime` handed in: real ones here, a test's clock in tests) make
the blocking calls (so calls to it are served at once: a Ray actor's thread pool, a forked
process's thread per call, ``actors.transport.relay``). The process dying is the
domain crashing: the hypervisor watches its pid (reference 19.8, DESIGN.md "Failure
semantics").
"""

from __future__ import annotations

import os
import threading
from typing import Any

import ray

from actors import log as xlog
from actors.domain import dirtylog
from actors.domain.kernel import PVKernel
from actors.memory import Mapping
from actors.runtime import THREADS, Runtime
from actors.transport import Endpoint, Transport
from actors.transport.clients import HostClients, host_clients
from actors.transport.naming import actor_name
from actors.transport.raycall import RayEndpoint, RayTransport
from protocols.errno import Errno, XenError
from protocols.hypercall import Hypercall, XenVersion


class DomainShell(Endpoint):
    """A DomU's kernel over its own clients on endpoint ``<host>/dom<domid>`` (the in-process
    test host runs this very class; :class:`DomainActor` is it as a Ray actor)."""

    def __init__(self, domid: int, clients: HostClients, memory_path: str, log: Any,
                 runtime: Runtime = THREADS, resume: bool = False) -> None:
        self.log = log
        self.memory = Mapping(memory_path)
        dirtylog.hand_over(domid, clients.hv.cred.secret, self.memory, log)  # best-effort
        self.hv = clients.hv
        self.kernel = PVKernel(self.memory, clients.hv, clients.xs, log, runtime,
                               resume=resume)
        self.log.info("domain actor up", memory_path=memory_path, resume=resume)

    def on_connect(self) -> None:
        """The toolstack has handed this process's vCPUs to the hypervisor: make a null
        hypercall now, which opens the same-host pipe (the hypervisor now knows this process),
        so the first vCPU gate and upcall come down the pipe rather than through a Ray name
        lookup (0.1-0.4 s for a new actor)."""
        self.hv(Hypercall.xen_version, XenVersion.version)

    def on_vcpu_gate(self, paused: bool, seq: int = 0) -> None:
        self.kernel.vcpu_gate(paused, seq)

    def on_vcpu_run(self, vcpu: int, run: bool, seq: int = 0) -> None:
        self.kernel.vcpu_run(vcpu, run, seq)

    def on_upcall(self, domid: int, ports: list[int], vcpu: int = 0) -> None:
        self.kernel.upcall(domid, ports, vcpu)

    def on_xs_event(self, data: bytes) -> None:
        self.kernel.xs_event(data)

    def on_statistics(self) -> dict[str, Any]:
        """The kernel's counts, and its balloon driver's (``xen_memory0``'s, once booted)."""
        balloon = getattr(self.kernel, "balloon", None)
        return {**self.kernel.statistics(),
                "balloon": balloon.statistics() if balloon is not None else {}}


class DomainProcess(DomainShell):
    """A process started ahead of need, as no domain: it has imported the kernel before any
    create asks for it, and ``bind`` makes it domain ``domid`` in milliseconds (LightVM's
    split toolstack). ``fallback`` carries what is not a hypercall: Ray for a
    :class:`DomainActor`, the fork server's socket for a forked process
    (``actors.forkserver``)."""

    def __init__(self, host: str, component: str, log_dir: str | None,
                 fallback: Transport) -> None:
        self.host, self.component, self.log_dir = host, component, log_dir
        self.fallback = fallback
        self._binding = threading.Lock()  # held by the one bind that ever succeeds

    def on_bind(self, domid: int, secret: str, memory_path: str, resume: bool = False) -> int:
        """Become domain ``domid`` (once); the pid, which the toolstack hands over."""
        if not self._binding.acquire(blocking=False):  # atomic: calls are served at once
            raise XenError(Errno.EBUSY, f"{self.component} already runs a domain")
        log = xlog.setup(host=self.host, component=f"dom{domid}",
                         log_dir=self.log_dir).bind(domid=domid)
        DomainShell.__init__(self, domid, host_clients(self.host, domid, secret,
                                                       self.component, self.deliver, log,
                                                       self.fallback),
                             memory_path, log, resume=resume)
        return os.getpid()


@ray.remote(max_restarts=0, max_concurrency=8)
class DomainActor(RayEndpoint, DomainProcess):
    """A :class:`DomainProcess` that is a Ray worker (the ``ray`` launcher,
    ``actors.toolstack.pool``); its endpoint is its own Ray name, ``<host>/<component>``."""

    def __init__(self, host: str, component: str, log_dir: str | None = None) -> None:
        routes = RayTransport()  # the Ray routes a kernel needs, found while it waits
        DomainProcess.__init__(self, host, component, log_dir, routes)
        for peer in ("hypervisor", "xenstored"):
            routes.prefetch(actor_name(host, peer))
