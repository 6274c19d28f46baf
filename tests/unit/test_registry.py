"""The cluster's name registry (actors.registry.state and its shell, without Ray): a name is
held by one reservation at a time (a host and the token of its record), only that reservation
confirms, releases or renames it, and a stale holder is replaced only by compare-and-swap."""

import msgpack
import pytest

from actors.registry.actor import RegistryShell
from actors.registry.state import NameRegistry
from protocols.errno import Errno, XenError


def test_registry_a_name_reserved_by_one_host_is_refused_to_another():
    reg = NameRegistry()
    assert reg.reserve("web", "h1", "a") is None
    assert reg.reserve("web", "h2", "b") == {"host": "h1", "domid": None, "token": "a"}
    assert reg.lookup("web") == {"host": "h1", "domid": None, "token": "a"}


def test_registry_reserve_is_idempotent_for_its_token_only():
    """Ray may retry a call: the same reservation asking again gets the name; the same host
    with another record's token (a re-create after a destroy) is shown the holder."""
    reg = NameRegistry()
    assert reg.reserve("web", "h1", "a") is None and reg.reserve("web", "h1", "a") is None
    assert reg.reserve("web", "h1", "b") == {"host": "h1", "domid": None, "token": "a"}


def test_registry_a_late_release_cannot_free_a_newer_reservation():
    """The race of a destroy's late ReleaseName with a re-create of the name on that host:
    the re-create takes the stale holder over, and the old token's release changes nothing."""
    reg = NameRegistry()
    reg.reserve("web", "h1", "old")
    reg.confirm("web", "h1", "old", 3)
    stale = reg.reserve("web", "h1", "new")
    assert reg.take_over("web", stale, "h1", "new") is True
    assert reg.release("web", "h1", "old") is False
    with pytest.raises(XenError):
        reg.confirm("web", "h1", "old", 3)
    reg.confirm("web", "h1", "new", 5)
    assert reg.lookup("web") == {"host": "h1", "domid": 5, "token": "new"}


def test_registry_confirm_release_and_rename_belong_to_the_holder():
    reg = NameRegistry()
    reg.reserve("web", "h1", "a")
    with pytest.raises(XenError) as e:
        reg.confirm("web", "h2", "a", 3)
    assert e.value.errno == Errno.ENOENT
    reg.confirm("web", "h1", "a", 3)
    assert reg.release("web", "h2", "a") is False and reg.lookup("web")["domid"] == 3
    with pytest.raises(XenError):
        reg.rename("web", "web-3", "h1", "b")
    assert reg.rename("web", "web-3", "h1", "a") is None
    assert reg.rename("web", "web-3", "h1", "a") is None, "a retried rename"
    assert reg.lookup("web") is None
    assert reg.lookup("web-3") == {"host": "h1", "domid": 3, "token": "a"}
    assert reg.release("web-3", "h1", "a") is True and reg.lookup("web-3") is None


def test_registry_rename_onto_a_taken_name_changes_nothing():
    reg = NameRegistry()
    reg.reserve("a", "h1", "x")
    reg.reserve("b", "h2", "y")
    assert reg.rename("a", "b", "h1", "x") == {"host": "h2", "domid": None, "token": "y"}
    assert reg.lookup("a")["host"] == "h1" and reg.lookup("b")["host"] == "h2"


def test_registry_take_over_only_from_the_holder_that_was_checked():
    reg = NameRegistry()
    reg.reserve("web", "h1", "a")
    stale = reg.lookup("web")
    assert reg.take_over("web", stale, "h2", "b") is True
    assert reg.take_over("web", stale, "h2", "b") is True, "a retried take-over"
    assert reg.take_over("web", stale, "h3", "c") is False, "h2 took it since h3 checked"
    assert reg.lookup("web") == {"host": "h2", "domid": None, "token": "b"}


def test_registry_take_over_compares_the_whole_holder():
    """A holder that changed since it was checked (here: confirmed) is not taken over."""
    reg = NameRegistry()
    reg.reserve("web", "h1", "a")
    stale = reg.lookup("web")
    reg.confirm("web", "h1", "a", 4)
    assert reg.take_over("web", stale, "h2", "b") is False


@pytest.mark.parametrize("name", ["", "a/b", "nul\0", "Domain-0"])
def test_registry_refuses_names_xl_would_not_take(name):
    with pytest.raises(XenError) as e:
        NameRegistry().reserve(name, "h1", "a")
    assert e.value.errno in (Errno.EINVAL, Errno.EEXIST)


def test_registry_shell_writes_every_change_through_to_its_store():
    """A restarted registry (Ray re-runs its constructor over the GCS store) has every name."""
    store: dict[str, bytes] = {}
    shell = RegistryShell(store)
    assert shell.deliver("reserve", "web", "h1", "a") is None
    shell.deliver("confirm", "web", "h1", "a", 3)
    shell.deliver("reserve", "db", "h2", "b")
    shell.deliver("rename", "web", "web-3", "h1", "a")
    shell.deliver("release", "db", "h2", "b")
    assert {k: msgpack.unpackb(v) for k, v in store.items()} == \
        {"web-3": {"host": "h1", "domid": 3, "token": "a"}}
    again = RegistryShell(store)
    assert again.deliver("lookup", "web-3") == {"host": "h1", "domid": 3, "token": "a"}
    assert again.deliver("reserve", "web-3", "h2", "c") == {"host": "h1", "domid": 3,
                                                             "token": "a"}


def test_registry_a_host_lost_frees_its_names_only_and_is_remembered_as_dead():
    """A fenced host's domains are lost: their names are free again (a re-create elsewhere
    may take them); the other hosts' names stay; every client's list learns it is dead."""
    store: dict[str, bytes] = {}
    shell = RegistryShell(store)
    shell.on_reserve("a", "h1", "t1")
    shell.on_confirm("a", "h1", "t1", 3)
    shell.on_reserve("b", "h2", "t2")
    shell.on_reserve("c", "h1", "t3")
    assert shell.on_host_lost("h1", {"host": "h1", "why": "test"}) == ["a", "c"]
    assert shell.on_lookup("a") is None and shell.on_lookup("b") is not None
    assert set(store) == {"b"}, "the freed names are gone from the durable store too"
    assert shell.on_dead_hosts() == {"h1": {"host": "h1", "why": "test", "lost": ["a", "c"]}}
    assert shell.on_reserve("a", "h2", "t4") is None
