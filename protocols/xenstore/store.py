"""The xenstore database: nodes, permissions, transactions, watches and domains (reference
11.1 "Operation semantics", 11.3, 11.4, 19.7; ``tools/xenstored/{core,domain}.c``).

This is the pure heart of one host's xenstored. The actor turns each request (from a domain's
ring or a Unix-socket client) into one call ``op(conn, tx_id, *args)``, which returns the
reply value, or raises :class:`XenError` and leaves the tree as it was. Watch events are data:
calls queue :class:`WatchEvent` s, which the actor takes with :meth:`Store.drain_events` and
sends *after* the reply (xenstored sends WATCH's ``OK`` before the registration event).

Decisions (the reference has the rest):

* **Initial tree**, as ``setup_structure`` (``tools/xenstored/core.c``): ``/``, ``/tool``,
  ``/tool/xenstored`` and ``@introduceDomain`` are ``[n0]``, so a DomU may not read ``/`` or
  learn whether ``/foo`` exists (EACCES); ``@releaseDomain`` is ``[n0, r<DOMID_ANY>]``, so every
  domain may watch it (Xen 4.22, commit 258263a4fb). libxl, not xenstored, creates ``/local``,
  ``/vm`` and ``/libxl``.
* **Transactions** (:mod:`protocols.xenstore.transaction`) touch what C's do: every node read
  (missing ones too), the ancestors consulted to create a node or to hide an error, an RM's
  parent and subtree; a child list is part of its node. Each is copied at its first access and
  read from that copy afterwards; a touched node changed since that access fails the commit
  with EAGAIN; events of a transaction fire only at its commit.
* **Special watches** reach a connection that may read the special node (privileged, any
  domain for ``@releaseDomain``, or granted by SET_PERMS) or, as C's ``watch_permitted``
  falls back to the parent, ``/``.
* Permission entries naming a dead domain stay valid (C marks them ``XS_PERM_IGNORE`` by
  asking the hypervisor which domains exist, which a pure store cannot do).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from typing import Any

from protocols.errno import Errno, XenError
from protocols.xenstore.domain import DomainInfo, DomainTable
from protocols.xenstore.node import Node
from protocols.xenstore.paths import (INTRODUCE_DOMAIN, RELEASE_DOMAIN, ancestors, basename,
                                      canonicalize, child, domain_path, parent)
from protocols.xenstore.perms import (DOMID_ANY, DOMID_SELF, XS_PERM_NONE, XS_PERM_OWNER,
                                      XS_PERM_READ, XS_PERM_WRITE, Conn, Perm, format_perms,
                                      parse_perms, perm_for_conn)
from protocols.xenstore.quota import Quota, node_size
from protocols.xenstore.transaction import Transaction, TransactionTable
from protocols.xenstore.watches import (MATCH_DEPTH, MATCH_EXACT, MATCH_NODEPTH, MATCH_SUBTREE,
                                        Watch, WatchEvent, WatchTable)

DOM0_ONLY = (Perm(0, XS_PERM_NONE),)
RELEASE_DOMAIN_PERMS = (Perm(0, XS_PERM_NONE), Perm(DOMID_ANY, XS_PERM_READ))


@dataclasses.dataclass(frozen=True, slots=True)
class StoreStatistics:
    """What :meth:`Store.statistics` reports."""

    nodes: int
    watches: int
    transactions: int
    domains: int
    generation: int
    ops: dict[str, int]  # calls per operation, failed ones included
    eagain: int  # commits refused with EAGAIN
    watches_visited: int  # watch entries looked at to fire changes: what firing has cost


class Store:
    """One host's xenstore. Each public method is one xenstored operation; wire operations
    take ``(conn, tx_id, *args)`` in Xen's argument order (tx_id 0: none; WATCH and UNWATCH
    ignore it). Nothing else changes the state."""

    def __init__(self, quota: Quota = Quota()) -> None:
        self.quota = quota
        self._gen = 0
        self._nodes: dict[str, Node] = {}
        self._owned: dict[int, set[str]] = {}  # owner domid -> paths
        self._watches = WatchTable()
        self._transactions = TransactionTable()
        self._domains = DomainTable()
        self._events: list[WatchEvent] = []
        self._pending: set[WatchEvent] = set()
        self._ops: Counter[str] = Counter()
        self._eagain = 0
        for path, perms, kids in (("/", DOM0_ONLY, ["tool"]),
                                  ("/tool", DOM0_ONLY, ["xenstored"]),
                                  ("/tool/xenstored", DOM0_ONLY, []),
                                  (RELEASE_DOMAIN, RELEASE_DOMAIN_PERMS, []),
                                  (INTRODUCE_DOMAIN, DOM0_ONLY, [])):
            self._commit_node(path, Node(b"", perms, dict.fromkeys(kids)), None)

    # --- nodes ----------------------------------------------------------------------------

    def read(self, conn: Conn, tx_id: int, path: str) -> bytes:
        tx = self._begin("read", conn, tx_id)
        return self._lookup(conn, tx, self._name(conn, path), XS_PERM_READ).value

    def directory(self, conn: Conn, tx_id: int, path: str) -> list[str]:
        tx = self._begin("directory", conn, tx_id)
        return list(self._lookup(conn, tx, self._name(conn, path), XS_PERM_READ).children)

    def directory_part(self, conn: Conn, tx_id: int, path: str) -> tuple[int, list[str]]:
        """The node's generation and children; ``wire.reply_directory_part`` applies the
        request's offset."""
        tx = self._begin("directory_part", conn, tx_id)
        node = self._lookup(conn, tx, self._name(conn, path), XS_PERM_READ)
        return node.gen, list(node.children)

    def write(self, conn: Conn, tx_id: int, path: str, value: bytes) -> None:
        """Set the value, creating the node and any missing parents (empty) as needed."""
        tx = self._begin("write", conn, tx_id)
        name, value = self._name(conn, path), bytes(value)
        try:
            node = self._lookup(conn, tx, name, XS_PERM_WRITE)
        except XenError as err:
            if err.errno != Errno.ENOENT:
                raise
            self._create(conn, tx, name, value)
        else:
            self._check_size(conn, node_size(value, len(node.perms), node.children))
            node = self._modify(tx, name)
            node.value = value
            self._put(tx, name, node, node.perms[0].domid)
        self._fire(tx, name, MATCH_SUBTREE)

    def mkdir(self, conn: Conn, tx_id: int, path: str) -> None:
        """Create an empty node (and parents); an existing node is left unchanged."""
        tx = self._begin("mkdir", conn, tx_id)
        name = self._name(conn, path)
        try:
            self._lookup(conn, tx, name, XS_PERM_WRITE)
        except XenError as err:
            if err.errno != Errno.ENOENT:
                raise
            self._create(conn, tx, name, b"")
            self._fire(tx, name, MATCH_SUBTREE)

    def rm(self, conn: Conn, tx_id: int, path: str) -> None:
        """Delete the subtree. A missing node is fine if its parent exists (else ENOENT);
        ``/`` cannot go (EINVAL)."""
        tx = self._begin("rm", conn, tx_id)
        name = self._name(conn, path)
        try:
            self._lookup(conn, tx, name, XS_PERM_WRITE)
        except XenError as err:
            if err.errno == Errno.ENOENT and self._read(tx, parent(name)) is not None:
                return
            raise
        if name == "/":
            raise XenError(Errno.EINVAL, "cannot remove /")
        self._rm_tree(tx, name)

    def get_perms(self, conn: Conn, tx_id: int, path: str) -> list[str]:
        """The permission list as wire strings (``n0``, ``r5``, ...)."""
        tx = self._begin("get_perms", conn, tx_id)
        name = self._name(conn, path, allow_special=True)
        return format_perms(self._lookup(conn, tx, name, XS_PERM_READ).perms)

    def set_perms(self, conn: Conn, tx_id: int, path: str, perms: Iterable[str | Perm]) -> None:
        """Replace the permission list. Needs write and owner rights; an unprivileged caller
        may not change the owner (EPERM)."""
        tx = self._begin("set_perms", conn, tx_id)
        entries = list(perms)
        if not entries:
            raise XenError(Errno.EINVAL, "a node needs at least one permission")
        if not conn.privileged:
            self.quota.check_max("node_permissions", len(entries))
        new = parse_perms(entries)
        name = self._name(conn, path, allow_special=True)
        node = self._lookup(conn, tx, name, XS_PERM_WRITE | XS_PERM_OWNER)
        if not conn.privileged and new[0].domid != node.perms[0].domid:
            raise XenError(Errno.EPERM, "only a privileged domain may change the owner")
        self._check_size(conn, node_size(node.value, len(new), node.children))
        old = node.perms
        node = self._modify(tx, name)
        node.perms = new
        self._put(tx, name, node, old[0].domid)
        self._fire(tx, name, MATCH_SUBTREE, old)

    # --- watches --------------------------------------------------------------------------

    def watch(self, conn: Conn, tx_id: int, path: str, token: str,
              depth: int | None = None) -> None:
        """Register a watch (depth None: no limit). It fires once at once, with its path."""
        self._ops["watch"] += 1
        name = self._name(conn, path, allow_special=True)
        if depth is not None and depth < 0:
            raise XenError(Errno.EINVAL, f"watch depth {depth}")
        if self._watches.find(conn.conn_id, name, token) is not None:
            raise XenError(Errno.EEXIST, f"already watching {name} with this token")
        if not conn.privileged:
            self.quota.check_count("watches", self._watches.count(conn.domid) + 1)
        prefix = len(domain_path(conn.domid)) + 1 if path[0] not in "/@" else 0
        watch = Watch(conn, name, token, depth, prefix)
        self._watches.add(watch)
        self._queue(watch.event(name))

    def unwatch(self, conn: Conn, tx_id: int, path: str, token: str) -> None:
        self._ops["unwatch"] += 1
        watch = self._watches.find(conn.conn_id, self._name(conn, path, allow_special=True), token)
        if watch is None:
            raise XenError(Errno.ENOENT, f"no watch on {path:.80} with this token")
        self._watches.remove(watch)

    def reset_watches(self, conn: Conn, tx_id: int) -> None:
        """Drop all the connection's watches and transactions."""
        self._begin("reset_watches", conn, tx_id)
        self.disconnect(conn.conn_id)

    def disconnect(self, conn_id: int) -> None:
        """A connection closed: forget its watches and transactions (``destroy_conn``)."""
        for watch in self._watches.of_conn(conn_id):
            self._watches.remove(watch)
        for tx in self._transactions.of_conn(conn_id):
            self._end(tx)

    def drain_events(self) -> list[WatchEvent]:
        """The watch events queued since the last drain, in firing order; an event equal to
        one still pending is queued once (``send_event``), except for special paths."""
        events, self._events = self._events, []
        self._pending.clear()
        return events

    # --- transactions ---------------------------------------------------------------------

    def transaction_start(self, conn: Conn, tx_id: int = 0) -> int:
        """A new transaction id for this connection (EBUSY inside a transaction)."""
        if self._begin("transaction_start", conn, tx_id) is not None:
            raise XenError(Errno.EBUSY, "transactions do not nest")
        return self._transactions.start(conn, self.quota).tx_id

    def transaction_end(self, conn: Conn, tx_id: int, commit: bool,
                        changes: list[list[Any]] | None = None) -> None:
        """Discard or commit (EAGAIN on a conflict). The id is gone afterwards, either way.
        The node changes a commit makes are appended to ``changes``, as
        :meth:`replay_commit` takes them (what a journal records)."""
        tx = self._begin("transaction_end", conn, tx_id)
        if tx is None:
            raise XenError(Errno.ENOENT, "not in a transaction")
        try:
            if commit:
                self._commit(tx, [] if changes is None else changes)
        finally:
            self._end(tx)

    def replay_commit(self, conn: Conn, tx_id: int, changes: list[list[Any]] | None) -> None:
        """A TRANSACTION_END as a journal recorded it: end the transaction (if open) and make
        the node changes :meth:`transaction_end` gave (None: it failed), without deciding
        the commit again (the replayed transaction never read anything)."""
        try:
            tx = self._transactions.lookup(conn, tx_id)
        except XenError:
            tx = None
        if tx is not None:
            self._end(tx)
        for path, *node in changes or ():
            self._apply(path, Node(bytes(node[0]), parse_perms(node[1]), dict.fromkeys(node[2]))
                        if node else None)

    def restart(self) -> None:
        """xenstored restarted from its journal: each open transaction is doomed (its commit
        answers EAGAIN, so its client runs it again) and each watch fires once, as when it
        was registered (watches may fire spuriously; an event lost with the old process is
        made good)."""
        self._transactions.doom()
        for watch in self._watches.all():
            self._queue(watch.event(watch.path))

    # --- domains --------------------------------------------------------------------------

    def introduce_domain(self, conn: Conn, tx_id: int, domid: int, gfn: int = 0,
                         evtchn: int = 1) -> None:
        """Start serving ``domid``; fires @introduceDomain (not for dom0). Introducing it
        again resets its connection (watches and transactions)."""
        self._begin("introduce", conn, tx_id, privileged=True)
        if not self._domains.introduce(domid, gfn, evtchn):
            self._drop_domain_conns(domid)
        elif domid != 0:
            self._special(INTRODUCE_DOMAIN, domid)

    def release_domain(self, conn: Conn, tx_id: int, domid: int) -> None:
        """RELEASE: forget ``domid`` as :meth:`domain_gone` does."""
        self._begin("release", conn, tx_id, privileged=True)
        self._domains.get("release", domid)
        self.domain_gone(domid)

    def resume(self, conn: Conn, tx_id: int, domid: int) -> None:
        """Re-arm @releaseDomain for a domain whose shutdown was undone."""
        self._begin("resume", conn, tx_id, privileged=True)
        self._domains.get("resume", domid).shutdown = False

    def set_target(self, conn: Conn, tx_id: int, domid: int, tdomid: int) -> None:
        """``domid`` (a device-model stubdom) gets ``tdomid``'s access to nodes."""
        self._begin("set_target", conn, tx_id, privileged=True)
        self._domains.set_target(domid, tdomid)

    def is_domain_introduced(self, conn: Conn, tx_id: int, domid: int) -> bool:
        self._begin("is_domain_introduced", conn, tx_id, privileged=True)
        return domid == DOMID_SELF or domid in self._domains

    def get_domain_path(self, conn: Conn, tx_id: int, domid: int) -> str:
        self._begin("get_domain_path", conn, tx_id)
        return domain_path(domid)

    def domain_shutdown(self, domid: int) -> None:
        """VIRQ_DOM_EXC found ``domid`` shut down: fire @releaseDomain, once until RESUME."""
        if self._domains.shutdown(domid):
            self._special(RELEASE_DOMAIN, domid)

    def domain_gone(self, domid: int) -> None:
        """``destroy_domain``: ``domid`` died or was released. Drop its connection's watches
        and transactions, delete every node it owns with the subtree below, and fire
        @releaseDomain if it had been introduced."""
        self._drop_domain_conns(domid)
        for name in sorted(self._owned.get(domid, ()), key=lambda p: (len(p), p)):
            if name in self._nodes and name[0] == "/" and name != "/":
                self._rm_tree(None, name)
        if self._domains.forget(domid):
            self._special(RELEASE_DOMAIN, domid)

    def domains(self) -> list[DomainInfo]:
        return self._domains.all()

    def introduced(self, domid: int) -> bool:
        """Is ``domid`` introduced? (The server's own question: no operation is counted.)"""
        return domid in self._domains

    # --- statistics and persistence -------------------------------------------------------

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(len(self._nodes), len(self._watches), len(self._transactions),
                               len(self._domains), self._gen, dict(self._ops), self._eagain,
                               self._watches.visited)

    def save(self) -> dict[str, Any]:
        """The whole store as msgpack-able data. Undrained events are left out; open
        transactions are kept by id only and answer EAGAIN at commit after a restore."""
        return {
            "version": 1,
            "generation": self._gen,
            "nodes": [[p, n.value, format_perms(n.perms), list(n.children), n.gen]
                      for p, n in self._nodes.items()],
            "domains": self._domains.save(),
            "watches": [[w.conn.conn_id, w.conn.domid, w.conn.privileged, w.conn.socket,
                         w.path, w.token, w.depth, w.prefix_len] for w in self._watches.all()],
            "transactions": self._transactions.save(),
            "ops": dict(self._ops),
            "eagain": self._eagain,
        }

    @classmethod
    def restore(cls, state: dict[str, Any], quota: Quota = Quota()) -> Store:
        """The store :meth:`save` described."""
        if state.get("version") != 1:
            raise ValueError(f"unknown xenstore checkpoint version {state.get('version')!r}")
        store = cls(quota)
        store._nodes.clear()
        store._owned.clear()
        for path, value, perms, kids, gen in state["nodes"]:
            store._commit_node(path, Node(bytes(value), parse_perms(perms), dict.fromkeys(kids)),
                               None)
            store._nodes[path].gen = gen
        store._gen = state["generation"]
        store._domains = DomainTable.restore(state["domains"])
        for *fields, path, token, depth, prefix in state["watches"]:
            store._watches.add(Watch(Conn(*fields), path, token, depth, prefix))
        store._transactions = TransactionTable.restore(state["transactions"])
        store._ops.update(state["ops"])
        store._eagain = state["eagain"]
        return store

    # --- internals: requests and lookups --------------------------------------------------

    def _begin(self, op: str, conn: Conn, tx_id: int, *,
               privileged: bool = False) -> Transaction | None:
        """``process_message``: count the op, refuse a privileged op (EACCES), find the
        transaction (ENOENT if tx_id is not open on this connection)."""
        self._ops[op] += 1
        if privileged and not conn.privileged:
            raise XenError(Errno.EACCES, f"{op} is for privileged domains")
        return self._transactions.lookup(conn, tx_id)

    def _name(self, conn: Conn, path: str, allow_special: bool = False) -> str:
        """``canonicalize``: a socket connection's domid is the store domain's, whose home is
        its relative paths' base (``get_implicit_path``)."""
        return canonicalize(path, conn.domid, allow_special=allow_special,
                            path_max=None if conn.privileged else self.quota.path_max)

    def _perm(self, conn: Conn, perms: tuple[Perm, ...]) -> int:
        target = None if conn.socket else self._domains.target_of(conn.domid)
        return perm_for_conn(conn, perms, target)

    def _read(self, tx: Transaction | None, name: str) -> Node | None:
        """The node as the caller sees it: in a transaction, its copy from the first access."""
        if tx is None:
            return self._nodes.get(name)
        return tx.access(self._nodes, name, self.quota)

    def _lookup(self, conn: Conn, tx: Transaction | None, name: str, want: int) -> Node:
        """``get_node``: the node if ``conn`` has ``want`` on it. Otherwise EACCES, or ENOENT
        if it is missing and its nearest existing ancestor grants ``want``, so that a caller
        cannot learn what it may not see (``errno_from_parents``)."""
        node = self._read(tx, name)
        if node is not None:
            if self._perm(conn, node.perms) & want == want:
                return node
            raise XenError(Errno.EACCES, name)
        for up in ancestors(name):
            above = self._read(tx, up)
            if above is not None:
                if self._perm(conn, above.perms) & want:
                    raise XenError(Errno.ENOENT, name)
                break
        raise XenError(Errno.EACCES, name)

    def _check_size(self, conn: Conn, size: int) -> None:
        if not conn.privileged:
            self.quota.check_max("node_size", size)

    # --- internals: changing nodes --------------------------------------------------------

    def _create(self, conn: Conn, tx: Transaction | None, name: str, value: bytes) -> None:
        """``create_node``: make ``name`` and its missing ancestors. New nodes copy their
        parent's permissions; an unprivileged creator becomes their owner."""
        missing = [name]  # the leaf, then each missing ancestor upwards
        for top in ancestors(name):
            above = self._read(tx, top)
            if above is not None:
                break
            missing.append(top)
        perms = above.perms
        if not conn.privileged:
            perms = (Perm(conn.domid, perms[0].access), *perms[1:])
            owned = len(self._owned.get(conn.domid, ())) + (tx.own_delta if tx else 0)
            self.quota.check_count("nodes", owned + len(missing))
            self._check_size(conn, node_size(above.value, len(above.perms), above.children)
                             + len(basename(missing[-1])) + 1)
            self._check_size(conn, node_size(value, len(perms), {}))
            for lower in missing[:-1]:
                self._check_size(conn, node_size(b"", len(perms), {basename(lower): None}))
        node = self._modify(tx, top)
        node.children[basename(missing[-1])] = None
        self._put(tx, top, node, node.perms[0].domid)
        for i in reversed(range(len(missing))):
            kids = {basename(missing[i - 1]): None} if i else {}
            self._put(tx, missing[i], Node(value if i == 0 else b"", perms, kids), None)

    def _rm_tree(self, tx: Transaction | None, name: str) -> None:
        """``rm_node``: delete ``name``'s subtree, children first. Each node below ``name``
        fires only the watches on itself; ``name`` fires as any change (``delnode_sub``)."""
        up = parent(name)
        self._read(tx, up)
        doomed = self._subtree(tx, name)
        for path in doomed:
            self._fire(tx, path, MATCH_SUBTREE if path == name else MATCH_EXACT)
        for path in doomed:
            if tx is None:
                self._delete_node(path)
            else:
                tx.own_delta -= self._read(tx, path).perms[0].domid == tx.conn.domid
                tx.change(path, None)
        node = self._modify(tx, up)
        node.children.pop(basename(name), None)  # absent only in a doomed transaction's view
        self._put(tx, up, node, node.perms[0].domid)

    def _subtree(self, tx: Transaction | None, name: str) -> list[str]:
        """``walk_node_tree`` order: each node after all of its children. (A transaction
        that reads nodes changed since its start may see a child list naming a node it
        cannot see; it will fail with EAGAIN, so such children are skipped.)"""
        order: list[str] = []
        stack = [(name, iter(list(self._read(tx, name).children)))]
        while stack:
            path, kids = stack[-1]
            leaf = next(kids, None)
            if leaf is None:
                stack.pop()
                order.append(path)
            elif (node := self._read(tx, below := child(path, leaf))) is not None:
                stack.append((below, iter(list(node.children))))
        return order

    def _modify(self, tx: Transaction | None, name: str) -> Node:
        """An existing node, ready to change: the transaction's private copy, if in one."""
        if tx is None:
            return self._nodes[name]
        node = self._read(tx, name)
        if node is None:  # a doomed transaction's inconsistent view
            tx.fail = Errno.EAGAIN
            raise XenError(Errno.EAGAIN, f"{name} changed since the transaction read it")
        return node

    def _put(self, tx: Transaction | None, name: str, node: Node, old_owner: int | None) -> None:
        if tx is None:
            self._commit_node(name, node, old_owner)
        else:
            tx.change(name, node)
            tx.own_delta += (node.perms[0].domid == tx.conn.domid) - (old_owner == tx.conn.domid)

    def _commit_node(self, name: str, node: Node, old_owner: int | None) -> None:
        """Store a node globally, stamped with a new generation."""
        self._gen += 1
        node.gen = self._gen
        self._nodes[name] = node
        owner = node.perms[0].domid
        if owner != old_owner:
            if old_owner is not None:
                self._disown(old_owner, name)
            self._owned.setdefault(owner, set()).add(name)

    def _delete_node(self, name: str) -> None:
        """Delete a node globally (a new generation, as C's ``access_node`` stamps)."""
        old = self._nodes.pop(name)
        self._disown(old.perms[0].domid, name)
        self._gen += 1

    def _disown(self, owner: int, name: str) -> None:
        owned = self._owned[owner]
        owned.discard(name)
        if not owned:
            del self._owned[owner]

    def _commit(self, tx: Transaction, changes: list[list[Any]]) -> None:
        """``finalize_transaction``: check, write the changed copies back (appended to
        ``changes``), then fire the queued watches."""
        if tx.fail is not None:
            self._eagain += tx.fail == Errno.EAGAIN
            raise XenError(tx.fail, "the transaction failed earlier")
        changed = tx.conflict(self._nodes)
        if changed is not None:
            self._eagain += 1
            raise XenError(Errno.EAGAIN, f"{changed} changed since the transaction read it")
        if not tx.conn.privileged and tx.own_delta > 0:
            self.quota.check_count("nodes", len(self._owned.get(tx.conn.domid, ())) + tx.own_delta)
        for name, accessed in tx.accessed.items():
            node = accessed.node
            if accessed.modified and self._apply(name, node):
                changes.append([name] if node is None else
                               [name, node.value, format_perms(node.perms), list(node.children)])
        for name, match in tx.fire.items():
            self._notify(name, match, self._nodes.get(name), tx.accessed[name].perms)

    def _apply(self, name: str, node: Node | None) -> bool:
        """Make a transaction's copy of ``name`` global (None: delete it); False if there was
        nothing to do (a node created and deleted again in the transaction)."""
        old = self._nodes.get(name)
        if node is not None:
            self._commit_node(name, node, old.perms[0].domid if old else None)
        elif old is not None:
            self._delete_node(name)
        else:
            return False
        return True

    def _end(self, tx: Transaction) -> None:
        self._transactions.end(tx)

    # --- internals: watch events ----------------------------------------------------------

    def _drop_domain_conns(self, domid: int) -> None:
        for conn_id in sorted(self._watches.conns_of_domain(domid)
                              | self._transactions.conns_of_domain(domid)):
            self.disconnect(conn_id)

    def _fire(self, tx: Transaction | None, name: str, match: int,
              old_perms: tuple[Perm, ...] | None = None) -> None:
        """``fire_watches`` now, or at the commit of the transaction making the change."""
        if tx is None:
            self._notify(name, match, self._nodes.get(name), old_perms)
        else:
            tx.queue_event(name, match)

    def _special(self, name: str, domid: int) -> None:
        """``fire_special_watches``: ``name`` for plain watches, ``name/<domid>`` for watches
        with a depth and watches on that exact path."""
        node = self._nodes[name]
        self._notify(name, MATCH_NODEPTH, node, None)
        self._notify(f"{name}/{domid}", MATCH_DEPTH, node, None)

    def _notify(self, name: str, match: int, node: Node | None,
                old_perms: tuple[Perm, ...] | None) -> None:
        """Queue the events of the watches a change at ``name`` fires, for the connections
        allowed to see it."""
        allowed: dict[int, bool] = {}
        for watch in self._watches.matching(name, match):
            cid = watch.conn.conn_id
            if cid not in allowed:
                allowed[cid] = self._may_see(watch.conn, name, node, old_perms)
            if allowed[cid]:
                self._queue(watch.event(name))

    def _may_see(self, conn: Conn, name: str, node: Node | None,
                 old_perms: tuple[Perm, ...] | None) -> bool:
        """``watch_permitted``: read access to the node (before or after a SET_PERMS) or to
        its parent; a special node's parent is ``/`` (``get_parent``)."""
        if old_perms is not None and self._perm(conn, old_perms) & XS_PERM_READ:
            return True
        if node is None:
            return False
        if self._perm(conn, node.perms) & XS_PERM_READ:
            return True
        above = self._nodes.get("/" if name[0] == "@" else parent(name))
        return above is not None and bool(self._perm(conn, above.perms) & XS_PERM_READ)

    def _queue(self, event: WatchEvent) -> None:
        if event.path[:1] != "@":
            if event in self._pending:
                return
            self._pending.add(event)
        self._events.append(event)
