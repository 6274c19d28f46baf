"""protocols.xenstore.Store: reference 11.1 (paths, operation semantics), 11.4 (transactions,
watches, special watches, domain removal), 11.3 quotas, statistics and save/restore."""

import msgpack
import pytest

from protocols.errno import Errno, XenError
from protocols.xenstore import DOMID_SELF, Conn, Quota, Store, WatchEvent

DOM0 = Conn(1, 0, privileged=True)  # dom0's own ring
TOOLS = Conn(2, 0, privileged=True, socket=True)  # xenstore-utils over the Unix socket
GUEST = Conn(5, 5)  # domain 5's ring
OTHER = Conn(6, 6)


def errno_of(fn, *args, **kwargs) -> Errno:
    with pytest.raises(XenError) as err:
        fn(*args, **kwargs)
    return err.value.errno


@pytest.fixture
def store() -> Store:
    """libxl's view of domains 5 and 6: ``~`` owned by dom0 and readable by the guest, and
    ``~/data`` owned by the guest."""
    s = Store()
    for domid in (5, 6):
        home = f"/local/domain/{domid}"
        s.mkdir(TOOLS, 0, home)
        s.set_perms(TOOLS, 0, home, ["n0", f"r{domid}"])
        s.mkdir(TOOLS, 0, f"{home}/data")
        s.set_perms(TOOLS, 0, f"{home}/data", [f"n{domid}"])
        s.introduce_domain(TOOLS, 0, domid, 0, 1)
    s.drain_events()
    return s


# --- 11.1 Paths ---------------------------------------------------------------------------

def test_xenstore_11_1_relative_path_is_relative_to_local_domain(store):
    store.write(GUEST, 0, "data/x", b"1")
    assert store.read(TOOLS, 0, "/local/domain/5/data/x") == b"1"
    store.write(DOM0, 0, "memory/target", b"524288")  # dom0's ring: relative to domain 0
    assert store.read(TOOLS, 0, "/local/domain/0/memory/target") == b"524288"


def test_xenstored_core_c_canonicalize_relative_path_on_a_socket_is_under_the_store_domain(
        store):
    """core.c ``canonicalize`` prefixes ``get_implicit_path``: for a socket connection
    (``conn->domain`` NULL) ``/local/domain/<store_domid>``, here 0."""
    store.write(TOOLS, 0, "foo/bar", b"1")
    assert store.read(TOOLS, 0, "/local/domain/0/foo/bar") == b"1"
    assert store.read(TOOLS, 0, "foo/bar") == b"1"
    assert errno_of(store.read, TOOLS, 0, "local/domain/5/data") == Errno.ENOENT


def test_xenstored_watch_c_relative_watch_on_a_socket_yields_relative_event_paths(store):
    """watch.c ``check_watch_path``/``add_watch``: a relative watch path cuts the implicit
    path (``prefix_len``) from its events, on a socket connection too."""
    store.watch(TOOLS, 0, "foo", "rel")
    store.write(TOOLS, 0, "/local/domain/0/foo/bar", b"1")
    assert [(e.token, e.path) for e in store.drain_events()] == [("rel", "foo"),
                                                                   ("rel", "foo/bar")]


@pytest.mark.parametrize("path", ["", "/a//b", "/a/", "//", "/a b", "/caf\u00e9", "/a\0b",
                                  "/a.b", "/a:b", "@releaseDomain", "/" + "x" * 3072])
def test_xenstore_11_1_invalid_paths_are_einval(store, path):
    assert errno_of(store.read, TOOLS, 0, path) == Errno.EINVAL
    assert errno_of(store.write, TOOLS, 0, path, b"v") == Errno.EINVAL


def test_xenstore_11_1_path_length_limits(store):
    store.write(TOOLS, 0, "/" + "x" * 3071, b"")  # 3072 absolute is the maximum
    inside = "data" + "/yyyyyyy" * 255 + "/" + "z" * 3  # 2048 after /local/domain/5/
    assert len(inside) == 2048
    store.write(GUEST, 0, inside, b"ok")
    assert errno_of(store.write, GUEST, 0, inside + "z", b"") == Errno.EINVAL
    store.write(DOM0, 0, "/local/domain/5/" + inside + "z", b"")  # no quota for dom0


# --- 11.1 Operation semantics ---------------------------------------------------------------

def test_xenstore_11_1_write_creates_missing_parents_with_empty_values(store):
    store.write(TOOLS, 0, "/vm/uuid/image/kernel", b"vmlinuz")
    assert store.read(TOOLS, 0, "/vm") == b""
    assert store.read(TOOLS, 0, "/vm/uuid/image") == b""
    assert store.directory(TOOLS, 0, "/vm/uuid") == ["image"]
    assert store.read(TOOLS, 0, "/vm/uuid/image/kernel") == b"vmlinuz"


def test_xenstore_11_1_values_are_bytes_kept_exactly(store):
    store.write(TOOLS, 0, "/v", b"\x00\xffa\0")
    assert store.read(TOOLS, 0, "/v") == b"\x00\xffa\0"


def test_xenstore_11_1_mkdir_leaves_an_existing_node_unchanged(store):
    store.write(TOOLS, 0, "/a", b"keep")
    store.watch(TOOLS, 0, "/a", "t")
    store.drain_events()
    store.mkdir(TOOLS, 0, "/a")
    assert store.read(TOOLS, 0, "/a") == b"keep"
    assert store.drain_events() == []


def test_xenstore_11_1_rm_deletes_the_whole_subtree(store):
    store.write(TOOLS, 0, "/a/b/c", b"1")
    store.write(TOOLS, 0, "/a/d", b"2")
    store.rm(TOOLS, 0, "/a")
    for path in ("/a", "/a/b", "/a/b/c", "/a/d"):
        assert errno_of(store.read, TOOLS, 0, path) == Errno.ENOENT
    assert "a" not in store.directory(TOOLS, 0, "/")


def test_xenstore_11_1_rm_of_a_missing_node_is_fine_if_its_parent_exists(store):
    store.rm(TOOLS, 0, "/local/domain/5/nothing")
    assert errno_of(store.rm, TOOLS, 0, "/nothing/below") == Errno.ENOENT


def test_xenstore_11_1_rm_of_the_root_is_einval(store):
    assert errno_of(store.rm, TOOLS, 0, "/") == Errno.EINVAL


def test_xenstore_11_1_read_of_a_missing_node_is_enoent(store):
    assert errno_of(store.read, TOOLS, 0, "/missing") == Errno.ENOENT
    assert errno_of(store.directory, TOOLS, 0, "/missing") == Errno.ENOENT


def test_xenstore_11_1_directory_gives_leaf_names_in_creation_order(store):
    for leaf in ("b", "a", "c"):
        store.write(TOOLS, 0, f"/d/{leaf}", b"")
    assert store.directory(TOOLS, 0, "/d") == ["b", "a", "c"]
    gen, children = store.directory_part(TOOLS, 0, "/d")
    assert children == ["b", "a", "c"] and gen > 0


def test_xenstore_11_1_a_tx_id_unknown_to_the_connection_is_enoent(store):
    assert errno_of(store.read, TOOLS, 7, "/local") == Errno.ENOENT
    tx = store.transaction_start(DOM0, 0)
    assert errno_of(store.read, TOOLS, tx, "/local") == Errno.ENOENT


@pytest.mark.parametrize("op, args", [("introduce_domain", (9, 0, 1)), ("release_domain", (6,)),
                                      ("resume", (6,)), ("set_target", (5, 6)),
                                      ("is_domain_introduced", (6,))])
def test_xenstore_11_1_privileged_requests_are_eacces_for_a_domu(store, op, args):
    assert errno_of(getattr(store, op), GUEST, 0, *args) == Errno.EACCES


def test_xenstore_11_1_get_domain_path_and_is_domain_introduced(store):
    assert store.get_domain_path(GUEST, 0, 12) == "/local/domain/12"
    assert store.is_domain_introduced(TOOLS, 0, 5)
    assert not store.is_domain_introduced(TOOLS, 0, 12)
    assert store.is_domain_introduced(TOOLS, 0, DOMID_SELF)


def test_xenstore_11_1_introduce_needs_an_event_channel(store):
    assert errno_of(store.introduce_domain, TOOLS, 0, 9, 0, 0) == Errno.EINVAL


# --- 11.4 Transactions ---------------------------------------------------------------------

def test_xenstore_11_4_a_transaction_reads_and_writes_its_snapshot(store):
    store.write(TOOLS, 0, "/a", b"old")
    tx = store.transaction_start(DOM0, 0)
    store.write(DOM0, tx, "/a", b"new")
    store.write(DOM0, tx, "/b/c", b"made")
    assert store.read(DOM0, tx, "/a") == b"new"
    assert store.read(TOOLS, 0, "/a") == b"old"
    assert errno_of(store.read, TOOLS, 0, "/b") == Errno.ENOENT
    store.transaction_end(DOM0, tx, True)
    assert store.read(TOOLS, 0, "/a") == b"new"
    assert store.read(TOOLS, 0, "/b/c") == b"made"


def test_xenstore_11_4_end_with_f_discards(store):
    tx = store.transaction_start(DOM0, 0)
    store.write(DOM0, tx, "/a", b"x")
    store.rm(DOM0, tx, "/local/domain/5")
    store.transaction_end(DOM0, tx, False)
    assert errno_of(store.read, TOOLS, 0, "/a") == Errno.ENOENT
    assert store.directory(TOOLS, 0, "/local/domain/5") == ["data"]


def test_xenstore_11_4_rm_and_recreate_inside_a_transaction(store):
    store.write(TOOLS, 0, "/a/b", b"1")
    tx = store.transaction_start(DOM0, 0)
    store.rm(DOM0, tx, "/a")
    assert errno_of(store.read, DOM0, tx, "/a/b") == Errno.ENOENT
    store.write(DOM0, tx, "/a/c", b"2")
    store.transaction_end(DOM0, tx, True)
    assert store.directory(TOOLS, 0, "/a") == ["c"]


@pytest.mark.parametrize("intervening", [
    lambda s: s.write(TOOLS, 0, "/a", b"other"),  # a node the transaction read changed
    lambda s: s.rm(TOOLS, 0, "/a"),  # ... was deleted
    lambda s: s.set_perms(TOOLS, 0, "/a", ["n0"]),  # ... had its permissions changed
    lambda s: s.write(TOOLS, 0, "/a/new", b""),  # ... got a new child
])
def test_xenstore_11_4_an_intervening_write_to_an_accessed_node_gives_eagain(store, intervening):
    store.write(TOOLS, 0, "/a", b"v")
    tx = store.transaction_start(DOM0, 0)
    store.directory(DOM0, tx, "/a")
    store.write(DOM0, tx, "/elsewhere", b"x")
    intervening(store)
    assert errno_of(store.transaction_end, DOM0, tx, True) == Errno.EAGAIN
    assert errno_of(store.read, TOOLS, 0, "/elsewhere") == Errno.ENOENT
    assert store.statistics().eagain == 1


def test_xenstore_11_4_creating_a_node_the_transaction_saw_missing_gives_eagain(store):
    tx = store.transaction_start(DOM0, 0)
    assert errno_of(store.read, DOM0, tx, "/local/domain/5/data/flag") == Errno.ENOENT
    store.write(TOOLS, 0, "/local/domain/5/data/flag", b"1")
    assert errno_of(store.transaction_end, DOM0, tx, True) == Errno.EAGAIN


def test_xenstored_transaction_c_access_node_a_write_before_the_first_access_does_not_conflict(
        store):
    """transaction.c compares a node's generation with the one seen at its *first access*
    (``access_node``), not at TRANSACTION_START."""
    store.write(TOOLS, 0, "/a", b"v1")
    tx = store.transaction_start(DOM0, 0)
    store.write(TOOLS, 0, "/a", b"v2")
    assert store.read(DOM0, tx, "/a") == b"v2"
    store.write(DOM0, tx, "/b", b"from v2")
    store.transaction_end(DOM0, tx, True)
    assert store.read(TOOLS, 0, "/b") == b"from v2"


def test_xenstored_transaction_c_access_node_a_second_read_returns_the_first_reads_value(store):
    """test-xenstore.c "ta err" (``test_ta3``): read in the transaction, write outside it, read
    again in the transaction and get the old value (``access_node`` keeps a private copy);
    the transaction's own write is what it reads next; the commit fails with EAGAIN."""
    store.write(TOOLS, 0, "/t/a", b"a")
    tx = store.transaction_start(TOOLS, 0)
    assert store.read(TOOLS, tx, "/t/a") == b"a"
    assert store.directory(TOOLS, tx, "/t") == ["a"]
    store.write(TOOLS, 0, "/t/a", b"b")
    store.write(TOOLS, 0, "/t/new", b"")
    assert store.read(TOOLS, tx, "/t/a") == b"a"
    assert store.directory(TOOLS, tx, "/t") == ["a"]
    store.write(TOOLS, tx, "/t/a", b"c")
    assert store.read(TOOLS, tx, "/t/a") == b"c"
    assert errno_of(store.transaction_end, TOOLS, tx, True) == Errno.EAGAIN
    assert store.read(TOOLS, 0, "/t/a") == b"b"


def test_xenstored_transaction_c_access_node_a_node_absent_at_first_access_stays_absent(store):
    """A read of a missing node records NO_GENERATION and no copy (``ta_node`` false), so
    the transaction keeps seeing it missing after another connection creates it."""
    tx = store.transaction_start(DOM0, 0)
    assert errno_of(store.read, DOM0, tx, "/late") == Errno.ENOENT
    store.write(TOOLS, 0, "/late", b"here")
    assert errno_of(store.read, DOM0, tx, "/late") == Errno.ENOENT
    assert errno_of(store.transaction_end, DOM0, tx, True) == Errno.EAGAIN


def test_xenstored_transaction_c_finalize_transaction_deleted_node_gives_eagain(store):
    """Example 3 of transaction.c: a node read in the transaction and deleted outside it."""
    store.write(TOOLS, 0, "/a", b"v")
    tx = store.transaction_start(DOM0, 0)
    store.read(DOM0, tx, "/a")
    store.rm(TOOLS, 0, "/a")
    assert store.read(DOM0, tx, "/a") == b"v"
    store.write(DOM0, tx, "/b", b"")
    assert errno_of(store.transaction_end, DOM0, tx, True) == Errno.EAGAIN


def test_xenstore_11_4_writes_to_nodes_not_accessed_do_not_conflict(store):
    store.write(TOOLS, 0, "/a", b"v")
    tx = store.transaction_start(DOM0, 0)
    store.write(DOM0, tx, "/local/domain/5/data/x", b"mine")
    store.write(TOOLS, 0, "/a", b"theirs")
    store.write(TOOLS, 0, "/local/domain/6/data/y", b"theirs")
    store.transaction_end(DOM0, tx, True)
    assert store.read(TOOLS, 0, "/local/domain/5/data/x") == b"mine"


def test_xenstore_11_4_the_tx_id_is_invalid_after_end(store):
    for commit in (True, False):
        tx = store.transaction_start(DOM0, 0)
        store.transaction_end(DOM0, tx, commit)
        assert errno_of(store.read, DOM0, tx, "/") == Errno.ENOENT
        assert errno_of(store.transaction_end, DOM0, tx, True) == Errno.ENOENT
    tx = store.transaction_start(DOM0, 0)
    store.read(DOM0, tx, "/local")
    store.write(TOOLS, 0, "/local", b"x")
    assert errno_of(store.transaction_end, DOM0, tx, True) == Errno.EAGAIN
    assert errno_of(store.read, DOM0, tx, "/local") == Errno.ENOENT


def test_xenstore_11_4_transactions_belong_to_their_connection(store):
    tx = store.transaction_start(DOM0, 0)
    assert errno_of(store.write, TOOLS, tx, "/a", b"") == Errno.ENOENT
    assert errno_of(store.transaction_end, TOOLS, tx, True) == Errno.ENOENT
    assert store.transaction_start(TOOLS, 0) == tx  # ids are per connection


def test_xenstore_11_4_ids_are_nonzero_distinct_and_do_not_nest(store):
    first = store.transaction_start(DOM0, 0)
    second = store.transaction_start(DOM0, 0)
    assert 0 not in (first, second) and first != second
    assert errno_of(store.transaction_start, DOM0, first) == Errno.EBUSY
    assert errno_of(store.transaction_end, DOM0, 0, True) == Errno.ENOENT


# --- 11.4 Watches --------------------------------------------------------------------------

def test_xenstore_11_4_a_watch_fires_once_on_registration(store):
    store.watch(TOOLS, 0, "/nothing/yet", "tok")
    assert store.drain_events() == [WatchEvent(TOOLS.conn_id, "/nothing/yet", "tok")]
    assert store.drain_events() == []


def test_xenstore_11_4_a_watch_fires_on_create_modify_delete_and_perms_at_or_below(store):
    store.watch(TOOLS, 0, "/w", "t")
    paths = []
    for change in (lambda: store.write(TOOLS, 0, "/w/a/b", b"1"),  # create (with parents)
                   lambda: store.write(TOOLS, 0, "/w/a/b", b"2"),  # modify
                   lambda: store.set_perms(TOOLS, 0, "/w/a", ["n0", "r5"]),  # permissions
                   lambda: store.rm(TOOLS, 0, "/w/a/b"),  # delete
                   lambda: store.write(TOOLS, 0, "/w", b"self")):  # the node itself
        store.drain_events()
        change()
        paths += [e.path for e in store.drain_events()]
    assert paths == ["/w/a/b", "/w/a/b", "/w/a", "/w/a/b", "/w"]


def test_xenstore_11_4_a_watch_ignores_siblings_and_parents(store):
    store.watch(TOOLS, 0, "/w/b", "t")
    store.drain_events()
    store.write(TOOLS, 0, "/w/bc", b"")  # a sibling with a common prefix
    store.write(TOOLS, 0, "/w", b"parent")
    store.write(TOOLS, 0, "/x/w/b", b"")
    assert store.drain_events() == []


def test_xenstore_11_4_watch_depth_limits_the_levels(store):
    store.watch(TOOLS, 0, "/w", "d0", 0)
    store.watch(TOOLS, 0, "/w", "d1", 1)
    store.watch(TOOLS, 0, "/", "root1", 1)
    store.drain_events()
    store.write(TOOLS, 0, "/w", b"")
    store.write(TOOLS, 0, "/w/a", b"")
    store.write(TOOLS, 0, "/w/a/b", b"")
    got = [(e.token, e.path) for e in store.drain_events()]
    assert got == [("d0", "/w"), ("d1", "/w"), ("root1", "/w"), ("d1", "/w/a")]
    assert errno_of(store.watch, TOOLS, 0, "/w", "neg", -1) == Errno.EINVAL


def test_xenstore_11_4_changes_in_a_transaction_fire_only_at_commit(store):
    store.watch(TOOLS, 0, "/w", "t")
    store.drain_events()
    tx = store.transaction_start(DOM0, 0)
    store.write(DOM0, tx, "/w/a", b"1")
    store.write(DOM0, tx, "/w/a", b"2")
    assert store.drain_events() == []
    store.transaction_end(DOM0, tx, True)
    assert store.drain_events() == [WatchEvent(TOOLS.conn_id, "/w/a", "t")]
    for outcome in ("abort", "eagain"):
        tx = store.transaction_start(DOM0, 0)
        store.write(DOM0, tx, "/w/b", b"")
        if outcome == "eagain":
            store.write(TOOLS, 0, "/w/b", b"")
            store.drain_events()
            assert errno_of(store.transaction_end, DOM0, tx, True) == Errno.EAGAIN
        else:
            store.transaction_end(DOM0, tx, False)
        assert store.drain_events() == []


def test_xenstore_11_4_recursive_removal_is_reported_with_the_watched_path(store):
    store.write(TOOLS, 0, "/a/b/c/d", b"")
    store.watch(TOOLS, 0, "/a/b/c", "deep")
    store.watch(TOOLS, 0, "/a", "top")
    store.watch(TOOLS, 0, "/a/b/c/missing", "never")
    store.drain_events()
    store.rm(TOOLS, 0, "/a/b")
    assert [(e.token, e.path) for e in store.drain_events()] == [("deep", "/a/b/c"),
                                                                   ("top", "/a/b")]


def test_xenstore_11_4_a_relative_watch_yields_relative_event_paths(store):
    store.watch(GUEST, 0, "data", "rel")
    store.watch(GUEST, 0, "/local/domain/5/data", "abs")
    store.write(GUEST, 0, "data/x", b"")
    assert [(e.token, e.path) for e in store.drain_events()] == [
        ("rel", "data"), ("abs", "/local/domain/5/data"),
        ("rel", "data/x"), ("abs", "/local/domain/5/data/x")]


def test_xenstore_11_4_watch_ignores_the_tx_id_and_refuses_duplicates(store):
    store.watch(TOOLS, 12345, "/w", "t")
    assert errno_of(store.watch, TOOLS, 0, "/w", "t") == Errno.EEXIST
    store.watch(TOOLS, 0, "/w", "other-token")
    store.watch(DOM0, 0, "/w", "t")  # another connection
    assert store.statistics().watches == 3


def test_xenstore_11_4_unwatch_stops_events_and_reset_drops_everything(store):
    store.watch(TOOLS, 0, "/w", "t")
    store.unwatch(TOOLS, 0, "/w", "t")
    assert errno_of(store.unwatch, TOOLS, 0, "/w", "t") == Errno.ENOENT
    store.drain_events()
    store.write(TOOLS, 0, "/w", b"")
    assert store.drain_events() == []
    store.watch(GUEST, 0, "data", "t")
    tx = store.transaction_start(GUEST, 0)
    store.reset_watches(GUEST, 0)
    assert errno_of(store.read, GUEST, tx, "data") == Errno.ENOENT
    store.drain_events()
    store.write(GUEST, 0, "data/x", b"")
    assert store.drain_events() == []


def test_xenstore_11_4_identical_pending_events_are_sent_once(store):
    store.watch(TOOLS, 0, "/w", "t")
    store.write(TOOLS, 0, "/w", b"1")  # same path and token as the registration event
    store.write(TOOLS, 0, "/w", b"2")
    assert store.drain_events() == [WatchEvent(TOOLS.conn_id, "/w", "t")]


def test_xenstore_11_4_introduce_fires_introduce_domain(store):
    store.watch(TOOLS, 0, "@introduceDomain", "plain")
    store.watch(TOOLS, 0, "@introduceDomain", "deep", 1)
    store.drain_events()
    store.introduce_domain(TOOLS, 0, 9, 0x1234, 3)
    assert [(e.token, e.path) for e in store.drain_events()] == [
        ("plain", "@introduceDomain"), ("deep", "@introduceDomain/9")]
    store.introduce_domain(TOOLS, 0, 9, 0x1234, 4)  # again: no new event
    assert store.drain_events() == []
    assert [(d.domid, d.gfn, d.evtchn) for d in store.domains()][-1] == (9, 0x1234, 4)


def test_xenstore_11_4_release_domain_fires_and_depth_1_names_the_domain(store):
    store.watch(TOOLS, 0, "@releaseDomain", "plain")
    store.watch(TOOLS, 0, "@releaseDomain", "deep", 1)
    store.watch(TOOLS, 0, "@releaseDomain/6", "exact")
    store.watch(TOOLS, 0, "@releaseDomain", "zero", 0)
    store.drain_events()
    store.release_domain(TOOLS, 0, 5)
    assert [(e.token, e.path) for e in store.drain_events()] == [
        ("plain", "@releaseDomain"), ("deep", "@releaseDomain/5")]
    store.domain_gone(6)
    assert [(e.token, e.path) for e in store.drain_events()] == [
        ("plain", "@releaseDomain"), ("deep", "@releaseDomain/6"), ("exact", "@releaseDomain/6")]
    assert errno_of(store.release_domain, TOOLS, 0, 0) == Errno.EINVAL
    assert errno_of(store.release_domain, TOOLS, 0, 5) == Errno.ENOENT


def test_xenstore_11_4_shutdown_fires_release_domain_once_until_resume(store):
    store.watch(TOOLS, 0, "@releaseDomain", "t")
    store.drain_events()
    store.domain_shutdown(5)
    store.domain_shutdown(5)
    assert len(store.drain_events()) == 1
    store.resume(TOOLS, 0, 5)
    store.domain_shutdown(5)
    assert len(store.drain_events()) == 1
    assert errno_of(store.resume, TOOLS, 0, 42) == Errno.ENOENT
    assert errno_of(store.resume, TOOLS, 0, 0) == Errno.EINVAL


def test_xenstore_11_4_domain_removal_removes_owned_nodes_watches_and_transactions(store):
    store.write(GUEST, 0, "data/mine/deep", b"")  # owned by domain 5
    store.watch(GUEST, 0, "data", "t")
    tx = store.transaction_start(GUEST, 0)
    store.watch(TOOLS, 0, "/local/domain/5", "dom0")
    store.drain_events()
    store.domain_gone(5)
    assert errno_of(store.read, TOOLS, 0, "/local/domain/5/data") == Errno.ENOENT
    assert store.directory(TOOLS, 0, "/local/domain/5") == []  # dom0's node stays
    assert all(e.conn_id == TOOLS.conn_id for e in store.drain_events())
    assert not store.is_domain_introduced(TOOLS, 0, 5)
    assert errno_of(store.read, GUEST, tx, "data") == Errno.ENOENT
    assert store.statistics().watches == 1


def test_xenstore_11_4_reintroduction_resets_the_domains_connection(store):
    store.watch(GUEST, 0, "data", "t")
    tx = store.transaction_start(GUEST, 0)
    store.introduce_domain(TOOLS, 0, 5, 0, 2)
    assert errno_of(store.read, GUEST, tx, "data") == Errno.ENOENT
    assert store.statistics().watches == 0


# --- 11.3 Default quotas ---------------------------------------------------------------------

def test_xenstore_11_3_default_quotas_are_xens():
    q = Quota()
    assert (q.nodes, q.watches, q.outstanding, q.transactions, q.transaction_nodes,
            q.node_permissions, q.node_size, q.path_max) == (1000, 128, 20, 10, 1024, 5, 2048, 2048)


def test_xenstore_11_3_node_quota_counts_owned_nodes():
    small = Store(Quota(nodes=4))
    small.mkdir(TOOLS, 0, "/local/domain/5")
    small.set_perms(TOOLS, 0, "/local/domain/5", ["n5"])  # 1 node owned by domain 5
    small.write(GUEST, 0, "a/b", b"")  # 3 owned
    assert errno_of(small.write, GUEST, 0, "c/d", b"") == Errno.ENOSPC  # would reach 5 >= 4
    assert errno_of(small.write, GUEST, 0, "c", b"") == Errno.ENOSPC  # would reach 4
    tx = small.transaction_start(GUEST, 0)
    small.rm(GUEST, tx, "a/b")
    small.write(GUEST, tx, "f", b"")  # net zero inside the transaction
    assert errno_of(small.write, GUEST, tx, "g", b"") == Errno.ENOSPC
    small.transaction_end(GUEST, tx, True)
    assert small.directory(GUEST, 0, "/local/domain/5") == ["a", "f"]
    small.write(TOOLS, 0, "/local/domain/5/c/d/e", b"")  # dom0 is not limited...
    assert small.get_perms(TOOLS, 0, "/local/domain/5/c/d/e") == ["n5"]  # ...but 5 owns them
    small.rm(GUEST, 0, "f")
    assert errno_of(small.write, GUEST, 0, "f", b"") == Errno.ENOSPC


def test_xenstore_11_3_watch_and_transaction_quotas_are_enospc():
    small = Store(Quota(watches=3, transactions=2))
    small.watch(GUEST, 0, "/a", "1")
    small.watch(GUEST, 0, "/a", "2")
    assert errno_of(small.watch, GUEST, 0, "/a", "3") == Errno.ENOSPC
    small.watch(TOOLS, 0, "/a", "3")
    small.transaction_start(GUEST, 0)
    assert errno_of(small.transaction_start, GUEST, 0) == Errno.ENOSPC
    small.transaction_start(DOM0, 0)


def test_xenstore_11_3_per_node_quotas(store):
    six = ["n5", "r1", "r2", "r3", "r4", "r6"]
    assert errno_of(store.set_perms, GUEST, 0, "data", six) == Errno.ENOSPC
    store.set_perms(GUEST, 0, "data", six[:5])
    big = bytes(2048 - 16 - 5 * 8)  # node_hdr + five permissions + value = 2048
    store.write(GUEST, 0, "data/big", big)
    assert errno_of(store.write, GUEST, 0, "data/big", big + b"x") == Errno.ENOSPC
    store.write(TOOLS, 0, "/local/domain/5/data/big", big * 2)


def test_xenstore_11_3_transaction_node_quota_fails_the_transaction():
    small = Store(Quota(transaction_nodes=3))
    small.mkdir(TOOLS, 0, "/local/domain/5")
    small.set_perms(TOOLS, 0, "/local/domain/5", ["n5"])
    tx = small.transaction_start(GUEST, 0)
    small.read(GUEST, tx, "/local/domain/5")
    small.write(GUEST, tx, "a", b"")
    assert errno_of(small.read, GUEST, tx, "b") == Errno.ENOENT  # the third node touched
    assert errno_of(small.read, GUEST, tx, "c") == Errno.ENOSPC
    assert errno_of(small.transaction_end, GUEST, tx, True) == Errno.ENOMEM


# --- statistics and persistence --------------------------------------------------------------

def test_xenstore_statistics_count_nodes_ops_and_eagain(store):
    before = store.statistics()
    store.write(TOOLS, 0, "/s/t", b"")
    with pytest.raises(XenError):
        store.read(TOOLS, 0, "/nope")
    after = store.statistics()
    assert after.nodes == before.nodes + 2
    assert after.ops["write"] == before.ops.get("write", 0) + 1
    assert after.ops["read"] == before.ops.get("read", 0) + 1
    assert after.domains == 2 and after.transactions == 0


def test_xenstore_save_restore_round_trips_through_msgpack(store):
    store.write(GUEST, 0, "data/x", b"\x00bin")
    store.watch(GUEST, 0, "data", "rel")
    store.set_target(TOOLS, 0, 6, 5)
    store.domain_shutdown(6)
    tx = store.transaction_start(GUEST, 0)
    store.drain_events()
    state = msgpack.unpackb(msgpack.packb(store.save()))
    again = Store.restore(state)
    assert msgpack.unpackb(msgpack.packb(again.save())) == state
    assert again.read(OTHER, 0, "/local/domain/5/data/x") == b"\x00bin"  # via SET_TARGET
    again.write(TOOLS, 0, "/local/domain/5/data/y", b"")
    assert again.drain_events() == [WatchEvent(GUEST.conn_id, "data/y", "rel")]
    assert errno_of(again.transaction_end, GUEST, tx, True) == Errno.EAGAIN
    assert again.transaction_start(GUEST, 0) != tx


def test_xenstore_11_4_a_doomed_transaction_still_answers_and_then_fails(store):
    """Nodes changed under a transaction can make its view inconsistent (C reads at first
    access too); its requests must still be answered, and its commit must be EAGAIN."""
    store.write(TOOLS, 0, "/a/b", b"")
    tx = store.transaction_start(DOM0, 0)
    store.write(DOM0, tx, "/a/x", b"")  # its copy of /a lists b and x
    store.write(DOM0, tx, "/q", b"")  # its copy of / lacks anything created later
    store.rm(TOOLS, 0, "/a/b")
    store.write(TOOLS, 0, "/n/m", b"")
    store.rm(DOM0, tx, "/a")  # walks a child list naming a node it cannot see
    store.rm(DOM0, tx, "/n")  # removes a node its parent copy does not list
    assert errno_of(store.transaction_end, DOM0, tx, True) == Errno.EAGAIN
    assert store.directory(TOOLS, 0, "/a") == []
    assert store.read(TOOLS, 0, "/n/m") == b""
