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
* Durability (``actors.xenstored.durable``): given ``record``, the server hands it, before it
  answers, each request that changed something outside a transaction (and every
  TRANSACTION_START and TRANSACTION_END, the latter with the node changes of its commit), with
  its reply, and each connection opened or closed and each domain introduced, shut down or
  gone. :meth:`XenstoredServer.replay` applies such records to a server
  :meth:`XenstoredServer.recover` built from a checkpoint (:meth:`durable_state`), and
  :meth:`XenstoredServer.restarted` then rebinds the connections to their peers. A request
  whose reply the old process took with it, sent again on the same connection (same bytes),
  gets the recorded reply without being run twice (``RETRY_MEMO`` kept per connection, for
  ``RETRY_WINDOW_S`` after the restart), as live update hands the new xenstored the output
  not yet written (``docs/designs/xenstore-migration.md``, CONNECTION_DATA).
* GET_QUOTA/SET_QUOTA act on the global quotas (Xen's names, e.g. ``node-size``); a domain's
  quotas are the global ones, and setting one domain's quota is ENOSYS. SET_FEATURE is
  ENOSYS too: every domain has all of :attr:`XenstoredServer.features`. CONTROL knows
  ``help`` and ``print``. All of them, like INTRODUCE, RELEASE, RESUME, SET_TARGET and
  IS_DOMAIN_INTRODUCED, are Dom0's only (``XS_FLAG_PRIV``: EACCES).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
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
Record = Callable[[list], None]  # one journal record (msgpack-able)

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

# What a journal records of a served request: node changes made outside a transaction, and
# requests that act on the connection, the transactions or the domains whatever their tx_id.
NODE_CHANGES = frozenset({XsType.WRITE, XsType.MKDIR, XsType.RM, XsType.SET_PERMS})
GLOBAL_CHANGES = frozenset({XsType.WATCH, XsType.UNWATCH, XsType.RESET_WATCHES,
                            XsType.TRANSACTION_START, XsType.INTRODUCE, XsType.RELEASE,
                            XsType.RESUME, XsType.SET_TARGET, XsType.SET_QUOTA})
RETRY_MEMO = 16  # recorded replies a transport connection keeps for a retry after a restart
RETRY_WINDOW_S = 120.0  # how long after a restart such a retry is recognised


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
    peer: str | None = None  # the transport endpoint at the other end, if not a socket
    decoder: XsDecoder = dataclasses.field(default_factory=XsDecoder)
    closed: bool = False
    # (request, reply) of its last recorded requests; those of the old process after a restart
    memo: deque[tuple[bytes, bytes]] = dataclasses.field(
        default_factory=lambda: deque(maxlen=RETRY_MEMO))
    retries: dict[bytes, bytes] = dataclasses.field(default_factory=dict)


def _unbound(data: bytes) -> None:
    """The send of a recovered connection until :meth:`XenstoredServer.restarted`."""


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
                 log: Any = None, first_conn_id: int = 1, record: Record | None = None) -> None:
        self.store = store if store is not None else Store()
        self.features = features
        self.log = log if log is not None else structlog.get_logger().bind(component="xenstored")
        self._record_to = record
        self._lock = threading.RLock()
        self._conns: dict[int, _Connection] = {}
        self._domain_conns: dict[int, set[int]] = {}  # domid -> its ring connections' ids
        self._next_conn_id = first_conn_id
        self._quiet = 0  # >0: inside an operation or a replay, which records nothing itself
        self._replaying = False  # events are dropped: the old process sent them
        self._retries_until = 0.0
        self._commit_changes: list | None = None  # of the TRANSACTION_END being served
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
                (XsType.UNWATCH, s.unwatch),
                (XsType.INTRODUCE, s.introduce_domain), (XsType.RESUME, s.resume),
                (XsType.SET_TARGET, s.set_target), (XsType.RESET_WATCHES, s.reset_watches))},
            XsType.TRANSACTION_END: self._transaction_end,
            XsType.RELEASE: self._release,
            XsType.GET_FEATURE: self._get_feature,
            XsType.SET_FEATURE: self._set_feature,
            XsType.GET_QUOTA: self._get_quota,
            XsType.SET_QUOTA: self._set_quota,
            XsType.CONTROL: self._control,
        }

    # --- connections ----------------------------------------------------------------------

    def open_connection(self, domid: int, privileged: bool, send: Send, *,
                        socket: bool = False, peer: str | None = None) -> int:
        """A new connection; ``send`` carries its replies and watch events. ``socket``:
        a Unix-socket client (Dom0's relative paths, outside the domain's quotas). ``peer``:
        the transport endpoint it serves, which a restarted xenstored serves again."""
        if not 0 <= domid <= 0xFFFF:
            raise ValueError(f"domid {domid}")
        with self._lock:
            conn_id = self._next_conn_id
            self._next_conn_id += 1
            self._add_connection(_Connection(Conn(conn_id, domid, privileged, socket), send,
                                             peer))
            self._record(["open", conn_id, domid, privileged, socket, peer])
        self.log.debug("xenstore connection opened", conn_id=conn_id, domid=domid,
                       privileged=privileged, socket=socket)
        return conn_id

    def close_connection(self, conn_id: int) -> None:
        """Drop the connection with its watches and transactions (idempotent)."""
        with self._lock:
            c = self._conns.pop(conn_id, None)
            if c is None:
                return
            if not c.conn.socket:
                mine = self._domain_conns[c.conn.domid]
                mine.discard(conn_id)
                if not mine:
                    del self._domain_conns[c.conn.domid]
            c.closed = True
            self.store.disconnect(conn_id)
            self._record(["close", conn_id])
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
            self._record(["introduce", domid, gfn, evtchn])
            self._deliver()

    def domain_gone(self, domid: int) -> None:
        """``domid`` died: as RELEASE, but not an error if it was never introduced."""
        with self._lock:
            with self._unrecorded():
                self.store.domain_gone(domid)
                self._close_domain(domid)
            self._record(["gone", domid])
            self._deliver()

    def fire_release_domain(self, shutdown: Iterable[int]) -> None:
        """VIRQ_DOM_EXC arrived (``domain_cleanup``): the domains that shut down fire
        @releaseDomain once until RESUME (the dead ones go through :meth:`domain_gone`)."""
        shutdown = list(shutdown)
        with self._lock:
            for domid in shutdown:
                self.store.domain_shutdown(domid)
            if shutdown:
                self._record(["shutdown", shutdown])
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

    # --- durability -----------------------------------------------------------------------

    def durable_state(self) -> dict[str, Any]:
        """:meth:`save`, plus the connections with their peers and recorded replies: what
        :meth:`recover` rebuilds (a journal's checkpoint)."""
        with self._lock:
            return {**self.save(), "next_conn_id": self._next_conn_id,
                    "connections": [[c.conn.conn_id, c.conn.domid, c.conn.privileged,
                                     c.conn.socket, c.peer, [list(m) for m in c.memo]]
                                    for c in self._conns.values()]}

    def checkpoint(self, write: Callable[[dict], None], **extra: Any) -> None:
        """``write({**extra, "server": durable_state()})`` with nothing changing meanwhile."""
        with self._lock:
            write({**extra, "server": self.durable_state()})

    @classmethod
    def recover(cls, state: dict[str, Any], **kwargs: Any) -> XenstoredServer:
        """A server on a checkpoint's :meth:`durable_state`, its connections back but bound
        to nobody yet: :meth:`replay` the records logged since, then :meth:`restarted`."""
        server = cls(Store.restore(state["store"], Quota(**state["quota"])),
                     first_conn_id=state["next_conn_id"], **kwargs)
        for conn_id, domid, privileged, socket, peer, memo in state["connections"]:
            server._add_connection(_Connection(
                Conn(conn_id, domid, privileged, socket), _unbound, peer,
                memo=deque(map(tuple, memo), maxlen=RETRY_MEMO)))
        return server

    def replay(self, record: list) -> None:
        """Do again what one journal record says was done, recording and sending nothing."""
        with self._lock, self._unrecorded():
            self._replaying = True
            try:
                self._replay(*record)
            except Exception:  # a record that no longer applies: the rest may
                self.log.exception("xenstore journal record not replayed", record=record[:2])
            finally:
                self._replaying = False
                self.store.drain_events()

    def _replay(self, kind: str, *args: Any) -> None:
        if kind == "open":
            conn_id, domid, privileged, socket, peer = args
            self._add_connection(_Connection(Conn(conn_id, domid, privileged, socket),
                                             _unbound, peer))
            self._next_conn_id = max(self._next_conn_id, conn_id + 1)
        elif kind == "close":
            self.close_connection(*args)
        elif kind == "introduce":
            self.introduce_domain(*args)
        elif kind == "gone":
            self.domain_gone(*args)
        elif kind == "shutdown":
            self.fire_release_domain(*args)
        elif kind in ("req", "end"):
            conn_id, request, reply, *changes = args
            c = self._conns[conn_id]
            (msg,) = XsDecoder().feed(request)
            if kind == "end":
                self.store.replay_commit(c.conn, msg.tx_id, changes[0])
            else:
                self._ops[XsType(msg.type)](c.conn, parse_request(msg))
            if c.peer is not None:
                c.memo.append((request, reply))
        else:
            raise ValueError(f"unknown xenstore journal record {kind!r}")

    def restarted(self, bind: Callable[[int, str], Send]) -> list[tuple[int, str, int]]:
        """After :meth:`replay`: the Unix-socket clients went with the old process (their
        connections are closed); every connection to a transport peer is bound to it again
        (``bind(conn_id, peer)`` is its send) and answers a retry from its recorded replies;
        open transactions are doomed and every watch fires once (:meth:`Store.restart`).
        Returns ``(domid, peer, conn_id)`` of each connection kept."""
        with self._lock:
            for c in list(self._conns.values()):
                if c.peer is None:
                    self.close_connection(c.conn.conn_id)
                else:
                    c.send, c.retries = bind(c.conn.conn_id, c.peer), dict(c.memo)
            self._retries_until = time.monotonic() + RETRY_WINDOW_S
            self.store.restart()
            self._deliver()
            return [(c.conn.domid, c.peer, c.conn.conn_id) for c in self._conns.values()]

    def _record(self, record: list) -> None:
        if self._record_to is not None and not self._quiet:
            self._record_to(record)

    @contextlib.contextmanager
    def _unrecorded(self) -> Iterator[None]:
        """What happens inside is recorded by the record of what caused it (the request)."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def _remember(self, c: _Connection, msg: XsMessage, reply: bytes) -> None:
        """Record a served request that changed something, with its reply (which its
        connection keeps for a retry)."""
        request = msg.pack()
        if msg.type == XsType.TRANSACTION_END:
            self._record(["end", c.conn.conn_id, request, reply, self._commit_changes])
        else:
            self._record(["req", c.conn.conn_id, request, reply])
        if c.peer is not None:
            c.memo.append((request, reply))

    def _retried(self, c: _Connection, msg: XsMessage) -> bytes | None:
        """The reply the old process recorded if ``msg`` is a request it served, sent again
        because its reply was lost with that process; None otherwise."""
        if time.monotonic() > self._retries_until:
            c.retries.clear()
            return None
        return c.retries.pop(msg.pack(), None)

    # --- serving --------------------------------------------------------------------------

    def _process(self, c: _Connection, msg: XsMessage) -> None:
        self._requests[_TYPE_NAMES.get(msg.type, "INVALID")] += 1
        if c.retries and (answer := self._retried(c, msg)) is not None:
            self._send(c, answer)
            return
        req, self._commit_changes = None, None
        try:
            req = parse_request(msg)
            with self._unrecorded():
                reply = self._ops[req.type](c.conn, req)
            changed = req.type in GLOBAL_CHANGES or (req.type in NODE_CHANGES
                                                     and req.tx_id == 0)
        except XenError as err:
            self._errors[err.errno.name if err.errno in _WIRE_ERRORS else "EINVAL"] += 1
            reply = reply_error(msg, err.errno)
            changed = False
        data = reply.pack()
        if changed or (req is not None and req.type == XsType.TRANSACTION_END):
            self._remember(c, msg, data)
        self._send(c, data)
        self._deliver()

    def _deliver(self) -> None:
        """Send the queued watch events to the connections owning the watches (none while
        replaying a journal: the old process sent them)."""
        if self._replaying:
            self.store.drain_events()
            return
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

    def _add_connection(self, c: _Connection) -> None:
        self._conns[c.conn.conn_id] = c
        if not c.conn.socket:
            self._domain_conns.setdefault(c.conn.domid, set()).add(c.conn.conn_id)

    def _close_domain(self, domid: int) -> None:
        """Close ``domid``'s connections, in the order they were opened; the others are
        not looked at."""
        for conn_id in sorted(self._domain_conns.get(domid, ())):
            self.close_connection(conn_id)

    # --- requests the store does not model ------------------------------------------------

    def _directory_part(self, conn: Conn, req: XsRequest) -> XsMessage:
        path, offset = req.args
        generation, children = self.store.directory_part(conn, req.tx_id, path)
        return reply_directory_part(req, generation, children, offset)

    def _transaction_end(self, conn: Conn, req: XsRequest) -> XsMessage:
        changes: list = []
        self.store.transaction_end(conn, req.tx_id, *req.args, changes)
        self._commit_changes = changes
        return reply_ok(req)

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
        if domid not in (None, 0) and not self.store.introduced(domid):
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
