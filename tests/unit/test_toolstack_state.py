"""The toolstack's pure core (actors.toolstack.state), driven without Ray: records and names,
the create pipeline's order and its undo (libxl_create.c domcreate error paths), and the
on_* policy (reference 12.3, xl_vmcontrol.c handle_domain_death)."""

import itertools

import pytest

from actors.toolstack.effects import (ConfirmName, Create, DestroyDomain, KillVcpus, Note, Rebuild,
                                      ReleaseName, ReleaseXenstored, RenameDomain)
from actors.toolstack.state import Phase, Step, Toolstack, state_string
from protocols.errno import Errno, XenError
from protocols.hypercall import DomInfoFlag, ShutdownReason, dominf_flags
from protocols.libxl_types import Action, DomainConfig


def cfg(name="d", **kw) -> DomainConfig:
    return DomainConfig(name=name, **kw)


def toolstack() -> Toolstack:
    """A core whose records get tokens t1, t2, ... in the order they are made."""
    counter = itertools.count(1)
    return Toolstack("h1", new_token=lambda: f"t{next(counter)}")


EP = "h1/vm-0a1b2c3d"  # the process taken for the domain at INTRODUCE


def learnt(step: Step, domid: int) -> dict:
    """What the shell learns at ``step``: the domid, the endpoint of the process taken."""
    return {Step.CREATEDOMAIN: {"domid": domid}, Step.INTRODUCE: {"endpoint": EP}}.get(step, {})


def built(ts: Toolstack, name="d", domid=5, **kw):
    """A record taken through every step, as the shell does."""
    rec = ts.begin_create(name, cfg(name, **kw))
    for step in ts.pending(rec):
        ts.step_done(rec, step, **learnt(step, domid))
    ts.finish(rec)
    ts.running(rec)
    return rec


def shutdown_flags(reason: ShutdownReason) -> int:
    return dominf_flags(DomInfoFlag.shutdown | DomInfoFlag.paused, int(reason))


def effects_only(effects):
    return [e for e in effects if not isinstance(e, Note)]


# -- records and names ---------------------------------------------------------------------

def test_libxl_create_a_name_is_taken_in_the_step_that_checks_it():
    ts = toolstack()
    ts.begin_create("web", cfg("web"))
    with pytest.raises(XenError) as e:
        ts.begin_create("web", cfg("web"))
    assert e.value.errno == Errno.EEXIST and "already exists on h1" in str(e.value)


def test_libxl_create_each_record_reserves_with_a_token_of_its_own():
    """A re-create of a destroyed name is a new record: its reservation is told apart from
    the old one's, whose late release must not free the name (actors.registry.state)."""
    ts = toolstack()
    built(ts, domid=4)
    assert ts.holds("t1") and not ts.holds("t2")
    [release] = [e for e in ts.destroy("d") if isinstance(e, ReleaseName)]
    assert release == ReleaseName("d", "t1") and not ts.holds("t1")
    again = ts.begin_create("d", cfg())
    assert again.token == "t2" and ts.holds("t2")


def test_libxl_create_runs_its_steps_in_libxls_order():
    ts = toolstack()
    rec = ts.begin_create("d", cfg())
    assert [s.name for s in ts.pending(rec)] == ["RESERVE", "CREATEDOMAIN", "MEMORY",
                                                 "BOOT_PAGES", "XENSTORE", "INTRODUCE", "VCPUS",
                                                 "BACKENDS", "UNPAUSE", "INIT"]
    ts.step_done(rec, Step.RESERVE)
    ts.step_done(rec, Step.CREATEDOMAIN, domid=7, secret="s")
    assert (rec.domid, rec.secret) == (7, "s") and ts.pending(rec)[0] is Step.MEMORY


def test_libxl_create_finish_confirms_the_name_with_its_domid():
    ts = toolstack()
    rec = ts.begin_create("d", cfg())
    for step in ts.pending(rec):
        ts.step_done(rec, step, **learnt(step, 9))
    assert effects_only(ts.finish(rec)) == [ConfirmName("d", 9, "t1")]
    assert rec.phase is Phase.BUILDING, "until the confirm is carried out"
    ts.running(rec)
    assert rec.phase is Phase.RUNNING and ts.names() == {"d": 9}


# -- a failed create leaves nothing behind ---------------------------------------------------

@pytest.mark.parametrize("failed_at, undo", [
    (Step.RESERVE, []),
    (Step.CREATEDOMAIN, [ReleaseName("d", "t1")]),
    (Step.MEMORY, [DestroyDomain(5), ReleaseName("d", "t1")]),
    (Step.XENSTORE, [DestroyDomain(5), ReleaseName("d", "t1")]),
    (Step.INTRODUCE, [DestroyDomain(5), ReleaseName("d", "t1")]),
    (Step.VCPUS, [DestroyDomain(5), ReleaseXenstored(5), KillVcpus(5, EP), ReleaseName("d", "t1")]),
    (Step.BACKENDS, [DestroyDomain(5), ReleaseXenstored(5), KillVcpus(5, EP), ReleaseName("d", "t1")]),
    (Step.INIT, [DestroyDomain(5), ReleaseXenstored(5), KillVcpus(5, EP), ReleaseName("d", "t1")]),
])
def test_libxl_domcreate_error_path_undoes_every_step_done(failed_at, undo):
    """The hypervisor's domain goes first, so its vCPUs' process exiting is not a crash."""
    ts = toolstack()
    rec = ts.begin_create("d", cfg())
    for step in Step:
        if step is failed_at:
            break
        ts.step_done(rec, step, **learnt(step, 5))
    assert ts.abort(rec) == undo
    assert ts.records == {}, "the record goes with the failed create"
    ts.begin_create("d", cfg())  # and the name may be tried again


# -- destroy ----------------------------------------------------------------------------------

def test_xl_destroy_tears_everything_down_and_gives_the_name_back():
    ts = toolstack()
    built(ts, domid=4)
    assert effects_only(ts.destroy("d")) == [DestroyDomain(4), ReleaseXenstored(4),
                                             KillVcpus(4, EP), ReleaseName("d", "t1")]
    with pytest.raises(XenError) as e:
        ts.destroy("d")
    assert e.value.errno == Errno.ESRCH


def test_xl_destroy_of_a_domain_still_being_built_is_busy():
    ts = toolstack()
    ts.begin_create("d", cfg())
    with pytest.raises(XenError) as e:
        ts.destroy("d")
    assert e.value.errno == Errno.EBUSY


# -- on_* policy --------------------------------------------------------------------------------

def test_xl_handle_domain_death_destroy_on_poweroff_by_default():
    ts = toolstack()
    built(ts, domid=3)
    [got] = ts.shutdowns({3: shutdown_flags(ShutdownReason.poweroff)})
    assert effects_only(got) == [DestroyDomain(3), ReleaseXenstored(3), KillVcpus(3, EP),
                                 ReleaseName("d", "t1")]
    assert got[0] == Note("domain shut down", {"domid": 3, "name": "d", "reason": "poweroff",
                                               "action": "destroy"})


def test_xl_handle_domain_death_restart_keeps_the_name_and_rebuilds():
    ts = toolstack()
    rec = built(ts, domid=3)
    [got] = ts.shutdowns({3: shutdown_flags(ShutdownReason.reboot)})
    got = effects_only(got)
    assert got == [DestroyDomain(3), ReleaseXenstored(3), KillVcpus(3, EP), Rebuild("d")]
    assert ReleaseName("d", "t1") not in got, "a restart keeps its name reserved"
    assert rec.phase is Phase.BUILDING and rec.done == [Step.RESERVE] and rec.domid is None
    with pytest.raises(XenError):
        ts.begin_create("d", cfg())  # nobody can take the name meanwhile


def test_xl_handle_domain_death_acts_once_per_shutdown():
    ts = toolstack()
    built(ts, domid=3, on_crash=Action.PRESERVE)
    flags = {3: shutdown_flags(ShutdownReason.crash)}
    [got] = ts.shutdowns(flags)
    assert effects_only(got) == []
    assert ts.shutdowns(flags) == [], "@releaseDomain fires again: nothing new to do"
    assert ts.records["d"].phase is Phase.SHUTDOWN


def test_xl_handle_domain_death_suspend_is_not_an_action():
    ts = toolstack()
    built(ts, domid=3)
    got = ts.shutdowns({3: shutdown_flags(ShutdownReason.suspend)})
    assert got == [[Note("domain has suspended", {"domid": 3, "name": "d"})]]


def test_xl_handle_domain_death_rename_restart_renames_then_creates_anew():
    ts = toolstack()
    built(ts, domid=8, on_crash=Action.RENAME_RESTART)
    [got] = ts.shutdowns({8: shutdown_flags(ShutdownReason.crash)})
    assert effects_only(got) == [RenameDomain(8, "d", "d-8", "t1")]
    assert list(ts.records) == ["d-8"]
    follow = effects_only(ts.renamed("d", "d-8", ok=True))
    assert follow == [Create("d", ts.records["d-8"].config)]


def test_xl_handle_domain_death_rename_restart_with_the_new_name_taken_preserves():
    ts = toolstack()
    built(ts, domid=8, on_crash=Action.RENAME_RESTART)
    ts.shutdowns({8: shutdown_flags(ShutdownReason.crash)})
    assert effects_only(ts.renamed("d", "d-8", ok=False)) == []
    assert list(ts.records) == ["d"] and ts.records["d"].phase is Phase.SHUTDOWN


def test_xl_handle_domain_death_gives_each_domain_its_own_group():
    """One @releaseDomain covers every domain that shut down; the shell carries out each
    domain's group apart, so one that fails (a restart) leaves the others' teardown."""
    ts = toolstack()
    built(ts, "a", domid=2, on_reboot=Action.RESTART)
    built(ts, "b", domid=3)
    groups = ts.shutdowns({2: shutdown_flags(ShutdownReason.reboot),
                           3: shutdown_flags(ShutdownReason.poweroff)})
    assert [effects_only(g) for g in groups] == [
        [DestroyDomain(2), ReleaseXenstored(2), KillVcpus(2, EP), Rebuild("a")],
        [DestroyDomain(3), ReleaseXenstored(3), KillVcpus(3, EP), ReleaseName("b", "t2")]]


def test_xl_handle_domain_death_ignores_domains_being_built_and_running_ones():
    ts = toolstack()
    built(ts, "up", domid=2)
    ts.begin_create("new", cfg("new"))
    assert ts.shutdowns({2: dominf_flags(DomInfoFlag.running)}) == []


def test_xl_info_c_state_string_letters():
    assert state_string(dominf_flags(DomInfoFlag.running)) == "r-----"
    assert state_string(shutdown_flags(ShutdownReason.crash)) == "--psc-"
    assert state_string(dominf_flags(DomInfoFlag.dying)) == "-----d"
    # a shutdown code xl has no letter for (a guest may give any): '?'; not shut down: '-'
    assert state_string(dominf_flags(DomInfoFlag.shutdown, 9)) == "---s?-"
    assert state_string(dominf_flags(DomInfoFlag.running, 9)) == "r-----"


# -- save, restore and migrate ---------------------------------------------------------------

def test_a_restore_builds_everything_before_its_stream_and_unpauses_only_if_asked():
    ts = toolstack()
    incoming = ts.begin_restore("d--incoming", cfg("d"), unpause=False)
    assert [s.name for s in ts.pending(incoming)] == [
        "RESERVE", "CREATEDOMAIN", "MEMORY", "STREAM_START", "CONSOLE_PORT", "XENSTORE",
        "INTRODUCE", "VCPUS", "BACKENDS", "STREAM"]
    assert incoming.resume
    restored = ts.begin_restore("e", cfg("e"), unpause=True)
    assert ts.pending(restored)[-2:] == [Step.UNPAUSE, Step.INIT]


def test_a_migrating_domains_suspend_is_no_on_star_matter_and_a_cancel_runs_it_on():
    ts = toolstack()
    rec = built(ts, on_poweroff=Action.DESTROY)
    assert ts.begin_migrate("d") is rec
    assert ts.shutdowns({5: shutdown_flags(ShutdownReason.suspend)}) == []
    with pytest.raises(XenError) as e:
        ts.begin_migrate("d")
    assert e.value.errno == Errno.EBUSY
    with pytest.raises(XenError) as e:
        ts.destroy("d")
    assert e.value.errno == Errno.EBUSY and "saved or migrated" in str(e.value)
    ts.migrate_cancelled(rec)
    assert rec.phase is Phase.RUNNING
    [group] = ts.shutdowns({5: shutdown_flags(ShutdownReason.poweroff)})
    assert effects_only(group) == [
        DestroyDomain(5), ReleaseXenstored(5), KillVcpus(5, EP), ReleaseName("d", "t1")]


def test_a_migrated_domain_is_renamed_then_destroyed_here_and_gives_its_name_back():
    ts = toolstack()
    rec = built(ts)
    ts.begin_migrate("d")
    ts.rename("d", "d--migratedaway")
    assert ts.names() == {"d--migratedaway": 5}
    with pytest.raises(XenError) as e:
        ts.rename("d--migratedaway", "d--migratedaway")
    assert e.value.errno == Errno.EEXIST
    assert effects_only(ts.migrated_away(rec)) == [DestroyDomain(5), ReleaseXenstored(5), KillVcpus(5, EP),
                                                   ReleaseName("d--migratedaway", "t1")]
    assert ts.names() == {}
