"""xenstored's Ray shell: the host's store, reachable over the transport and a Unix socket.

Domains (and Dom0's own daemons) send xs_wire bytes with ``deliver("xs", domid, secret,
endpoint, data)`` and get their replies back as the call's result; watch events that fire
later are pushed to their endpoint (``xs_event``). A domain is only served once the toolstack
has introduced it with its credential, as xenstored serves only introduced rings. Real Xen
tools (``xenstore-ls``, ``pyxs``) use the Unix socket as privileged Dom0 clients.

Like C xenstored, it binds ``VIRQ_DOM_EXC``: when the hypervisor raises it, the domains that
shut down or died fire ``@releaseDomain``, which is how xl learns that a domain needs its
``on_*`` action.
"""

from __future__ import annotations

import threading

import ray

from actors import log as xlog
from actors.transport.clients import host_clients
from actors.transport.raycall import Endpoint
from actors.xenstored.server import XenstoredServer
from actors.xenstored.unix_socket import UnixSocketServer
from protocols.errno import XenError
from protocols.hypercall import DomInfoFlag, EvtchnOp, Hypercall, Sysctl, Virq


@ray.remote(max_restarts=0, max_concurrency=8)
class XenstoredActor(Endpoint):
    def __init__(self, host: str, dom0_secret: str, socket_path: str,
                 log_dir: str | None) -> None:
        self.log = xlog.setup(host=host, component="xenstored", log_dir=log_dir)
        clients = host_clients(host, 0, dom0_secret, "xenstored", self.deliver, self.log)
        self.transport, self.hv = clients.transport, clients.hv
        self.server = XenstoredServer(log=self.log)
        self.unix = UnixSocketServer(self.server, socket_path).start()
        self._creds: dict[int, tuple[str, str | None]] = {0: (dom0_secret, None)}
        self._conns: dict[tuple[int, str], int] = {}
        self._replies = threading.local()
        self._lock = threading.Lock()
        self.dom_exc_port = self.hv(Hypercall.event_channel_op, EvtchnOp.bind_virq,
                                    virq=Virq.DOM_EXC, vcpu=0)["port"]
        self.log.info("xenstored up", socket=socket_path)

    # -- connections over the transport ------------------------------------------------

    def on_xs(self, domid: int, secret: str, endpoint: str, data: bytes) -> bytes:
        cred = self._creds.get(domid)
        if cred is None or cred[0] != secret:
            raise PermissionError(f"xenstored: domain {domid} is not introduced")
        endpoint = cred[1] or endpoint  # a DomU's endpoint is the one it was introduced with
        conn_id = self._connection(domid, endpoint)
        self._replies.conn_id, self._replies.buf = conn_id, []
        try:
            self.server.handle(conn_id, data)
            return b"".join(self._replies.buf)
        finally:
            self._replies.conn_id = None

    def _connection(self, domid: int, endpoint: str) -> int:
        with self._lock:
            conn_id = self._conns.get((domid, endpoint))
            if conn_id is None:
                holder: list[int] = []
                conn_id = self.server.open_connection(
                    domid, domid == 0, lambda data: self._send(holder[0], endpoint, data))
                holder.append(conn_id)
                self._conns[(domid, endpoint)] = conn_id
            return conn_id

    def _send(self, conn_id: int, endpoint: str, data: bytes) -> None:
        """Replies to the call in progress go back with it; anything else is pushed."""
        if getattr(self._replies, "conn_id", None) == conn_id:
            self._replies.buf.append(data)
        else:
            self.transport.send(endpoint, "xs_event", data)

    # -- the toolstack's in-process side (XS_INTRODUCE / XS_RELEASE) -------------------

    def on_introduce(self, domid: int, secret: str, endpoint: str) -> None:
        self._creds[domid] = (secret, endpoint)
        self.server.introduce_domain(domid)

    def on_release(self, domid: int) -> None:
        self._creds.pop(domid, None)
        with self._lock:
            gone = [k for k in self._conns if k[0] == domid]
            for key in gone:
                self.server.close_connection(self._conns.pop(key))
        self.server.domain_gone(domid)

    # -- VIRQ_DOM_EXC -------------------------------------------------------------------

    def on_upcall(self, domid: int, ports: list[int]) -> None:
        if self.dom_exc_port not in ports:
            return
        try:
            infos = self.hv(Hypercall.sysctl, Sysctl.getdomaininfolist, first_domain=1,
                            max_domains=1 << 15)
        except XenError:
            self.log.exception("getdomaininfolist failed on VIRQ_DOM_EXC")
            return
        alive = {i["domain"] for i in infos}
        shutdown = [i["domain"] for i in infos if i["flags"] & DomInfoFlag.shutdown]
        self.server.fire_release_domain(shutdown=shutdown)
        for domid in [d for d in self._creds if d != 0 and d not in alive]:
            self.on_release(domid)  # died: forget its credential and connections too

    def on_statistics(self) -> dict:
        s = self.server.statistics()
        return {"connections": s.connections, "requests": s.requests, "errors": s.errors,
                "watch_events": s.watch_events}

    def on_save(self) -> dict:
        return self.server.save()
