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
    """All watches, by path and by connection, with a count per domain (ring connections)."""

    def __init__(self) -> None:
        self._by_path: dict[str, list[Watch]] = {}
        self._by_conn: dict[int, list[Watch]] = {}
        self._per_domain: Counter[int] = Counter()
        self._seq = 0

    def __len__(self) -> int:
        return sum(map(len, self._by_conn.values()))

    def add(self, watch: Watch) -> None:
        self._seq += 1
        watch.seq = self._seq
        self._by_path.setdefault(watch.path, []).append(watch)
        self._by_conn.setdefault(watch.conn.conn_id, []).append(watch)
        if not watch.conn.socket:
            self._per_domain[watch.conn.domid] += 1

    def remove(self, watch: Watch) -> None:
        for index, key in ((self._by_path, watch.path), (self._by_conn, watch.conn.conn_id)):
            index[key].remove(watch)
            if not index[key]:
                del index[key]
        if not watch.conn.socket:
            self._per_domain[watch.conn.domid] -= 1

    def of_conn(self, conn_id: int) -> list[Watch]:
        return list(self._by_conn.get(conn_id, ()))

    def find(self, conn_id: int, path: str, token: str) -> Watch | None:
        return next((w for w in self._by_conn.get(conn_id, ())
                     if w.path == path and w.token == token), None)

    def count(self, domid: int) -> int:
        """Watches held by ``domid``'s ring connections (the watch quota's count)."""
        return self._per_domain[domid]

    def conns_of_domain(self, domid: int) -> set[int]:
        return {cid for cid, ws in self._by_conn.items()
                if not ws[0].conn.socket and ws[0].conn.domid == domid}

    def all(self) -> list[Watch]:
        return [w for ws in self._by_conn.values() for w in ws]

    def matching(self, name: str, match: int) -> list[Watch]:
        """``fire_watches``' selection: the watches a change at ``name`` fires, in
        registration order."""
        found = [w for w in self._by_path.get(name, ())
                 if match != MATCH_NODEPTH or w.depth is None]
        if match in (MATCH_SUBTREE, MATCH_DEPTH):
            for up in ancestors(name):
                found.extend(w for w in self._by_path.get(up, ())
                             if (match == MATCH_SUBTREE or (w.depth or 0) > 0)
                             and is_child(name, up, w.depth))
        found.sort(key=lambda w: w.seq)
        return found
