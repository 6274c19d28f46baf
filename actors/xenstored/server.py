"""The serving half of xenstored: connections, the xs_wire request loop and watch delivery
(reference 11.1, 11.4, 19.7; ``tools/xenstored/core.c`` ``handle_input``,
``process_message``, ``send_reply``, ``send_error``; ``domain.c``).

The store (:mod:`protocols.xenstore.store`) is pure; this module is what C xenstored's main
loop adds around it. Each connection, a Unix-socket client (a Dom0 tool: domid 0,
privileged) or a domain's connection (its domid, unprivileged, relative paths under
``/local/domain/<domid>``), has its own stream decoder. Every complete message is parsed,
run against the store and answered with the request's req_id and tx_id, an error as
``ERROR "<errno name>"``; the watch events it caused then go to the connections owning the
watches (type WATCH_EVENT, req_id 0), after the reply (xenstored sends WATCH's ``OK`` before
the registration event).

Failure isolation, as ``handle_input`` does it: a header announcing more than
XENSTORE_PAYLOAD_MAX bytes is a protocol error that kills that connection only, and so does
anything unexpected while serving it (logged). A malformed request is answered EINVAL, an
unknown type ENOSYS, and the connection lives on.

Decisions:

* One re-entrant lock serialises the store, so :meth:`XenstoredServer.handle` may be called
  from any thread. ``send`` callbacks run under it and must not block (queue, don't wait);
  one that raises closes its own connection, never another.
* Requests are handled synchronously: a connection never has more than one request in
  flight, so the ``outstanding`` quota (20) cannot be reached and is not enforced here. The
  back-pressure it gives C xenstored is the transport's (ring full, socket buffer).
* RELEASE and a domain's death also close that domain's connections (C frees
  ``domain->conn``); :meth:`handle` then answers False for them.
* GET_QUOTA/SET_QUOTA act on the global quotas (Xen's names, e.g. ``node-size``); a domain's
  quotas are the global ones, and setting one domain's quota is ENOSYS. SET_FEATURE is
  ENOSYS too: every domain has all of :attr:`XenstoredServer.features`. CONTROL knows
  ``help`` and ``print``. All of them, like INTRODUCE, RELEASE, RESUME, SET_TARGET and
  IS_DOMAIN_INTRODUCED, are Dom0's only (``XS_FLAG_PRIV``: EACCES).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from protocols.errno import Errno, XenError
from protocols.xenstore.domain_ring import (XENSTORE_SERVER_FEATURE_DOMID_ANY,
                                            XENSTORE_SERVER_FEATURE_WATCHDEPTH)
from protocols.xenstore.perms import Conn
from protocols.xenstore.quota import Quota
from protocols.xenstore.store import Store, StoreStatistics
from protocols.xenstore.wire import (XSD_ERRORS, XsDecoder, XsMessage, XsRequest, XsType,
                                     parse_request, reply_directory_part, reply_error, reply_list,
                                     reply_ok, reply_string, reply_value, watch_event)

Send = Callable[[bytes], None]
Op = Callable[[Conn, XsRequest], XsMessage]

# What the store itself supports; the ring layer may add RECONNECTION and ERROR.
STORE_FEATURES = XENSTORE_SERVER_FEATURE_WATCHDEPTH | XENSTORE_SERVER_FEATURE_DOMID_ANY

# ``quota_adm`` names (tools/xenstored/domain.c) -> Quota fields.
QUOTA_NAMES = {"nodes": "nodes", "watches": "watches", "outstanding": "outstanding",
               "memory": "memory", "transactions": "transactions",
               "transaction-nodes": "transaction_nodes", "node-permissions": "node_permissions",
               "path-max": "path_max", "node-size": "node_size"}

CONTROL_HELP = b"help\nprint <string>\n\0"

# The Dom0 toolstack calling in-process (through the actor): never a wire connection.
TOOLSTACK = Conn(0, 0, privileged=True, socket=True)

_TYPE_NAMES = {int(t): t.name for t in XsType}  # aliases skipped: 0 is CONTROL
_WIRE_ERRORS = frozenset(XSD_ERRORS)


@dataclasses.dataclass(frozen=True, slots=True)
class ServerStatistics:
    """What :meth:`XenstoredServer.statistics` reports."""

    connections: int
    requests: dict[str, int]  # by xs_wire type name ("INVALID" for unknown numbers)
    errors: dict[str, int]  # ERROR replies by errno name
    watch_events: int  # WATCH_EVENT messages sent
    killed: int  # connections closed for a protocol error or a failure
    store: StoreStatistics


@dataclasses.dataclass(slots=True)
class _Connection:
    conn: Conn
    send: Send
    decoder: XsDecoder = dataclasses.field(default_factory=XsDecoder)
    closed: bool = False


def _answer(op: Callable[..., Any], reply: Callable[[XsRequest, Any], XsMessage]) -> Op:
    """A request served by store ``op(conn, tx_id, *args)``, answered by ``reply``."""
    return lambda conn, req: reply(req, op(conn, req.tx_id, *req.args))


def _ack(req: XsRequest, _: object) -> XsMessage:
    return reply_ok(req)


def _require_privileged(conn: Conn, what: str) -> None:
    if not conn.privileged:
        raise XenError(Errno.EACCES, f"{what} is for privileged domains")


class XenstoredServer:
    """One host's xenstored: a store and the connections that talk to it."""

    def __init__(self, store: Store | None = None, *, features: int = STORE_FEATURES,
                 log: Any = None, first_conn_id: int = 1) -> None:
        self.store = store if store is not None else Store()
        self.features = features
        self.log = log if log is not None else structlog.get_logger().bind(component="xenstored")
        self._lock = threading.RLock()
        self._conns: dict[int, _Connection] = {}
        self._conn_ids = itertools.count(first_conn_id)
        self._requests: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._events_sent = 0
        self._killed = 0
        s = self.store
        self._ops: dict[XsType, Op] = {
            XsType.READ: _answer(s.read, reply_value),
            XsType.DIRECTORY: _answer(s.directory, reply_list),
            XsType.GET_PERMS: _answer(s.get_perms, reply_list),
            XsType.DIRECTORY_PART: self._directory_part,
            XsType.TRANSACTION_START: _answer(s.transaction_start,
                                              lambda r, tx: reply_string(r, str(tx))),
            XsType.GET_DOMAIN_PATH: _answer(s.get_domain_path, reply_string),
            XsType.IS_DOMAIN_INTRODUCED: _answer(
                s.is_domain_introduced, lambda r, yes: reply_string(r, "T" if yes else "F")),
            **{t: _answer(op, _ack) for t, op in (
                (XsType.WRITE, s.write), (XsType.MKDIR, s.mkdir), (XsType.RM, s.rm),
                (XsType.SET_PERMS, s.set_perms), (XsType.WATCH, s.watch),
                (XsType.UNWATCH, s.unwatch), (XsType.TRANSACTION_END, s.transaction_end),
                (XsType.INTRODUCE, s.introduce_domain), (XsType.RESUME, s.resume),
                (XsType.SET_TARGET, s.set_target), (XsType.RESET_WATCHES, s.reset_watches))},
            XsType.RELEASE: self._release,
            XsType.GET_FEATURE: self._get_feature,
            XsType.SET_FEATURE: self._set_feature,
            XsType.GET_QUOTA: self._get_quota,
            XsType.SET_QUOTA: self._set_quota,
            XsType.CONTROL: self._control,
        }

    # --- connections ----------------------------------------------------------------------

    def open_connection(self, domid: int, privileged: bool, send: Send, *,
                        socket: bool = False) -> int:
        """A new connection; ``send`` carries its replies and watch events. ``socket``:
        a Unix-socket client (Dom0's relative paths, outside the domain's quotas)."""
        if not 0 <= domid <= 0xFFFF:
            raise ValueError(f"domid {domid}")
        with self._lock:
            conn_id = next(self._conn_ids)
            self._conns[conn_id] = _Connection(Conn(conn_id, domid, privileged, socket), send)
        self.log.debug("xenstore connection opened", conn_id=conn_id, domid=domid,
                       privileged=privileged, socket=socket)
        return conn_id

    def close_connection(self, conn_id: int) -> None:
        """Drop the connection with its watches and transactions (idempotent)."""
        with self._lock:
            c = self._conns.pop(conn_id, None)
            if c is None:
                return
            c.closed = True
            self.store.disconnect(conn_id)
        self.log.debug("xenstore connection closed", conn_id=conn_id)

    def handle(self, conn_id: int, data: bytes) -> bool:
        """Serve the bytes a connection sent. False if the connection is (now) closed:
        unknown, killed for a protocol error, or failed; the caller then drops its end."""
        with self._lock:
            c = self._conns.get(conn_id)
            if c is None:
                return False
            try:
                messages = c.decoder.feed(data)
            except XenError as err:  # E2BIG: XENSTORE_ERROR_PROTO
                self._kill(c, str(err))
                return False
            try:
                for msg in messages:
                    self._process(c, msg)
                    if c.closed:
                        return False
            except Exception:
                self.log.exception("xenstore request failed", conn_id=conn_id)
                self._kill(c, "internal error")
                return False
            return True

    # --- the Dom0 toolstack, in-process ---------------------------------------------------

    def introduce_domain(self, domid: int, gfn: int = 0, evtchn: int = 1) -> None:
        """INTRODUCE: start serving ``domid`` (fires @introduceDomain)."""
        with self._lock:
            self.store.introduce_domain(TOOLSTACK, 0, domid, gfn, evtchn)
            self._deliver()

    def domain_gone(self, domid: int) -> None:
        """``domid`` died: as RELEASE, but not an error if it was never introduced."""
        with self._lock:
            self.store.domain_gone(domid)
            self._close_domain(domid)
            self._deliver()

    def fire_release_domain(self, shutdown: Iterable[int]) -> None:
        """VIRQ_DOM_EXC arrived (``domain_cleanup``): the domains that shut down fire
        @releaseDomain once until RESUME (the dead ones go through :meth:`domain_gone`)."""
        with self._lock:
            for domid in shutdown:
                self.store.domain_shutdown(domid)
            self._deliver()

    # --- statistics and persistence -------------------------------------------------------

    def statistics(self) -> ServerStatistics:
        with self._lock:
            return ServerStatistics(len(self._conns), dict(self._requests), dict(self._errors),
                                    self._events_sent, self._killed, self.store.statistics())

    def save(self) -> dict[str, Any]:
        """The store and its quotas (msgpack-able). Connections are not saved."""
        with self._lock:
            return {"version": 1, "store": self.store.save(),
                    "quota": dataclasses.asdict(self.store.quota)}

    @classmethod
    def restore(cls, state: dict[str, Any], **kwargs: Any) -> XenstoredServer:
        """A server on the saved store, with no connection: clients reconnect, so the
        watches and transactions of the old connections are dropped."""
        saved = state["store"]
        store = Store.restore(saved, Quota(**state["quota"]))
        old = {w[0] for w in saved["watches"]} | {t[0] for t in saved["transactions"]["open"]}
        for conn_id in old:
            store.disconnect(conn_id)
        kwargs.setdefault("first_conn_id", max(old, default=0) + 1)
        return cls(store, **kwargs)

    # --- serving --------------------------------------------------------------------------

    def _process(self, c: _Connection, msg: XsMessage) -> None:
        self._requests[_TYPE_NAMES.get(msg.type, "INVALID")] += 1
        try:
            req = parse_request(msg)
            reply = self._ops[req.type](c.conn, req)
        except XenError as err:
            self._errors[err.errno.name if err.errno in _WIRE_ERRORS else "EINVAL"] += 1
            reply = reply_error(msg, err.errno)
        self._send(c, reply.pack())
        self._deliver()

    def _deliver(self) -> None:
        """Send the queued watch events to the connections owning the watches."""
        for event in self.store.drain_events():
            c = self._conns.get(event.conn_id)
            if c is None:
                continue
            try:
                data = watch_event(event.path, event.token).pack()
            except XenError:  # over XENSTORE_PAYLOAD_MAX: xenstored drops it
                continue
            if self._send(c, data):
                self._events_sent += 1

    def _send(self, c: _Connection, data: bytes) -> bool:
        if c.closed:
            return False
        try:
            c.send(data)
        except Exception as err:
            self._kill(c, f"send failed: {err!r}")
            return False
        return True

    def _kill(self, c: _Connection, reason: str) -> None:
        if not c.closed:
            self._killed += 1
            self.log.warning("xenstore connection killed", conn_id=c.conn.conn_id,
                             domid=c.conn.domid, reason=reason)
            self.close_connection(c.conn.conn_id)

    def _close_domain(self, domid: int) -> None:
        for c in [c for c in self._conns.values() if not c.conn.socket and c.conn.domid == domid]:
            self.close_connection(c.conn.conn_id)

    # --- requests the store does not model ------------------------------------------------

    def _directory_part(self, conn: Conn, req: XsRequest) -> XsMessage:
        path, offset = req.args
        generation, children = self.store.directory_part(conn, req.tx_id, path)
        return reply_directory_part(req, generation, children, offset)

    def _release(self, conn: Conn, req: XsRequest) -> XsMessage:
        (domid,) = req.args
        self.store.release_domain(conn, req.tx_id, domid)
        self._close_domain(domid)
        return reply_ok(req)

    def _get_feature(self, conn: Conn, req: XsRequest) -> XsMessage:
        (domid,) = req.args
        if domid is not None:
            _require_privileged(conn, "GET_FEATURE of another domain")
        return reply_string(req, str(self.features))

    def _set_feature(self, conn: Conn, req: XsRequest) -> XsMessage:
        _require_privileged(conn, "SET_FEATURE")
        raise XenError(Errno.ENOSYS, "per-domain features are not modelled")

    def _get_quota(self, conn: Conn, req: XsRequest) -> XsMessage:
        _require_privileged(conn, "GET_QUOTA")
        domid, name = req.args
        if name is None:
            return reply_string(req, " ".join(QUOTA_NAMES))
        if domid not in (None, 0) and all(d.domid != domid for d in self.store.domains()):
            raise XenError(Errno.ENOENT, f"domain {domid} not introduced")
        return reply_string(req, str(getattr(self.store.quota, self._quota_field(name))))

    def _set_quota(self, conn: Conn, req: XsRequest) -> XsMessage:
        _require_privileged(conn, "SET_QUOTA")
        domid, name, value = req.args
        field = self._quota_field(name)
        if domid is not None:
            raise XenError(Errno.ENOSYS, "per-domain quotas are not modelled")
        self.store.quota = dataclasses.replace(self.store.quota, **{field: value})
        return reply_ok(req)

    @staticmethod
    def _quota_field(name: str) -> str:
        if name not in QUOTA_NAMES:
            raise XenError(Errno.EINVAL, f"unknown quota {name:.40}")
        return QUOTA_NAMES[name]

    def _control(self, conn: Conn, req: XsRequest) -> XsMessage:
        _require_privileged(conn, "CONTROL")
        cmd, params = req.args
        if cmd == "help":
            return reply_value(req, CONTROL_HELP)
        if cmd == "print":
            self.log.info("xenstore control print", text=params.rstrip(b"\0").decode("latin-1"))
            return reply_ok(req)
        raise XenError(Errno.EINVAL, f"unknown control command {cmd:.40}")
