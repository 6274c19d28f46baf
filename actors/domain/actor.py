"""A DomU's shell: the only domain file that knows about Ray.

The toolstack creates it (``<host>/dom<domid>``) once the domain is built and paused; it maps
the domain's memory, reads start_info from pfn 0 and builds the kernel with the domain's
credential for hypercalls and xenstore. The hypervisor then drives it one-way (``vcpu_gate``,
``upcall``) and xenstored pushes watch events (``xs_event``); each handler hands over to the
kernel and returns at once, while the kernel's own threads (from the
:class:`~actors.runtime.Runtime` handed in: real ones here, a test's clock in tests) make the
blocking calls, hence the thread pool (``max_concurrency``). The process dying is the domain
crashing: the hypervisor watches its pid (reference 19.8, DESIGN.md "Failure semantics").
"""

from __future__ import annotations

from typing import Any

import ray

from actors import log as xlog
from actors.domain.kernel import PVKernel
from actors.memory import Mapping
from actors.runtime import THREADS, Runtime
from actors.transport.clients import HostClients, host_clients
from actors.transport import Endpoint
from actors.transport.raycall import RayEndpoint
from protocols.start_info import StartInfo


class DomainShell(Endpoint):
    """A DomU's kernel over its own clients on endpoint ``<host>/dom<domid>`` (the in-process
    test host runs this very class; :class:`DomainActor` is it as a Ray actor)."""

    def __init__(self, domid: int, clients: HostClients, memory_path: str, log: Any,
                 runtime: Runtime = THREADS) -> None:
        self.log = log
        self.memory = Mapping(memory_path)
        self.kernel = PVKernel(StartInfo.unpack(self.memory.page(0)), self.memory, clients.hv,
                               clients.xs, log, runtime)
        self.log.info("domain actor up", memory_path=memory_path)

    def on_vcpu_gate(self, paused: bool, seq: int = 0) -> None:
        self.kernel.vcpu_gate(paused, seq)

    def on_upcall(self, domid: int, ports: list[int]) -> None:
        self.kernel.upcall(domid, ports)

    def on_xs_event(self, data: bytes) -> None:
        self.kernel.xs_event(data)

    def on_statistics(self) -> dict[str, Any]:
        return self.kernel.statistics()

    def on_save(self) -> dict[str, Any]:
        return self.kernel.save()


@ray.remote(max_restarts=0, max_concurrency=8)
class DomainActor(RayEndpoint, DomainShell):
    def __init__(self, host: str, domid: int, secret: str, memory_path: str,
                 log_dir: str | None = None) -> None:
        log = xlog.setup(host=host, component=f"dom{domid}", log_dir=log_dir).bind(domid=domid)
        super().__init__(domid, host_clients(host, domid, secret, f"dom{domid}", self.deliver,
                                             log), memory_path, log)
