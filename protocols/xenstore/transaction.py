"""Xenstore transactions: ids, the copy-on-write overlay and the conflict rule (reference
11.4 "Transactions"; ``tools/xenstored/transaction.c``).

TRANSACTION_START conceptually snapshots the whole database. Copying it would cost O(nodes)
per transaction, so a transaction keeps only an overlay of the nodes it changed and a record
of every node it touched, with the generation counter at its start. Each global change stamps
the node with a new generation (a deletion leaves a tombstone while transactions are open);
the commit fails with EAGAIN if any touched node carries a generation newer than the start.
A transaction that commits has therefore read exactly its snapshot. C xenstored compares
with the generation seen at the *first access* instead, so it commits a few transactions that
this rule retries; EAGAIN is always safe, since clients repeat the whole transaction.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from protocols.errno import Errno, XenError
from protocols.xenstore.perms import Conn, Perm
from protocols.xenstore.quota import Quota
from protocols.xenstore.watches import MATCH_SUBTREE

if TYPE_CHECKING:
    from protocols.xenstore.store import Node


@dataclasses.dataclass(slots=True)
class Transaction:
    """``struct transaction``: one open transaction of one connection."""

    conn: Conn
    tx_id: int
    start_gen: int
    overlay: dict[str, Node | None] = dataclasses.field(default_factory=dict)  # None: deleted
    accessed: dict[str, tuple[Perm, ...] | None] = dataclasses.field(default_factory=dict)
    fire: dict[str, int] = dataclasses.field(default_factory=dict)  # node -> watch match mode
    own_delta: int = 0  # change in the number of nodes the connection's domain owns
    fail: Errno | None = None  # the commit's answer, decided early

    def view(self, nodes: dict[str, Node], name: str) -> Node | None:
        """The node as this transaction sees it."""
        return self.overlay[name] if name in self.overlay else nodes.get(name)

    def record(self, name: str, node: Node | None, quota: Quota) -> None:
        """``access_node``: remember a touched node and its permissions at that moment.
        Over the nodes-per-transaction quota: ENOSPC, and the commit will say ENOMEM."""
        if name in self.accessed:
            return
        if not self.conn.privileged:
            try:
                quota.check_max("transaction_nodes", len(self.accessed) + 1)
            except XenError:
                self.fail = Errno.ENOMEM
                raise
        self.accessed[name] = node.perms if node is not None else None

    def queue_event(self, name: str, match: int) -> None:
        """``queue_watches``: fire at commit; a subtree match replaces an exact one."""
        if self.fire.get(name) != MATCH_SUBTREE:
            self.fire[name] = match

    def conflict(self, nodes: dict[str, Node], deleted: dict[str, int]) -> str | None:
        """The first touched node changed since the start, or None."""
        for name in self.accessed:
            node = nodes.get(name)
            if (node.gen if node is not None else deleted.get(name, 0)) > self.start_gen:
                return name
        return None


class TransactionTable:
    """The open transactions of every connection, by ``(conn_id, tx_id)``."""

    def __init__(self) -> None:
        self._open: dict[tuple[int, int], Transaction] = {}
        self._next: dict[int, int] = {}

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

    def start(self, conn: Conn, generation: int, quota: Quota) -> Transaction:
        """A new transaction with the connection's next free id (never 0; u32 wrap)."""
        if not conn.privileged:
            mine = sum(1 for t in self._open.values()
                       if t.conn.domid == conn.domid and not t.conn.socket)
            quota.check_count("transactions", mine + 1)
        tx_id = self._next.get(conn.conn_id, 1)
        while tx_id == 0 or (conn.conn_id, tx_id) in self._open:
            tx_id = (tx_id + 1) & 0xFFFFFFFF
        self._next[conn.conn_id] = (tx_id + 1) & 0xFFFFFFFF
        tx = self._open[conn.conn_id, tx_id] = Transaction(conn, tx_id, generation)
        return tx

    def end(self, tx: Transaction) -> None:
        del self._open[tx.conn.conn_id, tx.tx_id]

    def of_conn(self, conn_id: int) -> list[Transaction]:
        return [t for (cid, _), t in self._open.items() if cid == conn_id]

    def conns_of_domain(self, domid: int) -> set[int]:
        return {t.conn.conn_id for t in self._open.values()
                if t.conn.domid == domid and not t.conn.socket}

    def save(self) -> dict:
        return {"open": [[t.conn.conn_id, t.conn.domid, t.conn.privileged, t.conn.socket,
                          t.tx_id] for t in self._open.values()],
                "next": [[c, n] for c, n in self._next.items()]}

    @classmethod
    def restore(cls, state: dict, generation: int) -> TransactionTable:
        """Open transactions come back empty and doomed: their commit answers EAGAIN."""
        table = cls()
        for *fields, tx_id in state["open"]:
            table._open[fields[0], tx_id] = Transaction(Conn(*fields), tx_id, generation,
                                                        fail=Errno.EAGAIN)
        table._next = {c: n for c, n in state["next"]}
        return table
