"""The cluster's name registry (actors.registry.state), without Ray: a name is held by one host
at a time, and a stale holder is replaced only by compare-and-swap."""

import pytest

from actors.registry.state import NameRegistry
from protocols.errno import Errno, XenError


def test_registry_a_name_reserved_by_one_host_is_refused_to_another():
    reg = NameRegistry()
    assert reg.reserve("web", "h1") is None
    assert reg.reserve("web", "h2") == {"host": "h1", "domid": None}
    assert reg.lookup("web") == {"host": "h1", "domid": None}


def test_registry_reserve_is_idempotent_for_its_holder():
    """Ray may retry a call: the holder asking again gets the name, nobody else does."""
    reg = NameRegistry()
    assert reg.reserve("web", "h1") is None and reg.reserve("web", "h1") is None
    assert reg.names() == {"web": {"host": "h1", "domid": None}}


def test_registry_confirm_release_and_rename_belong_to_the_holder():
    reg = NameRegistry()
    reg.reserve("web", "h1")
    with pytest.raises(XenError) as e:
        reg.confirm("web", "h2", 3)
    assert e.value.errno == Errno.ENOENT
    reg.confirm("web", "h1", 3)
    assert reg.release("web", "h2") is False and reg.lookup("web")["domid"] == 3
    assert reg.rename("web", "web-3", "h1") is None
    assert reg.names() == {"web-3": {"host": "h1", "domid": 3}}
    assert reg.release("web-3", "h1") is True and reg.names() == {}


def test_registry_rename_onto_a_taken_name_changes_nothing():
    reg = NameRegistry()
    reg.reserve("a", "h1")
    reg.reserve("b", "h2")
    assert reg.rename("a", "b", "h1") == {"host": "h2", "domid": None}
    assert set(reg.names()) == {"a", "b"}


def test_registry_take_over_only_from_the_holder_that_was_checked():
    reg = NameRegistry()
    reg.reserve("web", "h1")
    stale = reg.lookup("web")
    assert reg.take_over("web", stale, "h2") is True
    assert reg.take_over("web", stale, "h3") is False, "h2 took it since h3 checked"
    assert reg.lookup("web")["host"] == "h2"


@pytest.mark.parametrize("name", ["", "a/b", "nul\0", "Domain-0"])
def test_registry_refuses_names_xl_would_not_take(name):
    with pytest.raises(XenError) as e:
        NameRegistry().reserve(name, "h1")
    assert e.value.errno in (Errno.EINVAL, Errno.EEXIST)


def test_registry_names_by_host_and_restored_entries():
    reg = NameRegistry({"x": {"host": "h2", "domid": 4}})
    reg.reserve("y", "h1")
    assert reg.names("h2") == {"x": {"host": "h2", "domid": 4}}
    assert set(reg.names()) == {"x", "y"}
