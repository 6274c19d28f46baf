"""Xenstore transactions: ids, the transaction-private node copies and the conflict rule
(reference 11.4 "Transactions"; ``tools/xenstored/transaction.c``).

TRANSACTION_START conceptually snapshots the whole database. C xenstored takes the snapshot
lazily, node by node (``access_node``), and so does this module: the first access to a node
inside a transaction keeps a private copy of it (value, permissions, children), or the fact
that it is absent, together with its generation. Every later request of the transaction sees
that copy, or the transaction's own change to it, whatever other connections do meanwhile.
Each global change stamps the node with a new generation, and the commit fails with EAGAIN
iff some accessed node's generation (or existence) is no longer the one recorded. A node that
was absent at its first access and is absent again at the commit does not conflict, so no
deletion needs remembering.

A committed transaction therefore equals its requests run at the commit point; C commits
some transactions that a snapshot taken at TRANSACTION_START would have to retry (a node
changed after the start but before the transaction first looked at it).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from protocols.errno import Errno, XenError
from protocols.xenstore.node import Node
from protocols.xenstore.perms import Conn, Perm
from protocols.xenstore.quota import Quota
from protocols.xenstore.watches import MATCH_SUBTREE


@dataclasses.dataclass(slots=True)
class AccessedNode:
    """``struct accessed_node``: a node as a transaction first saw it, and its copy since."""

    node: Node | None  # the private copy (C's ``trans_name`` entry); None: absent or deleted
    generation: int | None  # the global node's generation at the first access; None: absent
    perms: tuple[Perm, ...] | None  # its permissions then, for ``fire_watches`` at the commit
    modified: bool = False  # the commit writes ``node`` back (or deletes the node)


@dataclasses.dataclass(slots=True)
class Transaction:
    """``struct transaction``: one open transaction of one connection."""

    conn: Conn
    tx_id: int
    accessed: dict[str, AccessedNode] = dataclasses.field(default_factory=dict)
    fire: dict[str, int] = dataclasses.field(default_factory=dict)  # node -> watch match mode
    own_delta: int = 0  # change in the number of nodes the connection's domain owns
    fail: Errno | None = None  # the commit's answer, decided early

    def access(self, nodes: dict[str, Node], name: str, quota: Quota) -> Node | None:
        """``read_node`` in a transaction (``transaction_prepend``, ``access_node``): the
        first access copies the node, or notes it absent, with its generation; every later
        one returns that copy, as changed by the transaction itself. Over the
        nodes-per-transaction quota: ENOSPC, and the commit will say ENOMEM."""
        accessed = self.accessed.get(name)
        if accessed is None:
            if not self.conn.privileged:
                try:
                    quota.check_max("transaction_nodes", len(self.accessed) + 1)
                except XenError:
                    self.fail = Errno.ENOMEM
                    raise
            node = nodes.get(name)
            accessed = self.accessed[name] = (
                AccessedNode(None, None, None) if node is None
                else AccessedNode(node.copy(), node.gen, node.perms))
        return accessed.node

    def change(self, name: str, node: Node | None) -> None:
        """``access_node`` for a write (``node``) or a delete (None) of a node the transaction
        has read: the change goes to the private copy, and to the database at the commit."""
        accessed = self.accessed[name]
        accessed.node, accessed.modified = node, True

    def queue_event(self, name: str, match: int) -> None:
        """``queue_watches``: fire at commit; a subtree match replaces an exact one."""
        if self.fire.get(name) != MATCH_SUBTREE:
            self.fire[name] = match

    def conflict(self, nodes: dict[str, Node]) -> str | None:
        """``finalize_transaction``'s check: the first accessed node whose generation (None
        if absent) differs from the one its first access recorded, or None."""
        for name, accessed in self.accessed.items():
            node = nodes.get(name)
            if (node.gen if node is not None else None) != accessed.generation:
                return name
        return None


class TransactionTable:
    """The open transactions of every connection, by ``(conn_id, tx_id)``, and indexed by
    connection and by domain, so that starting one (its quota) and dropping a connection's
    or a domain's cost the same however many other domains have transactions open."""

    def __init__(self) -> None:
        self._open: dict[tuple[int, int], Transaction] = {}
        self._next: dict[int, int] = {}
        self._by_conn: dict[int, dict[int, Transaction]] = {}  # conn_id -> tx_id -> it
        self._domain_conns: dict[int, Counter[int]] = {}  # domid -> ring conn_id -> open

    def __len__(self) -> int:
        return len(self._open)

    def lookup(self, conn: Conn, tx_id: int) -> Transaction | None:
        """``transaction_lookup``: None for tx_id 0, ENOENT for an id not open on ``conn``."""
        if tx_id == 0:
            return None
        tx = self._open.get((conn.conn_id, tx_id))
        if tx is None:
            raise XenError(Errno.ENOENT, f"no transaction {tx_id} on this connection")
        return tx

    def start(self, conn: Conn, quota: Quota) -> Transaction:
        """A new transaction with the connection's next free id (never 0; u32 wrap)."""
        if not conn.privileged:
            mine = sum(self._domain_conns.get(conn.domid, {}).values())
            quota.check_count("transactions", mine + 1)
        tx_id = self._next.get(conn.conn_id, 1)
        while tx_id == 0 or (conn.conn_id, tx_id) in self._open:
            tx_id = (tx_id + 1) & 0xFFFFFFFF
        self._next[conn.conn_id] = (tx_id + 1) & 0xFFFFFFFF
        return self._add(Transaction(conn, tx_id))

    def end(self, tx: Transaction) -> None:
        cid = tx.conn.conn_id
        del self._open[cid, tx.tx_id]
        mine = self._by_conn[cid]
        del mine[tx.tx_id]
        if not mine:
            del self._by_conn[cid]
        if not tx.conn.socket:
            conns = self._domain_conns[tx.conn.domid]
            conns[cid] -= 1
            if not conns[cid]:
                del conns[cid]
            if not conns:
                del self._domain_conns[tx.conn.domid]

    def doom(self) -> None:
        """Every open transaction's commit will answer EAGAIN (xenstored restarted)."""
        for tx in self._open.values():
            tx.fail = Errno.EAGAIN

    def of_conn(self, conn_id: int) -> list[Transaction]:
        return list(self._by_conn.get(conn_id, {}).values())

    def conns_of_domain(self, domid: int) -> set[int]:
        return set(self._domain_conns.get(domid, ()))

    def save(self) -> dict:
        return {"open": [[t.conn.conn_id, t.conn.domid, t.conn.privileged, t.conn.socket,
                          t.tx_id] for t in self._open.values()],
                "next": [[c, n] for c, n in self._next.items()]}

    @classmethod
    def restore(cls, state: dict) -> TransactionTable:
        """Open transactions come back empty and doomed: their commit answers EAGAIN."""
        table = cls()
        for *fields, tx_id in state["open"]:
            table._add(Transaction(Conn(*fields), tx_id, fail=Errno.EAGAIN))
        table._next = {c: n for c, n in state["next"]}
        return table

    def _add(self, tx: Transaction) -> Transaction:
        cid = tx.conn.conn_id
        self._open[cid, tx.tx_id] = tx
        self._by_conn.setdefault(cid, {})[tx.tx_id] = tx
        if not tx.conn.socket:
            self._domain_conns.setdefault(tx.conn.domid, Counter())[cid] += 1
        return tx
