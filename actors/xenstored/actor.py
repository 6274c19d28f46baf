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

Restartable (issue 12): with a ``state`` prefix, everything it acknowledges is journalled
(:mod:`.durable`); Ray starts a killed one again with the same arguments, and the new
incarnation recovers the store, the domains' credentials, every connection with its watches,
then looks at the hypervisor's domain list once (a ``VIRQ_DOM_EXC`` may have come while it was
away). Its Unix socket is bound again (replacing the dead one's file); socket clients connect
again, transport clients retry (:class:`~actors.transport.xs_client.XsClient`). Guests' disks
and networks never needed it.
"""

from __future__ import annotations

from typing import Any

import ray

from actors import log as xlog
from actors import memory
from actors.transport import Endpoint
from actors.transport.clients import HostClients, host_clients
from actors.transport.naming import actor_name
from actors.transport.raycall import RayEndpoint
from actors.xenstored.connections import Connections
from actors.xenstored.durable import DurableXenstored
from actors.xenstored.server import XenstoredServer
from actors.xenstored.unix_socket import UnixSocketServer
from protocols.errno import Errno, XenError
from protocols.evtchn import EvtchnStat
from protocols.hypercall import DOMID_SELF, EvtchnOp, Hypercall, Sysctl, Virq


class XenstoredShell(Endpoint):
    """One host's xenstored; ``socket_path`` None: no Unix socket; ``state`` None: nothing
    kept (else the journal's path prefix), ``recover``: take the last incarnation's state."""

    def __init__(self, host: str, clients: HostClients, dom0_secret: str,
                 socket_path: str | None, log: Any, *, state: str | None = None,
                 recover: bool = False) -> None:
        self.log, self.hv, self.transport = log, clients.hv, clients.transport

        def push(endpoint: str, data: bytes) -> None:
            clients.transport.send(endpoint, "xs_event", data)

        self.durable = DurableXenstored(state, log) if state is not None else None
        recovered = (self.durable.recover(push, dom0_secret, self.transport.prefetch)
                     if self.durable is not None and recover else None)
        self.connections = recovered or (
            self.durable.boot(push, dom0_secret) if self.durable is not None
            else Connections(XenstoredServer(log=log), push, dom0_secret))
        self.server = self.connections.server
        self.dom_exc_port = self._bind_dom_exc()
        if recovered:  # what VIRQ_DOM_EXC said while nobody listened
            self.on_upcall(0, [self.dom_exc_port])
        self.unix = UnixSocketServer(self.server, socket_path).start() if socket_path else None
        self.transport.prefetch(actor_name(host, "xl"))  # its first name lookup, paid now
        self.log.info("xenstored up", socket=socket_path, recovered=recovered is not None)

    def on_xs(self, domid: int, secret: str, endpoint: str, data: bytes) -> bytes:
        return self.connections.handle(domid, secret, endpoint, data)

    def on_introduce(self, domid: int, secret: str, endpoint: str) -> None:
        self.connections.introduce(domid, secret, endpoint)
        self.transport.prefetch(endpoint)  # its watch events must not wait for the lookup

    def on_release(self, domid: int) -> None:
        self.connections.release(domid)

    def on_upcall(self, domid: int, ports: list[int], vcpu: int = 0) -> None:
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
                "watch_events": s.watch_events, "watches_visited": s.store.watches_visited,
                "durable": self.durable.statistics() if self.durable is not None else None}

    def on_save(self) -> dict:
        return self.server.save()

    def close(self) -> None:
        if self.unix is not None:
            self.unix.stop()
        if self.durable is not None:
            self.durable.close()

    def _bind_dom_exc(self) -> int:
        """Bind ``VIRQ_DOM_EXC``. An earlier incarnation's binding outlives it (the hypervisor
        routes the port by this endpoint's name, as live update keeps ``/dev/xen/evtchn``
        open): EEXIST, and that port, found with ``EVTCHNOP_status``, is ours."""
        try:
            return self.hv(Hypercall.event_channel_op, EvtchnOp.bind_virq, virq=Virq.DOM_EXC,
                           vcpu=0)["port"]
        except XenError as e:
            if e.errno != Errno.EEXIST:
                raise
        port = 1
        while True:  # EINVAL past Dom0's last port ends it
            status = self.hv(Hypercall.event_channel_op, EvtchnOp.status, dom=DOMID_SELF,
                             port=port)
            if status["status"] == EvtchnStat.virq and status["virq"] == Virq.DOM_EXC:
                return port
            port += 1


def state_prefix(run_id: str, host: str) -> str:
    """Where a host's xenstored keeps its journal: beside the host's other ``/dev/shm``
    files, which stopping the host removes (``cluster.hosts``)."""
    return str(memory.SHM_DIR / f"xenray-{run_id}-{host}-xenstored")


@ray.remote(max_restarts=-1, max_concurrency=8)
class XenstoredActor(RayEndpoint, XenstoredShell):
    """Restarted by Ray when killed (``max_restarts=-1``); a request in flight then fails
    (no ``max_task_retries``: its client retries, and a request already served is answered
    from the journal, not run twice)."""

    def __init__(self, host: str, dom0_secret: str, socket_path: str,
                 log_dir: str | None, run_id: str) -> None:
        log = xlog.setup(host=host, component="xenstored", log_dir=log_dir)
        super().__init__(host, host_clients(host, 0, dom0_secret, "xenstored", self.deliver, log),
                         dom0_secret, socket_path, log, state=state_prefix(run_id, host),
                         recover=ray.get_runtime_context().was_current_actor_reconstructed)
