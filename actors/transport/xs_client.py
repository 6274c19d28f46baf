"""A xenstore client for guest kernels and Dom0 tools, over the transport.

It speaks real xs_wire (``protocols.xenstore.wire``) to the host's xenstored: each request
is one transport call returning the reply bytes; watch events arrive separately, pushed to
the owning actor, which hands them to :meth:`XsClient.on_event`. Like libxenstore it hides
req_id matching and turns ERROR replies into :class:`XenError`; like libxl it retries a
transaction on EAGAIN (:meth:`XsClient.transact`).

xenstored is restartable (``actors.xenstored.durable``): a request that finds it gone (killed,
being started again by Ray) is sent again, the same bytes, until it answers or
``reconnect_s`` passes. The new xenstored has this client's connection back, with its watches
(each fires once, as on registration: callbacks must bear a spurious call), so nothing needs
registering again; it answers a request the old one had served from its journal rather than
run it twice, and a transaction that was open answers EAGAIN at its commit, so
:meth:`XsClient.transact` runs it again.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from actors.transport import PeerGone, Transport
from actors.transport.naming import actor_name
from protocols.errno import Errno, XenError
from protocols.xenstore.wire import XsDecoder, XsType, make_request, parse_reply

WatchCallback = Callable[[str, str], None]  # (event path, token)
MAX_TRANSACTION_RETRIES = 50
RECONNECT_S = 60.0  # how long a request waits for a restarted xenstored
RECONNECT_POLL_S = 0.05


class XsClient:
    def __init__(self, transport: Transport, host: str, domid: int, secret: str,
                 endpoint: str, *, reconnect_s: float = RECONNECT_S) -> None:
        self.transport = transport
        self.xenstored = actor_name(host, "xenstored")
        self.domid, self.secret, self.endpoint = domid, secret, endpoint
        self.reconnect_s = reconnect_s
        self.reconnects = 0  # requests sent again because xenstored was gone
        self._req_ids = itertools.count(1)
        self._watches: dict[str, WatchCallback] = {}
        self._lock = threading.Lock()

    # -- one request -------------------------------------------------------------------

    def request(self, type_: XsType, *args: Any, tx_id: int = 0) -> Any:
        req_id = next(self._req_ids) & 0xFFFFFFFF
        data = self._call(make_request(type_, *args, req_id=req_id, tx_id=tx_id).pack())
        answer: Any = None
        found = False
        for reply in XsDecoder().feed(data):
            if reply.type == XsType.WATCH_EVENT:  # e.g. a watch firing on registration
                self._dispatch(reply)
            elif reply.req_id == req_id and not found:
                found, answer = True, reply
        if not found:
            raise XenError(Errno.EIO, f"no reply to xenstore request {req_id}")
        return parse_reply(answer)

    def pipeline(self, requests: list[tuple[XsType, tuple[Any, ...]]],
                 tx_id: int = 0) -> list[Any]:
        """Several requests in one round trip, as a client writes them one after another on
        its socket or ring before it reads the replies (each is its own xs_wire message,
        served in order). The replies in order; the first error is raised, after xenstored
        has served them all."""
        ids = [next(self._req_ids) & 0xFFFFFFFF for _ in requests]
        data = self._call(b"".join(make_request(type_, *args, req_id=req_id, tx_id=tx_id).pack()
                                   for (type_, args), req_id in zip(requests, ids)))
        replies: dict[int, Any] = {}
        for reply in XsDecoder().feed(data):
            if reply.type == XsType.WATCH_EVENT:
                self._dispatch(reply)
            elif reply.req_id in ids:
                replies.setdefault(reply.req_id, reply)
        missing = [req_id for req_id in ids if req_id not in replies]
        if missing:
            raise XenError(Errno.EIO, f"no reply to xenstore request {missing[0]}")
        return [parse_reply(replies[req_id]) for req_id in ids]

    def _call(self, request: bytes) -> bytes:
        """One round trip; while xenstored is gone, the same bytes again until it answers."""
        deadline = None
        while True:
            try:
                return self.transport.call(self.xenstored, "xs", self.domid, self.secret,
                                           self.endpoint, request)
            except PeerGone:
                now = time.monotonic()
                deadline = deadline or now + self.reconnect_s
                if now >= deadline:
                    raise
            with self._lock:
                self.reconnects += 1
            time.sleep(RECONNECT_POLL_S)

    def read(self, path: str, tx_id: int = 0) -> bytes:
        return self.request(XsType.READ, path, tx_id=tx_id)

    def read_str(self, path: str, default: str | None = None, tx_id: int = 0) -> str | None:
        """Read a node as text; ``default`` if it does not exist."""
        try:
            return self.read(path, tx_id).decode()
        except XenError as e:
            if e.errno == Errno.ENOENT and default is not None:
                return default
            raise

    def write(self, path: str, value: bytes | str, tx_id: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else value
        self.request(XsType.WRITE, path, data, tx_id=tx_id)

    def mkdir(self, path: str, tx_id: int = 0) -> None:
        self.request(XsType.MKDIR, path, tx_id=tx_id)

    def rm(self, path: str, tx_id: int = 0) -> None:
        self.request(XsType.RM, path, tx_id=tx_id)

    def directory(self, path: str, tx_id: int = 0) -> list[str]:
        return self.request(XsType.DIRECTORY, path, tx_id=tx_id)

    def get_perms(self, path: str, tx_id: int = 0) -> list[str]:
        return self.request(XsType.GET_PERMS, path, tx_id=tx_id)

    def set_perms(self, path: str, perms: list[str] | tuple[str, ...], tx_id: int = 0) -> None:
        self.request(XsType.SET_PERMS, path, tuple(perms), tx_id=tx_id)

    # -- watches -----------------------------------------------------------------------

    def watch(self, path: str, token: str, callback: WatchCallback) -> None:
        """Register a watch; it fires once at once, then on every change (xenstore.txt).

        The first firing may run ``callback`` before this returns, in this thread.
        """
        with self._lock:
            self._watches[token] = callback
        self.request(XsType.WATCH, path, token, None)

    def unwatch(self, path: str, token: str) -> None:
        with self._lock:
            self._watches.pop(token, None)
        self.request(XsType.UNWATCH, path, token)

    def on_event(self, data: bytes) -> None:
        """Dispatch pushed WATCH_EVENT messages to their callbacks."""
        for msg in XsDecoder().feed(data):
            if msg.type == XsType.WATCH_EVENT:
                self._dispatch(msg)

    def _dispatch(self, msg) -> None:
        path, token = parse_reply(msg)
        with self._lock:
            callback = self._watches.get(token)
        if callback is not None:
            callback(path, token)

    # -- transactions ------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[int]:
        """One attempt: yields the tx_id; commits on success (EAGAIN raises), aborts on error."""
        tx_id = self.request(XsType.TRANSACTION_START)
        try:
            yield tx_id
        except BaseException:
            self.request(XsType.TRANSACTION_END, False, tx_id=tx_id)
            raise
        self.request(XsType.TRANSACTION_END, True, tx_id=tx_id)

    def transact(self, body: Callable[[int], Any]) -> Any:
        """Run ``body(tx_id)`` in a transaction, retrying the whole of it on EAGAIN (libxl)."""
        for _ in range(MAX_TRANSACTION_RETRIES):
            try:
                with self.transaction() as tx_id:
                    result = body(tx_id)
                return result
            except XenError as e:
                if e.errno != Errno.EAGAIN:
                    raise
        raise XenError(Errno.EAGAIN, f"transaction conflicted {MAX_TRANSACTION_RETRIES} times")
