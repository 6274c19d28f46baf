"""The registered xenstore watches and which of them a change matches (reference 11.4
"Watches"; ``tools/xenstored/watch.c``, ``watch.h``).

Watches are indexed by their canonical path, so finding the watches a change at ``name``
fires costs one lookup per ancestor of ``name`` rather than a scan of every watch of every
connection (hundreds of domains each hold several). Permission to receive an event is the
store's business; this table only answers "which watches match".

Match modes are xenstored's ``enum watch_match``: a change (write, mkdir, set_perms, the root
of an RM) matches its node and the watches above it within their depth (SUBTREE); each node
removed below an RM's root matches only watches on itself (EXACT); a special event matches
plain watches on the special path (NODEPTH), and its ``<path>/<domid>`` form matches watches
with a depth of at least 1 above it or watches on that exact path (DEPTH).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import NamedTuple

from protocols.xenstore.paths import ancestors, is_child
from protocols.xenstore.perms import Conn

MATCH_EXACT, MATCH_SUBTREE, MATCH_DEPTH, MATCH_NODEPTH = range(4)


class WatchEvent(NamedTuple):
    """One XS_WATCH_EVENT (``path\\0token\\0``, req_id = tx_id = 0) for connection ``conn_id``."""

    conn_id: int
    path: str
    token: str


@dataclasses.dataclass(slots=True)
class Watch:
    """``struct watch``: one registration of a connection."""

    conn: Conn
    path: str  # canonical
    token: str
    depth: int | None  # None: no limit (C's -1)
    prefix_len: int  # characters cut from event paths of a relative watch
    seq: int = 0  # registration order, set by the table

    def event(self, name: str) -> WatchEvent:
        """The event this watch reports for a change at ``name``."""
        return WatchEvent(self.conn.conn_id, name[self.prefix_len:], self.token)


class WatchTable:
    """All watches, by path and by connection, with a count per domain (ring connections).

    Every index is a dict, so registering, finding and removing a watch, and finding a
    domain's connections, cost the same however many domains hold watches. ``visited``
    counts the watch entries :meth:`matching` looked at: what firing costs."""

    def __init__(self) -> None:
        self._by_path: dict[str, dict[tuple[int, str], Watch]] = {}  # by (conn_id, token)
        self._by_conn: dict[int, dict[tuple[str, str], Watch]] = {}  # by (path, token)
        self._domain_conns: dict[int, set[int]] = {}  # domid -> its ring connections
        self._per_domain: Counter[int] = Counter()
        self._count = 0
        self._seq = 0
        self.visited = 0

    def __len__(self) -> int:
        return self._count

    def add(self, watch: Watch) -> None:
        self._seq += 1
        watch.seq = self._seq
        cid = watch.conn.conn_id
        self._by_path.setdefault(watch.path, {})[cid, watch.token] = watch
        self._by_conn.setdefault(cid, {})[watch.path, watch.token] = watch
        self._count += 1
        if not watch.conn.socket:
            self._per_domain[watch.conn.domid] += 1
            self._domain_conns.setdefault(watch.conn.domid, set()).add(cid)

    def remove(self, watch: Watch) -> None:
        cid = watch.conn.conn_id
        for index, key, entry in ((self._by_path, watch.path, (cid, watch.token)),
                                  (self._by_conn, cid, (watch.path, watch.token))):
            del index[key][entry]
            if not index[key]:
                del index[key]
        self._count -= 1
        if not watch.conn.socket:
            self._per_domain[watch.conn.domid] -= 1
            if cid not in self._by_conn:
                conns = self._domain_conns[watch.conn.domid]
                conns.discard(cid)
                if not conns:
                    del self._domain_conns[watch.conn.domid]

    def of_conn(self, conn_id: int) -> list[Watch]:
        return list(self._by_conn.get(conn_id, {}).values())

    def find(self, conn_id: int, path: str, token: str) -> Watch | None:
        return self._by_conn.get(conn_id, {}).get((path, token))

    def count(self, domid: int) -> int:
        """Watches held by ``domid``'s ring connections (the watch quota's count)."""
        return self._per_domain[domid]

    def conns_of_domain(self, domid: int) -> set[int]:
        return set(self._domain_conns.get(domid, ()))

    def all(self) -> list[Watch]:
        return [w for ws in self._by_conn.values() for w in ws.values()]

    def matching(self, name: str, match: int) -> list[Watch]:
        """``fire_watches``' selection: the watches a change at ``name`` fires, in
        registration order. It looks only at the watches on ``name`` and on its ancestors
        (for SUBTREE and DEPTH), never at those elsewhere."""
        here = self._by_path.get(name, {})
        self.visited += len(here)
        found = [w for w in here.values() if match != MATCH_NODEPTH or w.depth is None]
        if match in (MATCH_SUBTREE, MATCH_DEPTH):
            for up in ancestors(name):
                above = self._by_path.get(up, {})
                self.visited += len(above)
                found.extend(w for w in above.values()
                             if (match == MATCH_SUBTREE or (w.depth or 0) > 0)
                             and is_child(name, up, w.depth))
        found.sort(key=lambda w: w.seq)
        return found
