"""xenstored's shell: the host's store, reachable over the transport and a Unix socket.

Domains (and Dom0's own daemons) send xs_wire bytes with ``deliver("xs", domid, secret,
endpoint, data)`` and get their replies back as the call's result; watch events that fire
later are pushed to their endpoint (``xs_event``). :class:`~.connections.Connections` decides
who is served on which connection. Real Xen tools (``xenstore-ls``, ``pyxs``) use the Unix
socket as privileged Dom0 clients.

Like C xenstored, it binds ``VIRQ_DOM_EXC``: when the hypervisor raises it, the domains that
shut down or died fire ``@releaseDomain``, which is how xl learns that a domain needs its
``on_*`` action. :class:`XenstoredShell` is a plain class, which the in-process test host runs;
:class:`XenstoredActor` is it as a Ray actor.
"""

from __future__ import annotations

from typing import Any

import ray

from actors import log as xlog
from actors.transport import Endpoint
from actors.transport.clients import HostClients, host_clients
from actors.transport.naming import actor_name
from actors.transport.raycall import RayEndpoint
from actors.xenstored.connections import Connections
from actors.xenstored.server import XenstoredServer
from actors.xenstored.unix_socket import UnixSocketServer
from protocols.errno import XenError
from protocols.hypercall import EvtchnOp, Hypercall, Sysctl, Virq


class XenstoredShell(Endpoint):
    """One host's xenstored; ``socket_path`` None: no Unix socket."""

    def __init__(self, host: str, clients: HostClients, dom0_secret: str,
                 socket_path: str | None, log: Any) -> None:
        self.log, self.hv, self.transport = log, clients.hv, clients.transport
        self.server = XenstoredServer(log=log)
        self.unix = UnixSocketServer(self.server, socket_path).start() if socket_path else None
        self.connections = Connections(
            self.server, lambda endpoint, data: clients.transport.send(endpoint, "xs_event",
                                                                        data), dom0_secret)
        self.dom_exc_port = self.hv(Hypercall.event_channel_op, EvtchnOp.bind_virq,
                                    virq=Virq.DOM_EXC, vcpu=0)["port"]
        self.transport.prefetch(actor_name(host, "xl"))  # its first name lookup, paid now
        self.log.info("xenstored up", socket=socket_path)

    def on_xs(self, domid: int, secret: str, endpoint: str, data: bytes) -> bytes:
        return self.connections.handle(domid, secret, endpoint, data)

    def on_introduce(self, domid: int, secret: str, endpoint: str) -> None:
        self.connections.introduce(domid, secret, endpoint)
        self.transport.prefetch(endpoint)  # its watch events must not wait for the lookup

    def on_release(self, domid: int) -> None:
        self.connections.release(domid)

    def on_upcall(self, domid: int, ports: list[int]) -> None:
        if self.dom_exc_port not in ports:
            return
        try:
            infos = self.hv(Hypercall.sysctl, Sysctl.getdomaininfolist, first_domain=1,
                            max_domains=1 << 15)
        except XenError:
            self.log.exception("getdomaininfolist failed on VIRQ_DOM_EXC")
            return
        self.connections.domains_changed(infos)

    def on_statistics(self) -> dict:
        s = self.server.statistics()
        return {"connections": s.connections, "requests": s.requests, "errors": s.errors,
                "watch_events": s.watch_events}

    def on_save(self) -> dict:
        return self.server.save()

    def close(self) -> None:
        if self.unix is not None:
            self.unix.stop()


@ray.remote(max_restarts=0, max_concurrency=8)
class XenstoredActor(RayEndpoint, XenstoredShell):
    def __init__(self, host: str, dom0_secret: str, socket_path: str,
                 log_dir: str | None) -> None:
        log = xlog.setup(host=host, component="xenstored", log_dir=log_dir)
        super().__init__(host, host_clients(host, 0, dom0_secret, "xenstored", self.deliver, log),
                         dom0_secret, socket_path, log)
