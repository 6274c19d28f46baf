"""Property tests of the xenstore store: transactions against a serial model (reference 11.4),
path and permission parsing against arbitrary text (11.1, 11.3), and save/restore."""

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errno import Errno, XenError
from protocols.xenstore import Conn, Perm, Store, canonicalize
from protocols.xenstore.paths import ancestors, basename, child, parent

CONNS = [Conn(i, 0, privileged=True, socket=True) for i in (1, 2, 3)]
PATHS = ["/a", "/a/b", "/a/c", "/a/b/d", "/e"]
KINDS = ["read", "directory", "write", "mkdir", "rm"]
VALUES = [b"", b"1", b"2"]


class Model:
    """A plain serial xenstore for privileged callers: path -> [value, children]."""

    def __init__(self, nodes=None):
        self.nodes = nodes or {"/": [b"", ["tool"]], "/tool": [b"", ["xenstored"]],
                               "/tool/xenstored": [b"", []]}

    def _up_to_existing(self, path):
        chain = []
        for up in ancestors(path):
            chain.append(up)
            if up in self.nodes:
                return chain
        raise AssertionError("the root always exists")

    def _subtree(self, path):
        order = []
        for leaf in self.nodes[path][1]:
            if child(path, leaf) in self.nodes:  # else a doomed transaction's view
                order += self._subtree(child(path, leaf))
        return order + [path]

    def apply(self, kind, path, value):
        """(result, nodes accessed, nodes changed) of one operation, as xenstored's
        transactions account them (transaction.c access_node)."""
        n, accessed = self.nodes, {path}
        if kind in ("read", "directory"):
            if path in n:
                return ("ok", n[path][0] if kind == "read" else list(n[path][1])), accessed, []
            accessed.update(self._up_to_existing(path))
            return ("err", Errno.ENOENT), accessed, []
        if kind in ("write", "mkdir"):
            if path in n:
                if kind == "mkdir":
                    return ("ok", None), accessed, []
                n[path][0] = value
                return ("ok", None), accessed, [path]
            chain = self._up_to_existing(path)
            accessed.update(chain)
            missing = [path] + chain[:-1]
            if basename(missing[-1]) not in n[chain[-1]][1]:  # else a doomed view
                n[chain[-1]][1].append(basename(missing[-1]))
            for i in reversed(range(len(missing))):
                n[missing[i]] = [value if i == 0 and kind == "write" else b"",
                                 [basename(missing[i - 1])] if i else []]
            return ("ok", None), accessed, [chain[-1], *missing]
        assert kind == "rm"
        if path not in n:
            accessed.update(self._up_to_existing(path))
            return (("ok", None) if parent(path) in n else ("err", Errno.ENOENT)), accessed, []
        doomed = self._subtree(path)
        accessed.update(doomed, [parent(path)])
        for p in doomed:
            del n[p]
        if parent(path) in n and basename(path) in n[parent(path)][1]:  # else doomed
            n[parent(path)][1].remove(basename(path))
        return ("ok", None), accessed, [*doomed, parent(path)]


class LazyView:
    """A transaction's private view as C xenstored keeps it (transaction.c ``access_node``):
    each node as it was when the transaction first touched it, then as the transaction
    changed it. ``first`` records, per node, the clock and whether it existed then."""

    def __init__(self, model: Model, clock) -> None:
        self.model, self.clock = model, clock
        self.copies: dict = {}
        self.first: dict = {}

    def _touch(self, path):
        if path not in self.first:
            node = self.model.nodes.get(path)
            self.copies[path] = None if node is None else [node[0], list(node[1])]
            self.first[path] = (self.clock(), node is not None)

    def __contains__(self, path):
        self._touch(path)
        return self.copies[path] is not None

    def __getitem__(self, path):
        self._touch(path)
        return self.copies[path]

    def __setitem__(self, path, node):
        self._touch(path)
        self.copies[path] = node

    def __delitem__(self, path):
        self._touch(path)
        self.copies[path] = None


def call(store, conn, tx_id, kind, path, value):
    """One request; its reply or its errno. ``path`` is the sole argument of other kinds."""
    try:
        if kind == "write":
            result = store.write(conn, tx_id, path, value)
        else:
            result = getattr(store, kind)(conn, tx_id, path)
    except XenError as err:
        return ("err", err.errno)
    return ("ok", result)


def snapshot(store) -> dict:
    """The whole tree as the model holds it, read through the public interface."""
    out, todo = {}, ["/"]
    while todo:
        path = todo.pop()
        kids = store.directory(CONNS[0], 0, path)
        out[path] = [store.read(CONNS[0], 0, path), kids]
        todo += [child(path, k) for k in kids]
    return out


STEPS = st.lists(st.tuples(st.integers(0, 2),
                           st.sampled_from(["start", "start", "commit", "commit", "abort",
                                            *["op"] * 6]),
                           st.sampled_from(KINDS), st.sampled_from(PATHS),
                           st.sampled_from(VALUES), st.sampled_from([True, True, False])),
                 min_size=10, max_size=60)


@settings(max_examples=600)  # conflicts need several steps to line up
@given(STEPS)
def test_xenstore_11_4_concurrent_transactions_equal_a_serial_run_in_commit_order(steps):
    """Each committed transaction equals its operations replayed at its commit point, with the
    results it saw (each node as at the transaction's first access to it); a commit gets
    EAGAIN iff another change touched a node it accessed after that first access, unless the
    node was missing then and is missing again (transaction.c ``finalize_transaction``
    compares generations); operations outside transactions apply at once."""
    store, model = Store(), Model()
    clock, touched = 0, {}
    open_tx = {}  # conn index -> [tx_id, Model over its LazyView, ops]
    for i, action, kind, path, value, in_tx in steps:
        conn = CONNS[i]
        if action == "start" and i not in open_tx:
            view = LazyView(model, lambda: clock)  # noqa: B023 (the clock at each access)
            open_tx[i] = [store.transaction_start(conn, 0), Model(view), []]
        elif action in ("commit", "abort") and i in open_tx:
            tx_id, private, ops = open_tx.pop(i)
            if action == "abort":
                store.transaction_end(conn, tx_id, False)
                continue
            conflict = any(touched.get(p, -1) > when and (existed or p in model.nodes)
                           for p, (when, existed) in private.nodes.first.items())
            outcome = call(store, conn, tx_id, "transaction_end", True, None)
            assert outcome == (("err", Errno.EAGAIN) if conflict else ("ok", None))
            if not conflict:
                for op_kind, op_path, op_value, seen in ops:
                    expected, _, changed = model.apply(op_kind, op_path, op_value)
                    assert seen == expected
                    for p in changed:
                        clock += 1
                        touched[p] = clock
        elif action == "op" and in_tx and i in open_tx:
            tx = open_tx[i]
            seen = call(store, conn, tx[0], kind, path, value)
            expected, accessed, _ = tx[1].apply(kind, path, value)
            assert seen in (expected, ("err", Errno.EAGAIN))  # EAGAIN: a doomed view
            assert accessed <= tx[1].nodes.first.keys()
            tx[2].append((kind, path, value, seen))
        elif action == "op":
            expected, _, changed = model.apply(kind, path, value)
            assert call(store, conn, 0, kind, path, value) == expected
            for p in changed:
                clock += 1
                touched[p] = clock
    assert snapshot(store) == model.nodes


@given(st.text(), st.booleans())
def test_xenstore_11_1_any_path_is_valid_or_einval(path, special):
    try:
        name = canonicalize(path, 5, allow_special=special, path_max=None if special else 2048)
    except XenError as err:
        assert err.errno == Errno.EINVAL
    else:
        assert name.startswith("/") or (special and name.startswith("@"))
        assert name == "/" or not name.endswith("/")
        assert "//" not in name and len(name) <= 3072
        assert name.endswith(path)


@given(st.text(max_size=12))
def test_xenstore_11_3_any_perm_string_parses_or_is_einval(text):
    try:
        perm = Perm.parse(text)
    except XenError as err:
        assert err.errno == Errno.EINVAL
    else:
        assert str(perm) == text


@given(st.lists(st.tuples(st.sampled_from(["write", "rm", "watch", "start"]),
                          st.sampled_from(PATHS + ["rel/x", "rel"]), st.sampled_from(VALUES)),
                max_size=25))
def test_xenstore_save_restore_round_trips(ops):
    store = Store()
    guest = Conn(9, 5)
    store.introduce_domain(CONNS[0], 0, 5, 0, 1)
    store.write(CONNS[0], 0, "/local/domain/5/rel", b"")
    store.set_perms(CONNS[0], 0, "/local/domain/5/rel", ["n5"])
    for kind, path, value in ops:
        conn = guest if path.startswith("rel") else CONNS[0]
        try:
            if kind == "write":
                store.write(conn, 0, path, value)
            elif kind == "rm":
                store.rm(conn, 0, path)
            elif kind == "watch":
                store.watch(conn, 0, path, value.decode() or "t")
            else:
                store.transaction_start(conn, 0)
        except XenError:
            pass
    store.drain_events()
    state = msgpack.unpackb(msgpack.packb(store.save()))
    again = Store.restore(state)
    assert msgpack.unpackb(msgpack.packb(again.save())) == state
    assert snapshot(again) == snapshot(store)


FUZZ_CONNS = [CONNS[0], Conn(5, 5), Conn(6, 6)]
FUZZ_OPS = st.tuples(
    st.integers(0, 2),
    st.sampled_from(["read", "directory", "write", "mkdir", "rm", "get_perms", "set_perms",
                     "watch", "unwatch", "start", "commit", "abort", "gone", "introduce"]),
    st.sampled_from(["/local/domain/5", "/local/domain/5/x", "/local/domain/5/x/y", "x",
                     "x/y", "/a", "/a/b", "@releaseDomain", "/local/domain/6/z"]),
    st.sampled_from([["n0", "r5"], ["n5"], ["b6"], ["n0", "b5", "r6"]]),
    st.booleans())


@settings(max_examples=300)
@given(st.lists(FUZZ_OPS, max_size=40))
def test_xenstore_any_request_sequence_keeps_the_tree_consistent(ops):
    """Whatever mix of callers, permissions and transactions: only XenErrors, and the saved
    tree stays a tree (every node listed by its parent, every listed child present)."""
    store, open_tx = Store(), {}
    for i, op, path, perms, in_tx in ops:
        conn = FUZZ_CONNS[i]
        tx = open_tx.get(i, 0) if in_tx else 0
        try:
            if op == "start":
                open_tx[i] = store.transaction_start(conn, 0)
            elif op in ("commit", "abort"):
                store.transaction_end(conn, open_tx.pop(i, 0), op == "commit")
            elif op == "gone":
                store.domain_gone(conn.domid)
                open_tx.pop(i, None)
            elif op == "introduce":
                store.introduce_domain(CONNS[0], 0, 5 + i, 0, 1)
            elif op == "write":
                store.write(conn, tx, path, b"v")
            elif op == "set_perms":
                store.set_perms(conn, tx, path, perms)
            elif op in ("watch", "unwatch"):
                getattr(store, op)(conn, tx, path, "tok")
            else:
                getattr(store, op)(conn, tx, path)
        except XenError:
            pass
        store.drain_events()
    nodes = {path: kids for path, _, _, kids, _ in store.save()["nodes"]}
    for path, kids in nodes.items():
        if path != "/" and path[0] == "/":
            assert basename(path) in nodes[parent(path)]
        assert all(child(path, k) in nodes for k in kids)
    assert store.statistics().nodes == len(nodes)
