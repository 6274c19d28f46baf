"""Who may talk to xenstored over the transport, and on which connection.

C xenstored serves a domain only once the toolstack has introduced it (``XS_INTRODUCE`` with
its ring and event channel); here a domain proves who it is with the credential the toolstack
introduced it with (its domid and secret), since the transport carries no ring. Each caller
(domid, endpoint) has one connection of the :class:`~actors.xenstored.server.XenstoredServer`,
a DomU always the one it was introduced with. A request's replies go back with the call that
carried it; everything else the server sends that connection later (watch events) is pushed to
its endpoint. When the hypervisor raises ``VIRQ_DOM_EXC``, :meth:`Connections.domains_changed`
fires ``@releaseDomain`` for the domains newly shut down and forgets the dead ones.

Given ``record``, each credential introduced or forgotten is recorded too (the server records
the rest), and a restarted xenstored gets its connections back: ``credentials`` from the
checkpoint, :meth:`Connections.replay` of the records since, then :meth:`Connections.reconnect`,
which serves every connection the old process had on its endpoint again.

No Ray: the shell (``actor.py``) and the in-process test host both use this class.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from actors.xenstored.server import Record, XenstoredServer
from protocols.errno import Errno, XenError
from protocols.hypercall import DomInfoFlag

Push = Callable[[str, bytes], None]  # (endpoint, xs_wire bytes): one-way to an actor


class Connections:
    """The transport side of one host's xenstored. Thread-safe."""

    def __init__(self, server: XenstoredServer, push: Push, dom0_secret: str, *,
                 record: Record | None = None, credentials: Iterable[list] = ()) -> None:
        self.server = server
        self._push = push
        self._record = record if record is not None else (lambda rec: None)
        self._creds: dict[int, tuple[str, str | None]] = {0: (dom0_secret, None)}
        self._creds.update((domid, (secret, endpoint)) for domid, secret, endpoint in credentials)
        self._conns: dict[int, dict[str, int]] = {}  # domid -> endpoint -> conn_id
        self._replies = threading.local()
        self._lock = threading.Lock()

    def handle(self, domid: int, secret: str, endpoint: str, data: bytes) -> bytes:
        """Serve ``data`` from ``domid``'s ``endpoint``; the replies, as bytes. EACCES for a
        domain that was not introduced, or the wrong secret."""
        conn_id = self._connection(domid, secret, endpoint)
        self._replies.conn_id, self._replies.buf = conn_id, []
        try:
            self.server.handle(conn_id, data)
            return b"".join(self._replies.buf)
        finally:
            self._replies.conn_id = None

    def introduce(self, domid: int, secret: str, endpoint: str) -> None:
        """``XS_INTRODUCE``: serve ``domid``, proved by ``secret``, on ``endpoint``."""
        with self._lock:
            self._creds[domid] = (secret, endpoint)
            self._record(["cred", domid, secret, endpoint])
        self.server.introduce_domain(domid)

    def release(self, domid: int) -> None:
        """``XS_RELEASE`` (or the domain died): forget its credential and connections."""
        with self._lock:
            if self._creds.pop(domid, None) is not None:
                self._record(["uncred", domid])
            gone = list(self._conns.pop(domid, {}).values())
        for conn_id in gone:
            self.server.close_connection(conn_id)
        self.server.domain_gone(domid)

    def domains_changed(self, infos: Iterable[dict]) -> None:
        """``VIRQ_DOM_EXC``: the hypervisor's domain list (getdomaininfolist) says which
        domains shut down (``@releaseDomain``, once each) and which are gone."""
        infos = list(infos)
        alive = {i["domain"] for i in infos}
        self.server.fire_release_domain(
            shutdown=[i["domain"] for i in infos if i["flags"] & DomInfoFlag.shutdown])
        with self._lock:
            dead = [d for d in self._creds if d != 0 and d not in alive]
        for domid in dead:
            self.release(domid)

    def checkpoint(self, write: Callable[[dict], None], **extra: Any) -> None:
        """``write`` everything a restart needs (the credentials, the server's
        :meth:`~XenstoredServer.durable_state` and ``extra``), nothing changing meanwhile."""
        with self._lock:
            creds = [[d, s, e] for d, (s, e) in self._creds.items() if d != 0]
            self.server.checkpoint(write, credentials=creds, **extra)

    def replay(self, record: list) -> None:
        """Apply one journal record (the server's go to :meth:`XenstoredServer.replay`)."""
        if record[0] == "cred":
            self._creds[record[1]] = (record[2], record[3])
        elif record[0] == "uncred":
            self._creds.pop(record[1], None)
        else:
            self.server.replay(record)

    def reconnect(self, prefetch: Callable[[str], None]) -> None:
        """After the replay: serve each connection of the old process again, pushing to its
        endpoint (:meth:`XenstoredServer.restarted`: its watches fire once), whose route is
        looked up now (``prefetch``: all at once, not one after another as each is pushed)."""
        def bind(conn_id: int, endpoint: str) -> Callable[[bytes], None]:
            prefetch(endpoint)
            return lambda data: self._send(conn_id, endpoint, data)

        kept = self.server.restarted(bind)
        with self._lock:
            self._conns = {}
            for domid, peer, conn_id in kept:
                self._conns.setdefault(domid, {})[peer] = conn_id

    def _connection(self, domid: int, secret: str, endpoint: str) -> int:
        """The caller's connection, made on its first request. The credential is checked
        under the lock that :meth:`release` takes, so a request racing the release of its
        domain either comes first (and ``release`` closes the connection) or is refused:
        it never leaves a connection behind for a released domain."""
        with self._lock:
            cred = self._creds.get(domid)
            if cred is None or cred[0] != secret:
                raise XenError(Errno.EACCES, f"xenstored: domain {domid} is not introduced")
            endpoint = cred[1] or endpoint  # a DomU's endpoint is the one it was introduced with
            conn_id = self._conns.get(domid, {}).get(endpoint)
            if conn_id is None:
                holder: list[int] = []
                conn_id = self.server.open_connection(
                    domid, domid == 0, lambda data: self._send(holder[0], endpoint, data),
                    peer=endpoint)
                holder.append(conn_id)
                self._conns.setdefault(domid, {})[endpoint] = conn_id
            return conn_id

    def _send(self, conn_id: int, endpoint: str, data: bytes) -> None:
        """Replies to the call in progress go back with it; anything else is pushed."""
        if getattr(self._replies, "conn_id", None) == conn_id:
            self._replies.buf.append(data)
        else:
            self._push(endpoint, data)
