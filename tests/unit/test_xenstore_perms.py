"""Xenstore permissions: reference 11.3 (the codec, perm_for_conn, ownership, information
hiding, SET_TARGET, special watches) and the 11.5 layout libxl builds with them."""

import pytest

from protocols.errno import Errno, XenError
from protocols.xenstore import (DOMID_ANY, XS_PERM_NONE, XS_PERM_OWNER, XS_PERM_READ, XS_PERM_WRITE,
                                Conn, Perm, Store, parse_perms, perm_for_conn)

TOOLS = Conn(2, 0, privileged=True, socket=True)
GUEST = Conn(5, 5)
OTHER = Conn(6, 6)
STUBDOM = Conn(7, 7)
ALL = XS_PERM_READ | XS_PERM_WRITE | XS_PERM_OWNER


def errno_of(fn, *args) -> Errno:
    with pytest.raises(XenError) as err:
        fn(*args)
    return err.value.errno


def libxl_store() -> Store:
    """The permissions libxl_create.c gives domain 5 (reference 11.5)."""
    s = Store()
    home = "/local/domain/5"
    s.write(TOOLS, 0, f"{home}/name", b"guest")
    s.set_perms(TOOLS, 0, home, ["n0", "r5"])
    s.set_perms(TOOLS, 0, f"{home}/name", ["n0", "r5"])
    for node in ("control", "device", "memory"):
        s.mkdir(TOOLS, 0, f"{home}/{node}")
        s.set_perms(TOOLS, 0, f"{home}/{node}", ["n0", "r5"])
    for node in ("control/shutdown", "data"):
        s.mkdir(TOOLS, 0, f"{home}/{node}")
        s.set_perms(TOOLS, 0, f"{home}/{node}", ["n5"])
    s.mkdir(TOOLS, 0, "/vm/uuid-5")
    s.set_perms(TOOLS, 0, "/vm/uuid-5", ["n0", "r5"])
    s.write(TOOLS, 0, "/vm/uuid-5/name", b"guest")  # inherits n0,r5 as in libxl_create.c
    s.mkdir(TOOLS, 0, "/libxl/5")
    s.set_perms(TOOLS, 0, "/libxl", ["n0"])
    s.set_perms(TOOLS, 0, "/libxl/5", ["n0"])
    s.mkdir(TOOLS, 0, "/local/domain/6")
    s.set_perms(TOOLS, 0, "/local/domain/6", ["n0", "r6"])
    for domid in (5, 6, 7):
        s.introduce_domain(TOOLS, 0, domid, 0, 1)
    s.drain_events()
    return s


# --- the codec ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, perm", [("n0", Perm(0, XS_PERM_NONE)), ("r5", Perm(5, XS_PERM_READ)),
                                        ("w3", Perm(3, XS_PERM_WRITE)),
                                        ("b7", Perm(7, XS_PERM_READ | XS_PERM_WRITE)),
                                        ("r32757", Perm(DOMID_ANY, XS_PERM_READ))])
def test_xenstore_11_3_perm_strings_round_trip(text, perm):
    assert Perm.parse(text) == perm
    assert str(perm) == text


@pytest.mark.parametrize("text", ["", "r", "x5", "R5", "5r", "r-1", "r+1", "r0x5", "r 5",
                                  "r5 ", "r65536", "r\u0665", "rw5", "r05", "r010"])
def test_xenstore_11_3_malformed_perm_strings_are_einval(text):
    with pytest.raises(XenError) as err:
        Perm.parse(text)
    assert err.value.errno == Errno.EINVAL


def test_xenstore_11_3_set_perms_needs_valid_entries():
    s = libxl_store()
    assert errno_of(s.set_perms, TOOLS, 0, "/vm", []) == Errno.EINVAL
    assert errno_of(s.set_perms, TOOLS, 0, "/vm", ["n0", "q5"]) == Errno.EINVAL
    assert errno_of(parse_perms, []) == Errno.EINVAL


# --- perm_for_conn -------------------------------------------------------------------------------

def test_xenstore_11_3_privileged_or_owner_gets_everything():
    perms = (Perm(5, XS_PERM_NONE),)
    assert perm_for_conn(TOOLS, perms) == ALL
    assert perm_for_conn(GUEST, perms) == ALL
    assert perm_for_conn(OTHER, perms) == XS_PERM_NONE


def test_xenstore_11_3_first_matching_entry_wins_else_entry_0():
    perms = parse_perms(["r0", "w6", "b6", "n7"])
    assert perm_for_conn(OTHER, perms) == XS_PERM_WRITE  # the first entry for 6
    assert perm_for_conn(STUBDOM, perms) == XS_PERM_NONE
    assert perm_for_conn(GUEST, perms) == XS_PERM_READ  # entry 0's default


def test_xenstore_11_3_domid_any_matches_every_domain():
    assert perm_for_conn(GUEST, parse_perms(["n0", "r32757", "w5"])) == XS_PERM_READ
    assert perm_for_conn(GUEST, parse_perms(["n32757"])) == ALL


def test_xenstore_11_3_set_target_matches_the_target_domid():
    perms = parse_perms(["n0", "r5"])
    assert perm_for_conn(STUBDOM, perms) == XS_PERM_NONE
    assert perm_for_conn(STUBDOM, perms, target=5) == XS_PERM_READ
    assert perm_for_conn(STUBDOM, parse_perms(["n5"]), target=5) == ALL


# --- ownership ---------------------------------------------------------------------------------

def test_xenstored_core_c_setup_structure_root_is_n0_so_a_domu_sees_nothing_at_the_top():
    """core.c ``setup_structure``: ``manual_node("/", "tool")`` gives ``/`` only
    ``[n<priv_domid>]``; a missing top-level node is hidden by ``errno_from_parents``."""
    s = libxl_store()
    assert s.get_perms(TOOLS, 0, "/") == ["n0"]
    assert s.get_perms(TOOLS, 0, "/tool/xenstored") == ["n0"]
    for op in (s.read, s.directory, s.get_perms):
        assert errno_of(op, GUEST, 0, "/") == Errno.EACCES
        assert errno_of(op, GUEST, 0, "/foo") == Errno.EACCES
    assert errno_of(s.read, GUEST, 0, "/local/domain/5/missing") == Errno.ENOENT  # its home
    assert errno_of(s.write, GUEST, 0, "/x", b"") == Errno.EACCES
    assert errno_of(s.read, GUEST, 0, "/tool") == Errno.EACCES
    assert errno_of(s.read, TOOLS, 0, "/foo") == Errno.ENOENT


def test_xenstored_core_c_setup_structure_release_domain_is_readable_by_domid_any():
    """core.c ``setup_structure`` (Xen 4.22, 258263a4fb): ``@releaseDomain`` is
    ``[n<priv_domid>, r<DOMID_ANY>]``, ``@introduceDomain`` stays ``[n<priv_domid>]``;
    watch.c ``watch_permitted`` then lets any domain's @releaseDomain watch fire, and
    ``perm_for_conn`` matches DOMID_ANY (0x7FF5, xen.h) for every domain."""
    s = libxl_store()
    assert DOMID_ANY == 0x7FF5
    assert s.get_perms(TOOLS, 0, "@releaseDomain") == ["n0", f"r{DOMID_ANY}"]
    assert s.get_perms(TOOLS, 0, "@introduceDomain") == ["n0"]
    for conn in (GUEST, OTHER):
        s.watch(conn, 0, "@releaseDomain", "rel")
        s.watch(conn, 0, "@releaseDomain", "deep", 1)
        s.watch(conn, 0, "@introduceDomain", "intro")
    s.drain_events()
    s.domain_shutdown(7)
    assert sorted((e.conn_id, e.path, e.token) for e in s.drain_events()) == [
        (GUEST.conn_id, "@releaseDomain", "rel"), (GUEST.conn_id, "@releaseDomain/7", "deep"),
        (OTHER.conn_id, "@releaseDomain", "rel"), (OTHER.conn_id, "@releaseDomain/7", "deep")]
    s.introduce_domain(TOOLS, 0, 9, 0, 1)
    assert s.drain_events() == []


def test_xenstore_11_3_new_nodes_copy_the_parents_perms_and_unprivileged_creators_own_them():
    s = libxl_store()
    s.set_perms(TOOLS, 0, "/local/domain/5/data", ["n5", "r6", "w7"])
    s.write(GUEST, 0, "data/a/b", b"")
    assert s.get_perms(TOOLS, 0, "/local/domain/5/data/a") == ["n5", "r6", "w7"]
    s.set_perms(TOOLS, 0, "/local/domain/5/data", ["b5", "r6"])
    s.write(TOOLS, 0, "/local/domain/5/data/t", b"")  # privileged: the owner stays
    assert s.get_perms(TOOLS, 0, "/local/domain/5/data/t") == ["b5", "r6"]
    s.set_perms(TOOLS, 0, "/local/domain/5/data", ["n0", "b5"])
    s.write(GUEST, 0, "data/u", b"")  # unprivileged: the creator becomes the owner
    assert s.get_perms(TOOLS, 0, "/local/domain/5/data/u") == ["n5", "b5"]


def test_xenstore_11_3_set_perms_needs_write_and_owner_rights():
    s = libxl_store()
    s.set_perms(TOOLS, 0, "/local/domain/5/data", ["n0", "b5"])  # 5 may write, dom0 owns
    assert errno_of(s.set_perms, GUEST, 0, "data", ["n0", "b5", "r6"]) == Errno.EACCES
    assert errno_of(s.set_perms, GUEST, 0, "name", ["n0", "b5"]) == Errno.EACCES
    s.set_perms(GUEST, 0, "control/shutdown", ["n5", "r6"])
    assert s.get_perms(OTHER, 0, "/local/domain/5/control/shutdown") == ["n5", "r6"]


def test_xenstore_11_3_an_unprivileged_domain_may_not_change_the_owner():
    s = libxl_store()
    assert errno_of(s.set_perms, GUEST, 0, "control/shutdown", ["n6"]) == Errno.EPERM
    s.set_perms(TOOLS, 0, "/local/domain/5/control/shutdown", ["n6"])
    assert s.get_perms(TOOLS, 0, "/local/domain/5/control/shutdown") == ["n6"]


# --- information hiding ------------------------------------------------------------------------

def test_xenstore_11_3_denied_lookups_say_eacces_not_enoent():
    s = libxl_store()
    # A readable parent may reveal that a child is missing...
    assert errno_of(s.read, GUEST, 0, "missing") == Errno.ENOENT
    # ...an unreadable one may not, and an existing node is hidden the same way.
    assert errno_of(s.read, GUEST, 0, "/local/domain/6/missing") == Errno.EACCES
    assert errno_of(s.read, GUEST, 0, "/libxl/5/missing/deeper") == Errno.EACCES
    assert errno_of(s.read, GUEST, 0, "/libxl/5") == Errno.EACCES
    assert errno_of(s.directory, GUEST, 0, "/local/domain/6") == Errno.EACCES
    # A write is judged by the write right of the nearest existing ancestor.
    assert errno_of(s.write, GUEST, 0, "memory/new", b"") == Errno.EACCES
    assert errno_of(s.rm, GUEST, 0, "memory/new") == Errno.EACCES
    s.rm(GUEST, 0, "data/never-was")  # the parent is the guest's: fine


def test_xenstore_11_3_watches_fire_only_for_nodes_the_watcher_may_read():
    s = libxl_store()
    s.watch(GUEST, 0, "/libxl", "t")
    s.watch(OTHER, 0, "/local/domain/5", "t")
    s.drain_events()
    s.write(TOOLS, 0, "/libxl/5/dm-version", b"qemu")
    s.write(TOOLS, 0, "/local/domain/5/name", b"renamed")
    assert s.drain_events() == []
    s.set_perms(TOOLS, 0, "/local/domain/5/name", ["n0", "r6"])  # 6 may read it now
    assert [e.conn_id for e in s.drain_events()] == [OTHER.conn_id]
    s.set_perms(TOOLS, 0, "/local/domain/5/name", ["n0"])  # 6 could read it before
    assert [e.conn_id for e in s.drain_events()] == [OTHER.conn_id]
    s.write(TOOLS, 0, "/local/domain/5/name", b"hidden again")
    assert s.drain_events() == []


def test_xenstore_11_3_set_target_grants_the_targets_access():
    s = libxl_store()
    assert errno_of(s.read, STUBDOM, 0, "/local/domain/5/name") == Errno.EACCES
    s.set_target(TOOLS, 0, 7, 5)
    assert s.read(STUBDOM, 0, "/local/domain/5/name") == b"guest"
    s.write(STUBDOM, 0, "/local/domain/5/data/from-dm", b"")
    assert errno_of(s.set_target, TOOLS, 0, 7, 42) == Errno.ENOENT


def test_xenstore_11_3_special_watches_need_privilege_or_set_perms():
    s = libxl_store()
    for conn in (GUEST, OTHER, TOOLS):
        s.watch(conn, 0, "@introduceDomain", "t")
    s.drain_events()
    s.introduce_domain(TOOLS, 0, 8, 0, 1)
    assert [e.conn_id for e in s.drain_events()] == [TOOLS.conn_id]
    assert errno_of(s.set_perms, GUEST, 0, "@introduceDomain", ["n0", "r5"]) == Errno.EACCES
    s.set_perms(TOOLS, 0, "@introduceDomain", ["n0", "r5"])
    assert [e.conn_id for e in s.drain_events()] == [GUEST.conn_id, TOOLS.conn_id]
    s.introduce_domain(TOOLS, 0, 9, 0, 1)
    assert [e.conn_id for e in s.drain_events()] == [GUEST.conn_id, TOOLS.conn_id]
    assert s.get_perms(GUEST, 0, "@introduceDomain") == ["n0", "r5"]
    s.set_perms(TOOLS, 0, "@releaseDomain", ["n0"])  # as before Xen 4.22
    s.watch(GUEST, 0, "@releaseDomain", "t")
    s.drain_events()
    s.domain_gone(9)
    assert s.drain_events() == []


# --- 11.5 ----------------------------------------------------------------------------------------

def test_xenstore_11_5_guest_writes_only_its_w_nodes():
    s = libxl_store()
    assert s.read(GUEST, 0, "name") == b"guest"
    assert s.read(GUEST, 0, "/vm/uuid-5/name") == b"guest"
    s.write(GUEST, 0, "control/shutdown", b"")  # the guest's ack
    s.write(GUEST, 0, "data/counter", b"1")
    for node in ("name", "memory/target", "control/feature-x", "device/vbd"):
        assert errno_of(s.write, GUEST, 0, node, b"x") == Errno.EACCES
    assert errno_of(s.rm, GUEST, 0, "/local/domain/5") == Errno.EACCES
    assert errno_of(s.read, OTHER, 0, "/local/domain/5/data/counter") == Errno.EACCES
